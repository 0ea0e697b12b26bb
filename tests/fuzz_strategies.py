"""Hypothesis strategies for fuzzing the command line (used by tests/test_cli_fuzz.py).

A generated `Case` is an argument list, the input files it names (written into a fresh folder before the
run: valid, truncated, binary, empty, unicode, wrong schema, huge values, a folder, missing) and the outputs
it may create. Commands that would start real work (profiling, training, exporting) always carry at least
one *poison*: an input or output that is invalid whatever else was drawn and is checked before any work, so
every case ends at validation (or, for the light commands, runs for real in milliseconds).
"""

from __future__ import annotations

from fuzz_core import (
    CANDIDATES,
    CLASSIFIER,
    CORPUS,
    DEVICE,
    ENCODER,
    LAYER_MAP,
    META,
    MINILM_ARCH,
    RESULTS,
    RETRIEVAL,
    STANDARD_ARCH,
    STATE,
    TABLE,
    TASK,
    TASK_CSV,
    TEXT,
    TINY_ARCH,
    Arg,
    archs,
    bad_bytes,
    bad_out,
    choice,
    contents,
    dumps,
    flag,
    floats,
    in_file,
    ints,
    model_dir,
    mostly,
    out_path,
    space_arch,
)
from hypothesis import strategies as st

# ---------------------------------------------------------------------------- the commands
SPACES = ("standard", "tiny", "minilm")
DEVICES = ("cpu-ort", "cpu-torch", "cpu-openvino-int8", "cpu-ort-int8")


def table(name: str = "t.json") -> st.SearchStrategy[Arg]:
    return in_file(name, contents(dumps(TABLE), TABLE))


def candidates() -> st.SearchStrategy[Arg]:
    return in_file("c.json", contents(dumps(CANDIDATES), CANDIDATES))


def device() -> st.SearchStrategy[Arg]:
    """A shipped device name 3 times in 4 (mostly valid), else a spec file (mostly corrupt)."""
    return st.integers(0, 3).flatmap(lambda i: choice(DEVICES) if i else in_file("d.toml", contents(DEVICE)))


def corpus(name: str = "text.txt") -> st.SearchStrategy[Arg]:
    return in_file(name, contents(CORPUS))


def task(name: str = "task.jsonl") -> st.SearchStrategy[Arg]:
    return st.one_of(st.just(Arg(["pydoc-sample"])), in_file(name, contents(TASK)), in_file("task.csv", contents(TASK_CSV)),
                     in_file("r.jsonl", st.just(RETRIEVAL)), in_file("task.txt", st.just(TASK)))


def supernet_dir() -> st.SearchStrategy[Arg]:
    meta = contents(dumps(META), META).map(lambda b: {"sn/supernet.json": b, "sn/supernet.safetensors": b"junk"})
    cands = contents(dumps(CANDIDATES), CANDIDATES).map(lambda b: {"sn/supernet.json": dumps(META),
                                                                    "sn/supernet.safetensors": b"junk", "sn/candidates.json": b})
    ckpt = contents(dumps(STATE), STATE).map(lambda b: {"sn/checkpoint/block0/state.json": b})
    return st.one_of(st.just({}), st.just({"sn": b"x"}), meta, cands, ckpt).map(lambda f: Arg(["sn"], f))


def bad_file(name: str) -> st.SearchStrategy[Arg]:
    return in_file(name, bad_bytes())


BAD_MODEL = st.one_of(  # model folders refused before any loading: missing, a file, empty, config.json unreadable
    st.just(Arg(["bad"])), st.just(Arg(["bad"], {"bad": b"x"})), st.just(Arg(["bad"], {"bad": None})),
    bad_bytes().map(lambda b: Arg(["bad"], {"bad/config.json": b})))


def _positive(arg: Arg | None) -> bool:
    """Whether click would read `arg` as an integer > 0 (it strips blanks and reads any Unicode digits)."""
    try:
        return arg is not None and int(arg.tokens[0]) > 0
    except ValueError:
        return False


