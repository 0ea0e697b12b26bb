"""The export folder's model card (`README.md`): what the model is, how fast, from what, and how to load it.

`model_card(report)` renders it from the export report (`report.build_report`); `write_model_card`
writes it. The quality section starts empty between two markers; `append_quality(folder, results)`
adds one entry per evaluation (e.g. the dict `student.quality.encoder_quality` returns), atomically;
`nasbert-deploy evaluate --model FOLDER` does so through `record_evaluation`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasbert_deploy.errors import ExportError
from nasbert_deploy.space import format_params

CARD = "README.md"
QUALITY_START = "<!-- nasbert-deploy:quality:start -->"
QUALITY_END = "<!-- nasbert-deploy:quality:end -->"
NO_QUALITY = ("_Not evaluated yet._ `nasbert-deploy evaluate --model THIS_FOLDER --task valid.jsonl` (an encoder: with "
              "`--train train.jsonl` for a linear probe, or a retrieval file) adds its scores here.")
PLACEHOLDERS = (NO_QUALITY, "_Not evaluated yet._ `nasbert-deploy evaluate --model THIS_FOLDER --task valid.jsonl --train "
                "train.jsonl` (or a retrieval file) adds its scores here.")  # this one, and the cards of earlier versions
SHIPPED_TEXT = (
    "24,128 paragraphs of a mixed English corpus (docs/supernet.md): Debian 12 package long descriptions (each under "
    "its source package's free licence), WordNet 3.0 definitions (Princeton WordNet licence), the Python 3.11 "
    "documentation's prose (PSF documentation licence) and man pages (GPL-2+, BSD, Linux man-pages copyleft, "
    "Artistic)"
)


def _ms(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _arch_rows(report: Mapping[str, Any]) -> list[str]:
    rows = ["| block | hidden | layers |", "|---|---|---|"]
    for i, block in enumerate(report["arch"].split("|"), 1):
        hidden, ops = block.split(":", 1)
        rows.append(f"| {i} | {hidden} | {', '.join(o for o in ops.split(',') if o != 'id')} |")
    return rows


LICENCES = ("- licences: the model code (`*.py` here, nasbert-deploy) is Apache-2.0; the default teacher "
            "sentence-transformers/all-MiniLM-L6-v2 is Apache-2.0; the training text's licence is above. Check all of "
            "them before redistributing the weights.")


def _trained_provenance(weights: Mapping[str, Any]) -> list[str]:
    """`export --model DIR`: what the folder's training reports say (`trained.training_summary`)."""
    lines = [f"- weights: the trained {weights.get('kind')} `{weights.get('model')}`"]
    if weights.get("converted_from") == "bert":
        lines.append("- converted exactly from that BERT encoder (`model.etd.convert_teacher`: same outputs, up to "
                     "LayerNorm epsilon), so it exports and is measured as a NAS-BERT model")
    training = weights.get("training") or {}
    d, f = training.get("distill_report.json"), training.get("finetune_report.json")
    if d:
        corpus = (d.get("config") or {}).get("corpus") or d.get("corpus")
        lines.append(f"- distilled (`distill`, {d.get('init', '?')} start) from the teacher `{d.get('teacher', '?')}`, "
                     f"{d.get('steps', '?')} steps" + (f", on `{corpus}`" if corpus else ""))
    if f:
        kd = f" with task distillation from `{f['teacher_model']}`" if f.get("teacher_model") else ""
        lines.append(f"- fine-tuned on `{f.get('task', '?')}` ({f.get('train_rows', '?')} rows, "
                     f"{f.get('transfer_rows') or 0} transfer rows){kd}")
    if not (d or f):
        lines.append("- training: not recorded (no distill_report.json or finetune_report.json in the folder)")
    if weights.get("labels"):
        lines.append(f"- labels (logit order): {', '.join(map(str, weights['labels']))}")
    return [*lines, "- training text and teacher: see the training reports named above for their provenance", LICENCES]


