"""The machinery of the command-line fuzzer: cases, corrupted input files, argument strategies (see fuzz_strategies.py).

A generated `Case` is an argument list, the input files it names (written into a fresh folder before the
run: valid, truncated, binary, empty, unicode, wrong schema, huge values, a folder, missing) and the outputs
it may create. Commands that would start real work (profiling, training, exporting) always carry at least
one *poison*: an input or output that is invalid whatever else was drawn and is checked before any work, so
every case ends at validation (or, for the light commands, runs for real in milliseconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from search_helpers import random_table

from nasbert_deploy.space import TINY

UNWRITABLE = "/proc/nasbert-fuzz/out"  # takes no new files, not even from root
TINY_ARCH = "64:mha,ffn|32:sep3,id"
MINILM_ARCH = "128:mha,ffn,id|192:sep3,ffn,id|256:mha,ffn,ffn"
STANDARD_ARCH = "128:mha,ffn,id,id,id,id|192:sep3,ffn,id,id,id,id|256:mha,ffn,ffn,id,id,id|512:ffn,sep7,id,id,id,id"
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
WEIRD = [None, True, -1, 0, 10**400, 1e308, float("nan"), float("inf"), "", "x" * 5000, [], {}, "ü\u2028\u202e", -(10**30)]


@dataclass
class Arg:
    """Tokens for the command line, the files they name (path -> bytes; None = a folder), outputs they may create."""

    tokens: list[str]
    files: dict[str, bytes | None] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


@dataclass
class Case:
    args: list[str]
    files: dict[str, bytes | None]
    outputs: list[str]
    poisoned: bool  # must exit 2


# ---------------------------------------------------------------------------- valid payloads
def _tiny_table() -> dict[str, Any]:
    from nasbert_deploy.profiling.table import LatencyTable, point_key, table_keys

    pts = [point_key(1, 32), point_key(1, 128)]
    entries = {k: {pk: {"median_ms": 0.01 * (1 + i % 7) * (1 + j)} for j, pk in enumerate(pts)}
               for i, k in enumerate(table_keys(TINY))}
    entries["overhead"] = {pk: {"median_ms": 0.001} for pk in pts}
    corr = {pk: {"planes": [{"scale": 1.0, "offset_ms": 0.0}]} for pk in pts}
    return LatencyTable(TINY, {"name": "fuzzdev", "precision": "fp32"}, entries, corr).to_dict()


TABLE = _tiny_table()
CANDIDATES = random_table(TINY, 6, 5).to_dict()
DEVICE = (b'name = "fuzzdev"\nruntime = "onnxruntime"\ntarget = "cpu"\nprecision = "fp32"\nthreads = 1\n'
          b"batch_sizes = [1]\nseq_lens = [32, 128]\n")
CORPUS = "\n".join(f"the module {i} provides functions for objects and classes" for i in range(60)).encode()
TASK = "".join(json.dumps({"text": f"row {i} text", "label": "ab"[i % 2]}) + "\n" for i in range(40)).encode()
TASK_CSV = ("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(40))).encode()
RETRIEVAL = b'{"query": "q", "document": "d"}\n{"query": "r", "document": "e"}\n'
RESULTS = {"kind": "nasbert-profile-results", "wall_s": 1.0, "results": {},
           "bundle": {"format": 1, "space": TINY.to_dict(), "space_hash": TINY.space_hash(), "points": [[1, 32]],
                      "items": [{"kind": "model", "arch": TINY_ARCH}], "device": {"name": "fuzzdev"}, "settings": {}}}
META = {"space": TINY.to_dict(), "metadata": {"steps": 3, "teacher": "fuzz"}}
ENCODER = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 1000}
CLASSIFIER = {**ENCODER, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"},
              "label2id": {"a": 0, "b": 1}}
STATE = {"step": 3, "shrinks": 1, "done": False, "survivors": [[TINY_ARCH.split("|")[0]]]}
LAYER_MAP = {"kind": "nasbert-layer-map", "layer_map": [1, 2], "fitness": 0.5}
OTHER_KINDS = [DEVICE, CORPUS, TASK, RETRIEVAL, json.dumps(TABLE).encode(), json.dumps(CANDIDATES).encode()]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


# ---------------------------------------------------------------------------- corrupting files
@st.composite
def mutated_json(draw: Any, obj: Any) -> bytes:
    """`obj` with one leaf replaced by a weird value, or one key dropped, or wrapped in a list (wrong schema)."""
    paths: list[tuple[Any, ...]] = []

    def walk(o: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(o, dict) and len(paths) < 400:
            for k, v in list(o.items())[:20]:
                walk(v, (*path, k))
        elif isinstance(o, list) and len(paths) < 400:
            for i, v in enumerate(o[:5]):
                walk(v, (*path, i))

    walk(obj, ())
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "drop", "wrap"]))
    copy = json.loads(json.dumps(obj))
    if not path:
        return dumps([copy] if op == "wrap" else draw(st.sampled_from(WEIRD)))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if op == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == "wrap":
        parent[path[-1]] = [parent[path[-1]]]
    else:
        parent[path[-1]] = draw(st.sampled_from(WEIRD))
    return dumps(copy)


BINARY = st.binary(min_size=0, max_size=200).map(lambda b: b"\xff\xfe" + b)  # never UTF-8
UNICODE = TEXT.map(lambda t: t.encode("utf-8"))


def bad_bytes() -> st.SearchStrategy[bytes | None]:
    """Contents no loader accepts: empty, binary, a folder (None)."""
    return st.one_of(st.just(b""), BINARY, st.just(None))


@st.composite
def contents(draw: Any, valid: bytes, obj: Any = None, allow_valid: bool = True) -> bytes | None:
    """A file's contents: the valid ones about a third of the time (when `allow_valid`), else truncated, binary,
    unicode text, another kind's file, a folder (None), and for JSON a wrong schema or huge values."""
    if allow_valid and draw(st.sampled_from([True, False, False])):
        return valid
    options = [bad_bytes(), st.integers(0, max(0, len(valid) - 1)).map(lambda k: valid[:k]), UNICODE,
               st.sampled_from(OTHER_KINDS)]
    if obj is not None:
        options.append(mutated_json(obj))
    return draw(st.one_of(*options))


