"""Every `nasbert-deploy ...` command shown in README.md's code blocks runs, shrunk to test size: the README cannot drift.

`SHRINK` maps each README command (as written, comment dropped, whitespace collapsed) to how it is run:
optional `[...]` parts included, option values replaced (`set`), options added (`add`) or dropped (`drop`),
and, for the two commands that are minutes of ONNX export or timing, the one library call behind them
replaced by a stub that checks what the command passed (`stub`); parsing, choices, the shipped defaults
(supernet, latency tables, teacher tokenizer), the search and the printing stay real. Relative paths of the
README (text.txt, task.jsonl, student/, ...) live in one working folder and the commands run in README
order; a command that reads another's output runs that one first (`needs`).
A README command without an entry, or an entry without a README command, fails the coverage test.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import SAMPLE, make_tiny_teacher
from typer.testing import CliRunner

from nasbert_deploy.cli.app import app
from nasbert_deploy.space import TINY

README = Path(__file__).resolve().parent.parent / "README.md"
README_ARCH = "128:mha,ffn,id|192:sep3,ffn,id|256:mha,ffn,ffn"
TINY_ARCH = "64:mha,ffn|32:sep3,id"
TRAIN_TINY = ("--space", "tiny", "--paragraphs", "40", "--val-size", "8", "--seq-len", "16", "--batch-size", "8", "--epochs", "2",
              "--steps-per-epoch", "3", "--bins", "2", "--per-bin", "8", "--keep", "3", "--warmup-epochs", "1", "--threads", "1")
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Shrink:
    why: str
    expect: str  # printed by the command when it worked
    set: dict[str, str] = field(default_factory=dict)  # option -> value ('{name}' from the workspace)
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    stub: str | None = None
    needs: tuple[str, ...] = ()
    slow: bool = False


QUICK_PROFILE = "nasbert-deploy profile --device cpu-ort --fast"
QUICK_SEARCH = "nasbert-deploy search --device cpu-ort --max-latency-ms 3 --max-params 10M"
QUICK_EXPORT = ("nasbert-deploy export --device cpu-ort --max-latency-ms 3 --max-params 10M --calibrate --format onnx,openvino "
                "--out out/model")
DISTILL = "nasbert-deploy distill --arch ARCH --corpus text.txt --out student/"
FT_TEACHER = "nasbert-deploy finetune-teacher --task task.jsonl --out teacher-ft/"
FINETUNE = "nasbert-deploy finetune --model student/ --task task.jsonl --teacher-model teacher-ft/ --out student-ft/"
EXPORT_TRAINED = "nasbert-deploy export --model student-ft/ --int8 --out student-ft-export/"
RETRIEVAL_FT = "nasbert-deploy finetune --model student/ --task pairs.jsonl --teacher-model default --out student-ret/"
SHRINK: dict[str, Shrink] = {
    QUICK_PROFILE: Shrink("timing stubbed (the preset takes minutes; its wall time and error are in docs/profiling.md): the "
                          "stub checks the device, the shipped supernet's space and the --fast preset and writes the shipped "
                          "table to ./profiles/local/cpu-ort.json (beside the shipped ones)", "wrote profiles/local/cpu-ort.json",
                          stub="profile-fast"),
    QUICK_SEARCH: Shrink("as written, on the table the quick start's profile wrote", "binding:", needs=(QUICK_PROFILE,)),
    QUICK_EXPORT: Shrink("shipped supernet and cpu-ort table search the arch for real; writing the files is stubbed "
                         "(minutes of ONNX/OpenVINO export; tests/test_export.py exports for real); --calibrate dropped "
                         "(it times a model; tests/test_calibrate.py calibrates for real)",
                         "searched:", stub="export", drop=("--calibrate",)),
    "nasbert-deploy space show": Shrink("as written", "search space 'standard'"),
    f"nasbert-deploy arch info '{README_ARCH}' --space minilm": Shrink("as written", "params 6.01M"),
    "nasbert-deploy devices": Shrink("as written", "cpu-ort"),
    "nasbert-deploy profile --device cpu-ort": Shrink(
        "timing stubbed (minutes; the profiler runs for real in tests/test_profile.py): the stub checks the device, space "
        "and default settings and writes the shipped table to ./profiles/local/cpu-ort.json (--force: the quick start's "
        "profile wrote it first)", "wrote profiles/local/cpu-ort.json", stub="profile", add=("--force",)),
    f"nasbert-deploy predict --device cpu-ort '{README_ARCH}' --space minilm": Shrink("as written", "total"),
    "nasbert-deploy search --device cpu-ort --max-latency-ms 5 --max-params 10M [--max-memory-mb 60] [--plot front.png]":
        Shrink("as written, optional parts included", "binding:"),
    "nasbert-deploy export --device cpu-ort --max-latency-ms 5 --max-params 10M --format onnx,openvino [--int8] --out out/model":
        Shrink("as the quick start's export, with --int8; --out beside it (the quick start's folder is taken)", "searched:",
               set={"--out": "out/model-int8"}, stub="export"),
    "nasbert-deploy supernet train --corpus text.txt --out my-supernet [--teacher PATH] [--device-table profiles/cpu-ort.json]":
        Shrink("tiny teacher, tiny space, a tiny-space latency table, a few steps", "candidates.json written",
               set={"--teacher": "{teacher}", "--device-table": "{tiny_table}"}, add=TRAIN_TINY, slow=True),
    DISTILL: Shrink("tiny random student of the tiny teacher, 4 steps", "distilled ->",
                    set={"--arch": TINY_ARCH},
                    add=("--init", "random", "--space", "tiny", "--teacher", "{teacher}", "--steps", "4", "--batch-size", "4",
                         "--seq-len", "16")),
    FT_TEACHER: Shrink("tiny teacher, 1 epoch", "fine-tuned teacher ->",
                       add=("--teacher", "{teacher}", "--epochs", "1", "--max-len", "32")),
    FINETUNE: Shrink("1 epoch", "fine-tuned ->", add=("--epochs", "1", "--max-len", "32"), needs=(DISTILL, FT_TEACHER)),
    "nasbert-deploy evaluate --model student-ft/ --task valid.jsonl --teacher-model teacher-ft/ [--runtime onnxruntime]":
        Shrink("as written (exports the tiny classifier to ONNX)", "label_loyalty", add=("--max-len", "32"),
               needs=(FINETUNE, FT_TEACHER), slow=True),
    EXPORT_TRAINED: Shrink("as written, untimed (test_export_trained times one)", "trained classifier student-ft",
                           add=("--no-timing", "--no-memory"), needs=(FINETUNE,), slow=True),
    "nasbert-deploy evaluate --model student-ft-export/ --task valid.jsonl --runtime onnxruntime-int8":
        Shrink("as written: the export's ONNX Runtime INT8 file", "onnxruntime-int8", add=("--max-len", "32"),
               needs=(EXPORT_TRAINED,), slow=True),
    RETRIEVAL_FT: Shrink("the shipped retrieval sample, 1 epoch; the tiny teacher for `default` (the offline MiniLM-L6 "
                         "tokenizes differently from the tiny student: refused, tests/test_retrieval_training.py)",
                         "fine-tuned for retrieval ->", set={"--teacher-model": "{teacher}"},
                         add=("--epochs", "1", "--max-len", "32"), needs=(DISTILL,)),
}  # fmt: skip


def readme_commands() -> list[str]:
    """Every `nasbert-deploy ...` command in the README's code blocks (also after `&&`), in README order."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            for segment in line.split("&&"):
                text = " ".join(re.sub(r"\s+#.*$", "", segment).split())
                if text.startswith("nasbert-deploy "):
                    found.append(text)
    return found