def _provenance(weights: Mapping[str, Any]) -> list[str]:
    if weights.get("init") == "random":
        return ["**The weights are RANDOM** (`--init random`): this export is for latency studies only."]
    if weights.get("init") == "trained":
        return _trained_provenance(weights)
    meta = weights.get("supernet_metadata") or {}
    teacher = meta.get("teacher", "not recorded in the supernet's metadata")
    corpus = meta.get("corpus")
    shipped = bool(weights.get("shipped_supernet"))
    text = SHIPPED_TEXT if shipped else (f"`{corpus}` (recorded in the supernet's metadata)" if corpus else "not recorded")
    lines = [
        f"- weights: inherited from the supernet `{weights.get('supernet')}`" + (" (the one shipped with nasbert-deploy)"
                                                                              if shipped else ""),
        f"- teacher (the supernet was distilled block-wise from it): {teacher}",
        f"- training text: {text}",
    ]
    for key in ("paragraphs", "steps", "seq_len"):
        if key in meta:
            lines.append(f"- {key.replace('_', ' ')}: {meta[key]}")
    return [*lines, LICENCES]


def _latency_rows(report: Mapping[str, Any]) -> list[str]:
    machine = report.get("machine", {})
    rows = [
        f"Measured on {machine.get('cpu_model', 'an unrecorded CPU')} ({machine.get('logical_cpus', '?')} logical CPUs, "
        f"{machine.get('os', '')}); threads 0 = the runtime's default (all cores). Predicted = the device's latency table.",
        "",
        "| device | runtime | precision | threads | batch x seq | predicted ms | measured median ms | p90 ms "
        "| measured / predicted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for lat in report.get("latencies") or [report["latency"]]:
        m = lat.get("measured") or {}
        ratio = lat.get("measured_over_predicted")
        rows.append(
            f"| {lat['device']} | {lat['runtime']} | {lat['precision']} | {lat['threads']} | {lat['batch']} x {lat['seq_len']} | "
            f"{_ms(lat.get('predicted_ms'))} | {_ms(m.get('median_ms'))} | {_ms(m.get('p90_ms'))} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} |"
        )
        notes += [f"- {lat['device']}: {lat[note]}" for note in ("predicted_note", "measured_note") if lat.get(note)]
    return rows + ([""] + notes if notes else [])


def _validation_rows(report: Mapping[str, Any]) -> list[str]:
    v = report["validation"]
    worst: dict[str, dict[str, Any]] = {}
    for c in v["checks"]:
        w = worst.setdefault(c["runtime"], {"diff": 0.0, "tol": c["tolerance"], "cos": 1.0, "ok": True, "kind": c["kind"]})
        w["diff"], w["cos"] = max(w["diff"], c["max_abs_diff"]), min(w["cos"], c["cosine_mean"])
        w["tol"], w["ok"] = min(w["tol"], c["tolerance"]), w["ok"] and c["passed"]
    rows = ["| runtime | worst max abs diff vs PyTorch | tolerance | worst mean cosine | |", "|---|---|---|---|---|"]
    for name, w in worst.items():
        tol = "cosine >= 0.98" if w["kind"] == "int8" else f"{w['tol']:.2g}"
        rows.append(f"| {name} | {w['diff']:.3g} | {tol} | {w['cos']:.5f} | {'✓' if w['ok'] else '✗'} |")
    ov = v.get("openvino_precision")
    if ov:
        rows += [
            "",
            f"OpenVINO's default inference precision on this CPU is **{ov['cpu_default']}** (on CPUs with AVX-512 BF16 or "
            f"AMX it is bf16: a plain `Core().compile_model(xml, \"CPU\")` then runs in bf16). Validated at: "
            f"{', '.join(ov['validated'])}; to {ov['how_to_pin']}.",
        ]
    return rows


def _classifier_usage(feed: str) -> list[str]:
    return [
        "`PATH` is this folder. nasbert-deploy need not be installed: the model code ships here (`trust_remote_code=True`).",
        "",
        "```python",
        "# transformers",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)",
        'logits = model(**tokenizer(["a text"], return_tensors="pt")).logits',
        "label = model.config.id2label[int(logits.argmax(-1))]",
        "",
        "# plain onnxruntime / OpenVINO: logits (batch, labels), labels in config.json's id2label order",
        "import onnxruntime as ort, openvino as ov",
        'enc = tokenizer(["a text"], return_tensors="np")',
        f'logits = ort.InferenceSession(f"{{PATH}}/onnx/model.onnx").run(None, {feed})[0]',
        'compiled = ov.Core().compile_model(f"{PATH}/openvino/openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})',
        f"logits = compiled({feed})[0]",
        "```",
    ]