def in_file(name: str, data: st.SearchStrategy[bytes | None], missing: bool = True) -> st.SearchStrategy[Arg]:
    """A path to a file named `name` holding `data` (or, one time in eight, nothing there)."""
    made = data.map(lambda b: Arg([name], {name: b}))
    if not missing:
        return made
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda there: made if there else st.just(Arg([name])))


def model_dir(name: str, configs: Sequence[Any]) -> st.SearchStrategy[Arg]:
    """A model folder: missing, a file, empty, or config.json valid-looking (no weights), corrupt or of a wrong schema."""
    cfg = st.one_of(*(contents(dumps(c), c) for c in configs))
    return st.one_of(
        st.just(Arg([name])), st.just(Arg([name], {name: b"x"})), st.just(Arg([name], {name: None})),
        cfg.map(lambda b: Arg([name], {f"{name}/config.json": b})),
    )


def out_path(kind: str, name: str = "out") -> st.SearchStrategy[Arg]:
    """An output: new, nested new, an existing file, an empty or non-empty folder, unwritable, under a file."""
    new = name + (".json" if kind == "file" else "")
    return st.sampled_from([
        Arg([new], outputs=[new]), Arg([f"a/b/{new}"], outputs=["a"]),
        Arg(["afile"], {"afile": b"x"}, ["afile"]), Arg(["edir"], {"edir": None}, ["edir"]),
        Arg(["full"], {"full/keep.txt": b"k"}, ["full"]), Arg([UNWRITABLE]), Arg(["afile/sub"], {"afile": b"x"}),
    ])


def bad_out(kind: str) -> st.SearchStrategy[Arg]:
    """Outputs refused whatever `--force` says: the wrong kind, unwritable, under a file."""
    wrong = Arg(["adir"], {"adir": None}) if kind == "file" else Arg(["afile"], {"afile": b"x"})
    return st.sampled_from([wrong, Arg([UNWRITABLE]), Arg(["afile/sub"], {"afile": b"x"})])


