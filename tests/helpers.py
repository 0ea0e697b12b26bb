"""Builders shared by the test modules: tiny teachers, tokenizers, supernets, the micro profiling space.

Test modules import from here (never from each other); fixtures built from these live in conftest.py.
"""

from __future__ import annotations

import collections
import json
import random
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import torch

from nasbert_deploy.profiling.profiler import ProfileSettings
from nasbert_deploy.space import TINY, SearchSpace
from nasbert_deploy.student.tasks import load_task, sample_task_path
from nasbert_deploy.supernet.network import Supernet

SAMPLE = Path(str(resources.files("nasbert_deploy") / "data" / "sample.txt"))
ROOT = Path(__file__).resolve().parent.parent
ARCH = "32:mha,ffn|64:sep3,ffn"
WORDS = "the a of to and in is it that for on with as was by this be are from or at an python module".split()
# smaller than TINY: one hidden size, one kernel -> 7 items (3 ops, 1 boundary, embedding, head, overhead)
MICRO = SearchSpace(name="micro", num_blocks=2, layers_per_block=2, hidden_sizes=(32,), conv_kernels=(3,), head_dim=16,
                    embed_dim=16, output_dim=48, vocab_size=1000, max_positions=64)
SETTINGS = ProfileSettings(warmup=1, runs=10, min_time_s=0.02, max_cv=None, retries=0, rounds=2, model_rounds=3,
                           model_min_time_s=0.02, validate=3, holdout=2, reference_min_time_s=0.01, host_check_rounds=3,
                           export_workers=1)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(size: int = 1000) -> list[str]:
    """Specials, single characters (and their ## forms), then the commonest words of the shipped sample."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}-_/*=+<>@#%&|\\`~$^"))
    vocab = SPECIALS + chars + ["##" + c for c in chars]
    words = collections.Counter()
    for text in load_task(sample_task_path("train")).texts:
        words.update(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1)
    for w, _ in words.most_common():
        if len(vocab) >= size:
            break
        if w not in vocab:
            vocab.append(w)
    return vocab[:size]


def write_word_task(path: Path, n: int, seed: int, labels: str = "xyz") -> Path:
    """A small classification task file: each row four random words of the tiny vocabulary plus the word that
    names its label (label i <-> the i-th long word), so a model can learn it in a few steps."""
    import json
    import random

    words = [w for w in tiny_vocab() if w.isalpha() and len(w) > 3]
    r = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a = r.randrange(len(labels))
            f.write(json.dumps({"text": " ".join(r.sample(words[5:40], 4) + [words[a]]), "label": labels[a]}) + "\n")
    return path


def write_pair_task(path: Path, n: int, seed: int) -> Path:
    """`n` retrieval pairs: each document six random words of the tiny vocabulary, its query two of them (learnable by
    a tiny model in a few steps)."""
    r = random.Random(seed)
    words = [w for w in tiny_vocab() if w.isalpha() and len(w) > 3][:200]
    with path.open("w") as f:
        for _ in range(n):
            doc = r.sample(words, 6)
            f.write(json.dumps({"query": " ".join(r.sample(doc, 2)), "document": " ".join(doc)}) + "\n")
    return path


def make_tiny_teacher(directory: Path, mlm: bool = False, seed: int = 0) -> Path:
    """Write a random tiny BERT (hidden 48, 2 layers, 4 heads, FFN 96, vocab 1000) and its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=TINY.max_positions,
    )
    torch.manual_seed(seed)
    model = (BertForMaskedLM if mlm else BertModel)(cfg)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def loud_tiny_teacher(directory: Path):
    """`make_tiny_teacher` loaded, its layers' matrices scaled ×10: a random BERT is nearly all embeddings, so this
    gives its layers a voice (extraction and conversion tests compare layer by layer)."""
    from nasbert_deploy.teacher import load_teacher

    t = load_teacher(make_tiny_teacher(directory))
    with torch.no_grad():
        for p in t.model.encoder.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return t


def make_sample_teacher(path: Path, layers: int = 4, seed: int = 0) -> Path:
    """A BertModel (hidden 48, `layers` layers, vocab 1000) with a word-level vocab from the sample text."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = collections.Counter(re.findall(r"[a-z]+", SAMPLE.read_text().lower()))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [w for w, _ in words.most_common(1000 - len(specials))]
    vocab += [f"[unused{i}]" for i in range(1000 - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=1000,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(str(path))
    return path


def make_tokenizer_dir(root):
    """A BertTokenizerFast over a 60-token vocabulary, saved as a tokenizer folder."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(30)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(root / "vocab.txt"))
    out = root / "tok"
    tok.save_pretrained(str(out))
    return out


def tiny_table(path: Path, space: SearchSpace = TINY) -> Path:
    """A real `LatencyTable` file for a small `space` with made-up entries (ms grow with width and op kind)."""
    from nasbert_deploy.profiling.table import LatencyTable, point_key, table_keys

    pts = [point_key(1, 32), point_key(1, 64)]
    cost = {"mha": 0.3, "ffn": 0.2, "sep3": 0.1, "sep5": 0.12}
    wide = f"h{max(space.hidden_sizes)}"
    entries = {}
    for k in table_keys(space):
        base = next((v for op, v in cost.items() if op in k), 0.05) * (2.0 if wide in k else 1.0)
        entries[k] = {pk: {"median_ms": base * (1 + j)} for j, pk in enumerate(pts)}
    entries["overhead"] = {pk: {"median_ms": 0.001} for pk in pts}
    corr = {pk: {"planes": [{"scale": 1.0, "offset_ms": 0.0}]} for pk in pts}
    table = LatencyTable(space, {"name": "cpu-ort", "precision": "fp32"}, entries, corr, manifest={"cpu_model": "test"})
    table.save(path)
    return path


def make_supernet_dir(root):
    torch.manual_seed(0)
    net = Supernet(TINY).eval()
    return net.save(root / "supernet", {"note": "random test supernet"}), net


def one_line_error(result, *needles: str) -> None:
    """A CLI result that is a user error: exit code 2 and one line `error: ...` holding every needle."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for n in needles:
        assert n in result.output, result.output


def tasksearch_setup(root: Path) -> dict:
    """A tiny task search's inputs in `root`: the tiny encoder, a teacher fine-tuned from it on the shipped sample task
    (one epoch), a random TINY supernet and a tiny cpu-ort table."""
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.tasks import task_splits

    encoder = make_tiny_teacher(root / "encoder")
    train, valid = task_splits("pydoc-sample")
    finetune_teacher(encoder, train, valid, root / "teacher", FinetuneConfig(epochs=1, max_len=32))
    supernet, net = make_supernet_dir(root)
    return {"root": root, "encoder": encoder, "teacher": root / "teacher", "supernet": supernet, "net": net,
            "table": tiny_table(root / "t.json")}


def run_benchmark(script: str, *args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT ARGS...` from the repository root, output captured (benchmarks are scripts, not modules)."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