def _usage(report: Mapping[str, Any]) -> list[str]:
    tt = "token_type_ids" in report.get("inputs", [])
    feed = '{k: enc[k] for k in ("input_ids", "attention_mask"' + (', "token_type_ids"' if tt else "") + ")}"
    if report.get("output") == "logits":
        return _classifier_usage(feed)
    return [
        "`PATH` is this folder. nasbert-deploy need not be installed: the model code ships here (`trust_remote_code=True`).",
        "",
        "```python",
        "# sentence-transformers (mean pooling + L2 normalisation, as configured in modules.json)",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer(PATH, trust_remote_code=True)                   # PyTorch",
        'model = SentenceTransformer(PATH, trust_remote_code=True, backend="onnx")   # onnx/model.onnx',
        'model = SentenceTransformer(PATH, trust_remote_code=True, backend="openvino",  # needs optimum-intel',
        '                            model_kwargs={"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}})',
        'embeddings = model.encode(["a sentence", "another one"])                  # unit-norm rows',
        "",
        "# transformers",
        "from transformers import AutoModel, AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModel.from_pretrained(PATH, trust_remote_code=True)",
        'hidden = model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state',
        "",
        "# optimum",
        "from optimum.onnxruntime import ORTModelForFeatureExtraction",
        "model = ORTModelForFeatureExtraction.from_pretrained(PATH, trust_remote_code=True)",
        "",
        "# plain onnxruntime / OpenVINO (then mean-pool over attention_mask and L2-normalise)",
        "import onnxruntime as ort, openvino as ov",
        'enc = tokenizer(["a sentence"], return_tensors="np")',
        f'hidden = ort.InferenceSession(f"{{PATH}}/onnx/model.onnx").run(None, {feed})[0]',
        'compiled = ov.Core().compile_model(f"{PATH}/openvino/openvino_model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})',
        f"hidden = compiled({feed})[0]",
        "```",
    ]


def model_card(report: Mapping[str, Any]) -> str:
    """The card's Markdown for an export `report` (with an empty quality section)."""
    lat = report["latency"]
    files = "\n".join(f"- `{name}` ({size:.2f} MiB)" for name, size in report["files_mb"].items())
    version = report["versions"].get("nasbert-deploy", "")
    if report.get("output") == "logits":
        labels = (report.get("weights") or {}).get("labels") or []
        head = [
            "library_name: transformers",
            "pipeline_tag: text-classification",
            "tags: [text-classification, nas-bert, nasbert-deploy, onnx, openvino]",
            "---",
            "",
            f"# NAS-BERT classifier `{report['arch']}`",
            "",
            f"A {format_params(report['params'])}-parameter text classifier on a NAS-BERT encoder (search space "
            f"`{report['space']}`), exported by nasbert-deploy {version}: output `logits` (batch, {len(labels)}), "
            "mean pooling over real tokens, then a linear layer.",
        ]
    else:
        head = [
            "library_name: sentence-transformers",
            "pipeline_tag: sentence-similarity",
            "tags: [sentence-transformers, feature-extraction, nas-bert, nasbert-deploy, onnx, openvino]",
            "---",
            "",
            f"# NAS-BERT encoder `{report['arch']}`",
            "",
            f"A {format_params(report['params'])}-parameter sentence encoder (search space `{report['space']}`), exported "
            f"by nasbert-deploy {version}: output `last_hidden_state` (batch, seq, {report.get('output_dim', '?')}); "
            "sentence embeddings = mean over real tokens, L2-normalised.",
        ]
    lines = [
        "---",
        *head,
        "",
        "## Architecture",
        "",
        f"Parameters: {report['params']:,}; FLOPs at sequence length {lat['seq_len']}: {report['flops']:,}.",
        "",
        *_arch_rows(report),
        "",
        "## Weights, teacher, data and licences",
        "",
        *_provenance(report["weights"]),
        "",
        "## Latency",
        "",
        *_latency_rows(report),
        "",
        "## Numeric validation against PyTorch",
        "",
        *_validation_rows(report),
        "",
        "## How to load it",
        "",
        *_usage(report),
        "",
        "## Quality",
        "",
        QUALITY_START,
        NO_QUALITY,
        QUALITY_END,
        "",
        "## Files",
        "",
        files,
        "",
        "The full export report: `report.md` / `report.json`.",
    ]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    from nasbert_deploy.fileio import write_text_atomic

    return write_text_atomic(Path(folder) / CARD, model_card(report))