SEQ = mostly(st.sampled_from(["32", "64", "16", "128"]), st.integers(10**6, 10**30).map(str), TEXT)  # tiny: <= 64
SUPERNET_TRAIN = dict(
    prefix=["supernet", "train"],
    options={"--corpus": corpus(), "--out": out_path("dir"), "--teacher": model_dir("teacher", [ENCODER]),
             "--space": choice(("tiny", "minilm")), "--device-table": table(), "--paragraphs": ints(2, 60),
             "--val-size": ints(1, 20), "--seq-len": ints(2, 64), "--epochs": ints(0, 5), "--steps-per-epoch": ints(0, 5),
             "--batch-size": ints(1, 16), "--bins": ints(1, 4), "--per-bin": ints(2, 10), "--keep": ints(1, 5),
             "--warmup-epochs": ints(0, 3), "--blocks": choice(("0", "1", "0,1", "0,5", "x", "")), "--threads": ints(0, 2),
             "--fp16": flag(), "--device": choice(("cpu", "auto")), "--cache-dir": out_path("dir", "cache"),
             "--seed": ints(0, 3), "--checkpoint-every": ints(1, 5)},
    required=("--corpus", "--out"),
    poisons={"--corpus": bad_file("text.txt"), "--out": bad_out("dir"), "--resume": flag(),
             "--device-table": bad_file("t.json"), "--blocks": st.just(Arg(["7,x"])), "--val-size": st.just(Arg(["100000"]))},
)
COMMANDS: dict[str, tuple[dict, int]] = {  # name -> (arguments of `command`, cases)
    "space show": (dict(prefix=["space", "show"], options={"--space": choice(SPACES)}), 40),
    "arch info": (dict(prefix=["arch", "info"], options={"--seq-len": ints(1, 512)}, positional=st.one_of(
        space_arch(("standard", "tiny", "minilm")), st.lists(archs(TINY_ARCH, MINILM_ARCH, STANDARD_ARCH), max_size=2))),
        240),
    "devices": (dict(prefix=["devices"], positional=st.lists(st.one_of(device(), in_file("e.toml", contents(DEVICE))),
                                                             max_size=2), options={}), 80),
    "profile": (dict(
        prefix=["profile"],
        options={"--device": device(), "--space": choice(SPACES), "--out": out_path("file"), "--validate": ints(0, 5),
                 "--holdout": ints(0, 3), "--bundle": out_path("dir", "bundle"), "--import": in_file("r.json", contents(
                     dumps(RESULTS), RESULTS, allow_valid=False)), "--refit": table(), "--runs": ints(1, 5),
                 "--warmup": ints(0, 3), "--min-time": floats(0.0, 1.0), "--rounds": ints(1, 3), "--max-cv": floats(0.0, 1.0),
                 "--force": flag(), "--fast": flag()},
        poisons={"--device": bad_file("d.toml"), "--import": bad_file("r.json")},
        needs_poison=lambda c: "--import" not in c and "--refit" not in c,
        extra_outputs=["profiles", "t.json"]), 220),
    "predict": (dict(prefix=["predict"], options={"--device": device(), "--table": table(), "--seq-len": SEQ,
                                                   "--batch": ints(1, 2)}, positional=space_arch(), required=("--table",)),
                220),
    "search": (dict(
        prefix=["search"],
        options={"--max-latency-ms": floats(0.01, 50.0), "--device": device(), "--max-memory-mb": floats(0.1, 100.0),
                 "--max-params": choice(("10M", "500K", "1", "inf", "-3")), "--seq-len": SEQ, "--batch": ints(1, 2),
                 "--top": ints(1, 5), "--json": flag(), "--plot": out_path("file", "plot"), "--candidates": candidates(),
                 "--table": table(), "--precision": choice(("fp32", "int8")), "--force": flag(), "--rerank": ints(0, 2),
                 "--supernet": supernet_dir(), "--heldout": corpus("held.txt")},
        required=("--candidates", "--max-latency-ms", "--table", "--seq-len"), poisons={"--heldout": bad_file("held.txt")},
        needs_poison=lambda c: _positive(c.get("--rerank"))), 220),
    "export": (dict(
        prefix=["export"],
        options={"--out": out_path("dir", "model"), "--arch": archs(TINY_ARCH, MINILM_ARCH), "--device": device(),
                 "--format": choice(("onnx",
                 "onnx,openvino", "tflite")), "--int8": flag(), "--fp16": flag(), "--supernet": supernet_dir(),
                 "--init": choice(("supernet", "random")), "--space": choice(SPACES), "--calibration": corpus("cal.txt"),
                 "--batch": ints(1, 4), "--seq-len": ints(2, 128), "--force": flag(), "--tokenizer": model_dir("tok", [ENCODER])},
        required=("--out", "--arch"),
        poisons={"--out": bad_out("dir"), "--calibration": bad_file("cal.txt"), "--format": st.just(Arg(["onnx,tflite"]))}),
        180),
    "supernet train": (SUPERNET_TRAIN, 180),
    "supernet info": (dict(prefix=["supernet", "info"], options={"--supernet": supernet_dir()}), 110),
    "distill": (dict(
        prefix=["distill"],
        options={"--out": out_path("dir", "student"), "--corpus": corpus(), "--arch": archs(TINY_ARCH, MINILM_ARCH),
                 "--from-export": model_dir("exp", [ENCODER, {**ENCODER, "model_type": "nasbert"}]),
                 "--teacher": BAD_MODEL, "--supernet": supernet_dir(), "--init": choice(("supernet", "random")),
                 "--space": choice(SPACES), "--valid-corpus": corpus("valid.txt"), "--steps": ints(1, 10),
                 "--seq-len": ints(2, 64), "--lr": floats(1e-5, 1e-2), "--temperature": floats(0.1, 5.0),
                 "--threads": ints(0, 2), "--force": flag(), "--layer-map": st.one_of(choice(("1,2", "0,2", "3,5,6", "2,0")),
                 in_file("lm.json", contents(dumps(LAYER_MAP), LAYER_MAP)))},
        required=("--out", "--corpus"),
        poisons={"--out": bad_out("dir"), "--corpus": bad_file("text.txt"), "--valid-corpus": bad_file("valid.txt"),
                 "--teacher": BAD_MODEL, "--arch": st.sampled_from(["foo", "999:mha", "|"]).map(lambda t: Arg([t]))}), 180),
    "layer-map": (dict(  # every case carries a poison checked before the teacher loads: a search never starts
        prefix=["layer-map"],
        options={"--student": archs(TINY_ARCH, MINILM_ARCH), "--corpus": corpus(), "--out": out_path("file", "map"),
                 "--tasks": task("t.jsonl"), "--teacher": model_dir("teacher", [ENCODER, {**ENCODER, "num_hidden_layers": "x"}]),
                 "--init": choice(("supernet", "random", "etd-impt")), "--space": choice(SPACES), "--supernet": supernet_dir(),
                 "--population": ints(2, 8), "--generations": ints(0, 5), "--elite": ints(0, 3),
                 "--crossover": choice(("uniform", "one-point", "two-point")), "--mutation-rate": floats(0.0, 1.0),
                 "--steps": ints(1, 5), "--corpus-limit": ints(1, 50), "--task-limit": ints(4, 50), "--force": flag()},
        required=("--student", "--corpus", "--out"),
        poisons={"--out": bad_out("file"), "--corpus": bad_file("text.txt"), "--teacher": BAD_MODEL,
                 "--student": st.sampled_from(["foo", "999:mha", "|"]).map(lambda t: Arg([t]))}), 80),
    "finetune": (dict(
        prefix=["finetune"],
        options={"--model": model_dir("m", [ENCODER, CLASSIFIER]), "--out": out_path("dir"), "--task": task(),
                 "--valid": task("valid.jsonl"), "--valid-fraction": floats(0.05, 0.5),
                 "--teacher-model": model_dir("tm", [ENCODER, CLASSIFIER]), "--lambda": floats(0.0, 1.0),
                 "--epochs": ints(1, 3), "--max-len": ints(2, 128), "--force": flag(), "--transfer": corpus("transfer.txt"),
                 "--transfer-rows": ints(0, 5)},
        required=("--model", "--out"), poisons={"--transfer": bad_file("transfer.txt")}), 150),
    "finetune-teacher": (dict(
        prefix=["finetune-teacher"],
        options={"--out": out_path("dir"), "--teacher": model_dir("teacher", [ENCODER, CLASSIFIER]), "--task": task(),
                 "--valid": task("valid.jsonl"), "--valid-fraction": floats(0.05, 0.5), "--epochs": ints(1, 3),
                 "--threads": ints(0, 2)},
        required=("--out",),
        poisons={"--out": bad_out("dir"), "--task": bad_file("task.jsonl"), "--teacher": BAD_MODEL}), 150),
    "evaluate": (dict(
        prefix=["evaluate"],
        options={"--model": model_dir("m", [ENCODER, CLASSIFIER]), "--task": task(), "--teacher-model": model_dir(
                 "tm", [CLASSIFIER]), "--runtime": choice(("torch", "onnxruntime")), "--batch-size": ints(1, 64),
                 "--json": out_path("file", "report"), "--force": flag(), "--train": task("train.jsonl")},
        required=("--model",)), 140),
    "search-task": (dict(  # the teacher folders hold no tokenizer: every case ends at validation
        prefix=["search-task"],
        options={"--task": task(), "--teacher-model": model_dir("tm", [ENCODER, CLASSIFIER]), "--out": out_path("dir"),
                 "--max-latency-ms": floats(0.01, 50.0), "--device": device(), "--valid": task("valid.jsonl"),
                 "--max-params": choice(("10M", "500K", "1", "-3")), "--controller": choice(("reinforce", "evolution")),
                 "--evaluations": ints(1, 5), "--proxy-rows": ints(8, 64), "--table": table(), "--supernet": supernet_dir(),
                 "--seq-len": ints(2, 128), "--search-only": flag(), "--force": flag(),
                 "--init": choice(("supernet", "etd-impt", "etd-rand")), "--space": choice(SPACES),
                 "--encoder": model_dir("enc", [ENCODER]), "--corpus": corpus("corpus.txt"),
                 "--distill-steps": ints(1, 3), "--rerank-distilled": flag(), "--transfer": corpus("transfer.txt"),
                 "--transfer-rows": ints(0, 5), "--kd": choice(("auto", "kl", "mse", "js")),
                 "--rerank-arch": choice(("128:mha,ffn,id|128:mha,id,id|128:ffn,id,id", "999:mha", "x")),
                 "--rerank-top": ints(0, 3), "--final-lr": floats(1e-5, 1e-3), "--distilled-dir": out_path("dir", "enc")},
        required=("--task", "--teacher-model", "--max-latency-ms", "--out"),
        poisons={"--out": bad_out("dir"), "--teacher-model": BAD_MODEL, "--corpus": bad_file("corpus.txt"),
                 "--transfer": bad_file("transfer.txt")}), 60),
    "prune": (dict(  # the model folders hold no weights: every case ends at validation or loading
        prefix=["prune"],
        options={"--model": model_dir("m", [ENCODER, CLASSIFIER]), "--task": task(), "--device": device(),
                 "--max-latency-ms": floats(0.01, 50.0), "--out": out_path("dir"), "--valid": task("valid.jsonl"),
                 "--teacher-model": model_dir("tm", [CLASSIFIER]), "--table": out_path("file", "table"),
                 "--steps": ints(1, 5), "--seq-len": ints(2, 128), "--finetune-epochs": ints(0, 2), "--force": flag()},
        required=("--model", "--task", "--device", "--max-latency-ms", "--out"),
        poisons={"--out": bad_out("dir"), "--model": BAD_MODEL}), 60),
    "quantize": (dict(  # the model folders hold no weights: every case ends at validation or loading
        prefix=["quantize"],
        options={"--model": model_dir("m", [ENCODER, CLASSIFIER]), "--out": out_path("dir"), "--task": task(),
                 "--valid": task("valid.jsonl"), "--bits": choice(("8", "4", "2", "3")),
                 "--format": choice(("onnx", "onnx,openvino", "openvino", "none", "tflite")),
                 "--teacher-model": model_dir("tm", [ENCODER, CLASSIFIER]), "--steps": ints(1, 3), "--max-len": ints(2, 32),
                 "--ce-weight": floats(0.0, 2.0), "--reduce-range": choice(("auto", "on", "off", "maybe")), "--force": flag(),
                 "--transfer": corpus("transfer.txt"), "--transfer-rows": ints(0, 5)},
        required=("--model", "--out"),
        poisons={"--out": bad_out("dir"), "--model": BAD_MODEL, "--transfer": bad_file("transfer.txt")}), 60),
    "truncate": (dict(  # the teacher folders hold no weights: a case with --teacher ends at loading
        prefix=["truncate"],
        options={"--layers": ints(0, 8), "--out": out_path("dir"), "--force": flag(),
                 "--teacher": model_dir("teacher", [ENCODER, {**ENCODER, "num_hidden_layers": "x"}])},
        required=("--layers", "--out"),
        poisons={"--out": bad_out("dir"), "--teacher": BAD_MODEL}), 40),
}  # fmt: skip