def shrunk_args(command: str, ws: dict[str, str]) -> list[str]:
    """The arguments to run for `command`: optional parts in, then `SHRINK[command]` applied."""
    rule = SHRINK[command]
    tokens = [t.removeprefix("[").removesuffix("]") for t in shlex.split(command)[1:]]
    args: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        has_value = i + 1 < len(tokens) and tok.startswith("--") and not tokens[i + 1].startswith("--")
        if tok in rule.drop:
            i += 2 if has_value else 1
            continue
        args.append(tok)
        if has_value:
            args.append(rule.set.get(tok, tokens[i + 1]))
            i += 1
        i += 1
    return [a.format(**ws) for a in args + list(rule.add)]


def _tiny_latency_table(path: Path) -> Path:
    """A synthetic latency table for the tiny space at batch 1, seq 128 (what supernet training bins at)."""
    from nasbert_deploy.profiling.table import LatencyTable, point_key, table_keys

    pk = point_key(1, 128)
    entries = {key: {pk: {"median_ms": 0.01 * (1 + i % 7)}} for i, key in enumerate(table_keys(TINY))}
    entries["overhead"] = {pk: {"median_ms": 0.0}}
    LatencyTable(TINY, {"name": "cpu-ort", "precision": "fp32"}, entries, {pk: {"planes": [{"scale": 1.0, "offset_ms": 0.0}]}}
                 ).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Any]:
    from nasbert_deploy.resources import shipped_dir
    from nasbert_deploy.student.tasks import sample_task_path

    root = tmp_path_factory.mktemp("readme")
    # the README runs in a checkout: shipped tables are there (not the user's own profiles/local from the quick start)
    shutil.copytree(shipped_dir("profiles"), root / "profiles", ignore=shutil.ignore_patterns("local"))
    shutil.copyfile(SAMPLE, root / "text.txt")
    shutil.copyfile(sample_task_path("train"), root / "task.jsonl")
    shutil.copyfile(sample_task_path("valid"), root / "valid.jsonl")
    shutil.copyfile(sample_task_path("train").with_name("debian-retrieval-sample.jsonl"), root / "pairs.jsonl")
    teacher = make_tiny_teacher(root / "tiny-teacher")
    table = _tiny_latency_table(root / "tables" / "tiny-cpu-ort.json")
    return {"root": root, "done": set(), "fill": {"teacher": str(teacher), "tiny_table": str(table)}}