@st.composite
def mostly(draw: Any, valid: st.SearchStrategy[str], *invalid: st.SearchStrategy[str]) -> Arg:
    """A valid value 19 times in 20 (`one_of` would not weight repeated branches): most cases get past option
    parsing and reach the loaders and checks of the library."""
    if not invalid or draw(st.sampled_from([True] * 19 + [False])):  # (hypothesis favours 0: a plain integer would not do)
        return Arg([draw(valid)])
    return Arg([draw(st.one_of(*invalid))])


def ints(lo: int = 1, hi: int = 8) -> st.SearchStrategy[Arg]:
    """Integers in lo..hi mostly; also huge, negative, and not integers at all."""
    words = st.sampled_from(["-1", "1e3", "abc", "", "0x10", "٣", " 7"])
    return mostly(st.integers(lo, hi).map(str), st.integers(10**6, 10**30).map(str), words, TEXT)


def floats(lo: float = 0.01, hi: float = 100.0) -> st.SearchStrategy[Arg]:
    words = st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "-5", "abc", ""])
    return mostly(st.floats(lo, hi).map(repr), words, TEXT)


def choice(valid: Sequence[str]) -> st.SearchStrategy[Arg]:
    return mostly(st.sampled_from(list(valid)), TEXT)


def archs(*valid: str) -> st.SearchStrategy[Arg]:
    """Arch strings: valid ones, ones broken in one place, and arbitrary text."""
    pieces = st.lists(st.sampled_from(["32", "64", "128", "999", "x", ":", ",", "|", "mha", "ffn", "sep3", "id", "sep9",
                                       " ", "ü", "-1"]), min_size=1, max_size=12).map("".join)
    return mostly(st.sampled_from(valid), pieces, TEXT, st.sampled_from(["foo", "999:mha", "|", ""]))


def space_arch(spaces: Sequence[str] = ("tiny", "minilm", "standard")) -> st.SearchStrategy[list[Arg]]:
    """A positional arch with the `--space` it belongs to (mostly; the first space most often), so most cases get
    past parsing."""
    by_space = {"tiny": TINY_ARCH, "minilm": MINILM_ARCH, "standard": STANDARD_ARCH}
    matched = st.sampled_from([True] * 4 + [False])
    return st.tuples(st.sampled_from(list(spaces)), archs(*by_space.values()), matched).map(
        lambda t: [Arg([by_space[t[0]] if t[2] else t[1].tokens[0], "--space", t[0]])])


def flag() -> st.SearchStrategy[Arg]:
    return st.just(Arg([]))


# ---------------------------------------------------------------------------- commands
Options = dict[str, st.SearchStrategy[Arg]]


@st.composite
def command(
    draw: Any, prefix: Sequence[str], options: Options, required: Sequence[str] = (),
    poisons: Options | None = None, positional: st.SearchStrategy[list[Arg]] | None = None,
    extra_outputs: Sequence[str] = (), needs_poison: Callable[[dict[str, Arg]], bool] | None = None,
) -> Case:
    """One invocation: the `required` options, a random subset of the others, positional arguments, and (when
    `needs_poison` says the drawn options could reach real work) one poison that overrides its option."""
    chosen: dict[str, Arg] = {}
    for name, strategy in options.items():
        if name in required or draw(st.sampled_from([False, False, False, True])):  # about a quarter of the others
            chosen[name] = draw(strategy)
    poisoned = False
    if poisons and (needs_poison is None or needs_poison(chosen)):
        name = draw(st.sampled_from(sorted(poisons)))
        chosen[name] = draw(poisons[name])
        poisoned = True
    args, files, outputs = list(prefix), {}, list(extra_outputs)
    for pos in draw(positional) if positional is not None else []:
        args += pos.tokens
        files.update(pos.files)
        outputs += pos.outputs
    for name, arg in chosen.items():
        args += [name, *arg.tokens]
        files.update(arg.files)
        outputs += arg.outputs
    noise = draw(st.sampled_from([None] * 30 + ["--bogus", "--help", "-x", "--"]))
    if noise is not None and not poisoned:
        args.insert(draw(st.integers(len(prefix), len(args))), noise)
    return Case(args, files, outputs, poisoned)