def _quality_entry(results: Mapping[str, Any]) -> str:
    title = " / ".join(str(results[k]) for k in ("task", "runtime") if results.get(k)) or "evaluation"
    lines = [f"### {title} ({dt.date.today().isoformat()})", "", "| metric | value |", "|---|---|"]
    notes = []
    for key, value in results.items():
        if isinstance(value, bool) or key in ("task", "runtime"):
            continue
        if isinstance(value, int | float):
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
        elif isinstance(value, str):
            notes.append(f"- {key}: `{value}`")
    return "\n".join(lines + ([""] + notes if notes else []))


def append_quality(folder: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Add one evaluation (metric name -> number; strings such as `task`, `model`, `teacher` as notes) to the card's
    quality section, atomically. `ExportError` if `folder` has no card with that section."""
    from nasbert_deploy.fileio import write_text_atomic

    path = Path(folder) / CARD
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot read the model card {path}: {exc.strerror or exc}; export the model first") from None
    start, end = text.find(QUALITY_START), text.find(QUALITY_END)
    if start < 0 or end < start:
        raise ExportError(f"{path} has no quality section ({QUALITY_START} ... {QUALITY_END}); re-export to get one")
    body = text[start + len(QUALITY_START) : end].strip()
    body = "" if body in PLACEHOLDERS else body
    new = "\n\n".join(p for p in (body, _quality_entry(results)) if p)
    return write_text_atomic(path, text[: start + len(QUALITY_START)] + "\n" + new + "\n" + text[end:])


SPLIT_NAMES = ("train", "valid", "validation", "dev", "test")


def has_quality_section(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds a model card with a quality section (an export folder)."""
    path = Path(folder) / CARD
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return 0 <= text.find(QUALITY_START) < text.find(QUALITY_END)


def evaluation_entry(report: Mapping[str, Any], task_file: str | os.PathLike[str], runtime: str,
                     train_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """One card entry for an `evaluate` report: the task (a split file's folder, e.g. `debian-sections` for
    `debian-sections/valid.jsonl`, else the file's stem), the runtime, the split file's name, the machine
    (CPU model, logical CPUs), the time, then every numeric score of `report`."""
    from nasbert_deploy.profiling.host import cpu_model

    p = Path(task_file)
    entry: dict[str, Any] = {"task": p.parent.name if p.stem in SPLIT_NAMES and p.parent.name else p.stem,
                             "runtime": runtime, "split file": p.name}
    if train_file is not None:
        entry["probe trained on"] = Path(train_file).name
    if report.get("teacher"):
        entry["teacher"] = str(report["teacher"])
    entry["machine"] = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    entry["evaluated"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    entry.update({k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return entry


def record_evaluation(folder: str | os.PathLike[str], report: Mapping[str, Any], task_file: str | os.PathLike[str],
                      runtime: str, train_file: str | os.PathLike[str] | None = None) -> Path | None:
    """Append an `evaluate` report to `folder`'s model card (`evaluation_entry`, `append_quality`: atomic); None
    when `folder` has no card with a quality section (not an export folder)."""
    if not has_quality_section(folder):
        return None
    return append_quality(folder, evaluation_entry(report, task_file, runtime, train_file))