def _stub_profile(monkeypatch: pytest.MonkeyPatch, fast: bool = False) -> None:
    from nasbert_deploy.profiling import profiler
    from nasbert_deploy.profiling.settings import fast_settings
    from nasbert_deploy.profiling.table import LatencyTable
    from nasbert_deploy.resources import shipped_dir

    expected = ("cpu-ort", "minilm", fast_settings()) if fast else ("cpu-ort", "standard", profiler.ProfileSettings())

    def profile_device(spec, space, out, settings, progress):
        assert (spec.name, space.name, settings) == expected
        table = LatencyTable.load(shipped_dir("profiles") / "cpu-ort.json", space)
        table.save(out)
        return table

    monkeypatch.setattr(profiler, "profile_device", profile_device)


def _stub_export(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    from nasbert_deploy.cli import export_cmd
    from nasbert_deploy.space import format_params

    def export(request, prepared):
        budget = request.budget
        assert request.spec.name == "cpu-ort" and request.options.formats == ("onnx", "openvino")
        assert request.options.int8 == ("--int8" in command) and request.init == "supernet"
        assert prepared.chosen.latency_ms <= budget.max_latency_ms and prepared.chosen.params <= budget.max_params
        assert str(prepared.model.config.arch_obj) == str(prepared.chosen.arch)
        assert prepared.weights["init"] == "supernet" and len(prepared.tokenizer) <= prepared.model.config.vocab_size
        export_cmd.console.print(f"(stub) would export {prepared.chosen.arch}, {format_params(prepared.chosen.params)}")

    monkeypatch.setattr(export_cmd, "_export", export)


def run_readme_command(command: str, ws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run one README command (its `needs` first) in the working folder; return its output."""
    rule = SHRINK[command]
    for need in rule.needs:
        if need not in ws["done"]:
            run_readme_command(need, ws, monkeypatch)
    monkeypatch.chdir(ws["root"])
    if rule.stub in ("profile", "profile-fast"):
        _stub_profile(monkeypatch, fast=rule.stub == "profile-fast")
    elif rule.stub == "export":
        _stub_export(monkeypatch, command)
    res = CliRunner().invoke(app, shrunk_args(command, ws["fill"]), env={"COLUMNS": "200"})
    assert res.exit_code == 0, f"{command}\n{res.output}"
    assert rule.expect in res.output, res.output
    ws["done"].add(command)
    return res.output


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 13, commands  # the extraction still finds the README's commands
    assert sorted(set(commands)) == sorted(SHRINK), "a README command without a SHRINK entry, or a stale entry"


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=[pytest.mark.slow] if SHRINK[c].slow else [], id=c.split(" [")[0][15:60])
                for c in dict.fromkeys(readme_commands()) if c in SHRINK],
)
def test_readme_command_runs(command, workspace, monkeypatch):
    out = run_readme_command(command, workspace, monkeypatch)
    root = workspace["root"]
    if command.startswith("nasbert-deploy profile"):
        assert (root / "profiles" / "local" / "cpu-ort.json").is_file()
    elif command.startswith("nasbert-deploy search") and "--plot" in command:
        assert (root / "front.png").read_bytes()[:4] == b"\x89PNG"
    elif command.startswith("nasbert-deploy supernet train"):
        assert (root / "my-supernet" / "candidates.json").is_file() and "my-supernet" in out
    elif command.startswith("nasbert-deploy export"):
        assert not (root / "out").exists()  # stubbed writing: the checks before it wrote nothing


def test_readme_arch_info_through_the_installed_entry_point():
    """`main()` as installed (offline switches, one-line errors) on the README's own `arch info` command."""
    command = f"nasbert-deploy arch info '{README_ARCH}' --space minilm"
    assert command in readme_commands()
    code = "import sys; from nasbert_deploy.cli.app import main; sys.argv[0] = 'nasbert-deploy'; main()"
    res = subprocess.run([sys.executable, "-c", code, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "params 6.01M" in res.stdout, res.stderr
    bad = subprocess.run([sys.executable, "-c", code, "arch", "info", README_ARCH, "--space", "large"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "'large' is not one of 'standard', 'tiny', 'minilm'" in bad.stderr
