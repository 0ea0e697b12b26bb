"""`quantize`: check the inputs, train the fake-quantized classifier with distillation, export it to low-bit
kernels, check the exports numerically and score everything on the validation rows.

The output folder (written atomically):

    config.json, model.safetensors, tokenizer files   the classifier, weights already on their quantization grid
                                                      (loads anywhere as a plain model: weight-quantized, float activations)
    quantization.json, quantization.safetensors       bits, weight levels (reduce_range: [-63, 63]), every
                                                      quantizer's step size and zero point (the word-embedding
                                                      table's too: one step size per row, `embedding`)
    onnx/model_q8.onnx | onnx/model_q4.onnx           QDQ (8 bit) or MatMulNBits (4 bit) ONNX, the learned scales
    openvino/openvino_model_q8.xml | _q4.xml (+ .bin) the same as OpenVINO IR: FakeQuantize, runs in INT8; 4 bit:
                                                      u4 weight compression with the learned scales
    quantize_report.json                              settings, training, numeric checks, scores (fp32 vs quantized)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import ExportError, RuntimeUnavailableError, TaskError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.lowbit.attention import plain_attention, quantize_attention, quantized_attentions
from nasbert_deploy.lowbit.embedding import quantize_embeddings
from nasbert_deploy.lowbit.lsq import (
    bake_weights,
    quantize_linears,
    share_input_quantizers,
    shared_input_groups,
    weight_levels,
)
from nasbert_deploy.lowbit.qdq import ONNX_FORMS, export_quantized_onnx
from nasbert_deploy.lowbit.residual import RESIDUAL_MODES, merge_residual, split_residual
from nasbert_deploy.lowbit.smooth import add_smoothing, input_absmax, smooth_model
from nasbert_deploy.model.loop import NoteFn, ProgressFn, checkpoint_dir, epoch_order
from nasbert_deploy.quantize import BITS, KERNELS
from nasbert_deploy.quantize.check import (
    check_logits,
    check_weight_range,
    first_output,
    runtime_runners,
    summarize,
    task_logits,
    torch_runner,
)
from nasbert_deploy.quantize.latency import measure_exports
from nasbert_deploy.quantize.train import QuantizeConfig, train_quantized
from nasbert_deploy.runtimes.signed import openvino_onnx
from nasbert_deploy.student.finetune import check_model_folder, fit_max_len, load_classifier
from nasbert_deploy.student.metrics import evaluate_logits
from nasbert_deploy.student.tasks import TaskData, iter_batches

QUANT_JSON, QUANT_WEIGHTS, REPORT_NAME = "quantization.json", "quantization.safetensors", "quantize_report.json"


def _is_quantizer_state(key: str) -> bool:
    """A state-dict entry of a quantizer (step size, zero point, ...): weights', inputs' or attention's."""
    return ".w_quant." in key or ".a_quant." in key or ".attn_quant." in key


def onnx_name(bits: int) -> str:
    return f"onnx/model_q{bits}.onnx"


def embedding_bits(cfg: QuantizeConfig) -> int:
    """Bits of the word-embedding table (0: float): `cfg.embedding_bits`, or the weights' when None."""
    return cfg.bits if cfg.embedding_bits is None else cfg.embedding_bits


def check_request(bits: int, formats: Sequence[str], embedding: int | None = None, onnx_form: str = ONNX_FORMS[0],
                  residual: str = RESIDUAL_MODES[0]) -> None:
    """Bits the chosen runtimes have kernels for (`KERNELS`), the 8-bit ONNX form (`lowbit.qdq.ONNX_FORMS`), and the
    runtimes importable: one-line errors."""
    if bits not in BITS:
        raise ExportError(f"--bits {bits} is not supported; valid: {', '.join(map(str, BITS))}")
    if onnx_form not in ONNX_FORMS:
        raise ExportError(f"--onnx-form {onnx_form!r} is not supported; valid: {', '.join(ONNX_FORMS)}")
    if onnx_form != ONNX_FORMS[0] and (bits != 8 or not formats):
        raise ExportError(f"--onnx-form {onnx_form} chooses the graph of 8-bit exports; with --bits {bits} and "
                          f"--format {','.join(formats) or 'none'} there is none: leave it out")
    if residual not in RESIDUAL_MODES:
        raise ExportError(f"--residual-projections {residual!r} is not supported; valid: {', '.join(RESIDUAL_MODES)}")
    if embedding is not None and embedding not in (0, *BITS):
        raise ExportError(f"--embedding-bits {embedding} is not supported; valid: {', '.join(map(str, BITS))}, or 0 (float)")
    bad = [f for f in formats if f not in KERNELS[bits]]
    if bad:
        have = ", ".join(KERNELS[bits]) or "none (simulated in PyTorch only: pass --format none)"
        raise ExportError(f"--bits {bits} has no kernel in {', '.join(bad)}; formats with {bits}-bit kernels: {have}")
    for f, module in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        if f in formats:
            import importlib.util

            if importlib.util.find_spec(module) is None:
                raise RuntimeUnavailableError(f"--format {f} needs {module}, which is not installed (pip install {module})")


def check_inputs(model_dir: Path, train: TaskData, valid: TaskData, teacher_model: Path | None) -> list[str]:
    """Before any work: `model_dir` (and a teacher) are classifiers, the task's labels are the model's. Returns them."""
    from nasbert_deploy.teacher import read_model_config

    check_model_folder(model_dir, classifier=True)
    labels = _config_labels(read_model_config(model_dir, "--model", TaskError), model_dir)
    for data in (train, valid):
        data.label_ids({n: i for i, n in enumerate(labels)})
    if teacher_model is not None:
        check_model_folder(teacher_model, classifier=True, option="--teacher-model")
        t_labels = _config_labels(read_model_config(teacher_model, "--teacher-model", TaskError), teacher_model)
        if t_labels != labels:
            raise TaskError(f"--teacher-model labels {t_labels[:6]} differ from --model's {labels[:6]} (names and order); "
                            "use a teacher fine-tuned on the same task, or leave --teacher-model out to distil from --model")
    return labels


def _config_labels(config: dict[str, Any], path: Path) -> list[str]:
    id2label = config.get("id2label")
    try:
        return [str(id2label[str(i)]) for i in range(len(id2label))]  # type: ignore[index, arg-type]
    except (KeyError, TypeError):
        raise TaskError(f"{path / 'config.json'} has no usable id2label map (class ids 0..n-1); "
                        "fine-tune the model with `nasbert-deploy finetune` first") from None


def load_quantized(folder: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(fake-quantized classifier, tokenizer, quantization.json) from a `quantize` output folder."""
    from safetensors.torch import load_file

    p = Path(folder)
    meta = json.loads((p / QUANT_JSON).read_text())
    model, tokenizer = load_classifier(p)
    split_residual(model, meta.get("residual_linears", []))  # folders written before the residual form have none
    # folders written before the reduced grid existed have no reduce_range: full range, as trained
    quantize_linears(model, meta["bits"], meta["act_bits"], reduce_range=bool(meta.get("reduce_range", False)))
    # folders written before sharing existed have no groups: every Linear keeps its own input quantizer, as trained
    share_input_quantizers(model, meta.get("shared_input_quantizers", []))
    add_smoothing(model, meta.get("smoothed_inputs", []))  # folders written before SmoothQuant existed have none
    if meta.get("embedding_bits"):  # folders written before embeddings were quantized have none: float table
        quantize_embeddings(model, int(meta["embedding_bits"]))
    state = load_file(str(p / QUANT_WEIGHTS))
    if meta.get("attention_bits"):  # folders written before attention was quantized have none: float attention
        quantize_attention(model, int(meta["attention_bits"]))
    missing = [k for k in model.state_dict() if _is_quantizer_state(k)]
    model.load_state_dict({**model.state_dict(), **state})
    if sorted(missing) != sorted(state):
        raise ExportError(f"{p / QUANT_WEIGHTS} does not match the model's quantizers")
    return model.eval(), tokenizer, meta


def _example(model: Any, pairs: bool) -> dict[str, torch.Tensor]:
    from nasbert_deploy.runtimes.convert import EXAMPLE_BATCH, EXAMPLE_SEQ

    g = torch.Generator().manual_seed(0)
    shape = (EXAMPLE_BATCH, EXAMPLE_SEQ)
    ex = {"input_ids": torch.randint(5, int(model.config.vocab_size), shape, generator=g),
          "attention_mask": torch.ones(shape, dtype=torch.long)}
    if pairs:
        ex["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    return ex


SMOOTH_BATCHES = 16  # calibration batches of the training rows (in the first epoch's order) for SmoothQuant's max |x|


def _calibration(tokenizer: Any, rows: TaskData, cfg: QuantizeConfig) -> list[dict[str, torch.Tensor]]:
    order = epoch_order(len(rows), cfg.seed, 0)[: SMOOTH_BATCHES * cfg.batch_size]
    return [batch for _, batch in iter_batches(tokenizer, rows, cfg.batch_size, cfg.max_len, order)]


def quantize(
    model_dir: str | Path,
    train: TaskData,
    valid: TaskData,
    out_dir: str | Path,
    cfg: QuantizeConfig,
    formats: Sequence[str] = ("onnx", "openvino"),
    teacher_model: str | Path | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
    devices: Sequence[DeviceSpec] = (),
    latency_seq_len: int = 128,
    transfer: Sequence[str] | None = None,
    onnx_form: str = ONNX_FORMS[0],
    recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """KDLSQ: fake-quantize every Linear of the classifier in `model_dir`, train it with distillation from the
    full-precision model (or `teacher_model`), export it for `formats`, check and score; returns the report.
    `devices` (kdlsq devices, `quantize.latency.check_devices`): the exports measured on each, and predicted by
    its latency table where one covers the model (`report["latency"]`), at batch 1 x `latency_seq_len`.
    `transfer`: unlabelled in-domain texts (`student.finetune.transfer_texts`) added to the training rows, distilled
    only (the teacher's outputs on text like the validation rows', not just on the rows it was fine-tuned on).
    `onnx_form`: the 8-bit ONNX graph, "integer" (MatMulIntegerToFloat, com.microsoft; ORT and OpenVINO) or "qdq"
    (standard operators only); the latency tables are profiled with the first. `recipe`: how the command line chose
    `cfg`'s training settings (`quantize --recipe`), recorded in the report."""
    check_request(cfg.bits, formats, cfg.embedding_bits, onnx_form, cfg.residual_projections)
    if transfer and train.pairs is not None:
        raise TaskError("--transfer is for single-text classification; this task has text pairs")
    labels = check_inputs(Path(model_dir), train, valid, None if teacher_model is None else Path(teacher_model))
    fp_model, tokenizer = load_classifier(model_dir)
    fp_model.eval()
    teacher = fp_model if teacher_model is None else load_classifier(teacher_model)[0].eval()
    student = copy.deepcopy(fp_model)
    # near-identity square Linears (a converted teacher's projections): only W - I is quantized, x added in float
    residual = split_residual(student) if cfg.residual_projections == "auto" else []
    cfg = dataclasses.replace(cfg, max_len=fit_max_len(fp_model, cfg.max_len))
    label2id = {n: i for i, n in enumerate(labels)}
    rows, ids = train, train.label_ids(label2id)
    if transfer:
        rows = TaskData(train.texts + tuple(transfer), train.labels + ("",) * len(transfer), None, train.source)
        ids = ids + [-1] * len(transfer)
    absmax = None
    if cfg.smooth:
        if note:
            note(f"SmoothQuant (alpha {cfg.smooth}): max |x| of every Linear input over {SMOOTH_BATCHES} training batches")
        absmax = input_absmax(student, _calibration(tokenizer, rows, cfg))
    # Linears reading one tensor (query/key/value) share one input quantizer: one QuantizeLinear per tensor in the export
    names = quantize_linears(student, cfg.bits, cfg.act_bits, _example(student, valid.pairs is not None), cfg.reduce_range,
                             signed_activations=cfg.signed_activations)
    smoothed, folded = smooth_model(student, absmax, cfg.smooth, cfg.smooth_min_ratio) if absmax is not None else ([], [])
    embedding = quantize_embeddings(student, embedding_bits(cfg)) if embedding_bits(cfg) else None
    attention = quantize_attention(student, cfg.attention_bits) if cfg.attention_bits else 0
    key = {"model": str(model_dir), "task": train.source, "teacher_model": None if teacher_model is None else str(teacher_model),
           "shared_input_quantizers": shared_input_groups(student)}  # a checkpoint from before sharing: refused
    if transfer:
        key["transfer_rows"] = len(transfer)
    if residual:  # a checkpoint written before the residual form has other Linears there
        key["residual_linears"] = residual
    if folded:  # a checkpoint written before the fold (a Mul on these inputs) does not resume into this model
        key["smooth_folded"] = folded
    summary = train_quantized(student, teacher, tokenizer, rows, ids, out_dir, cfg, key, progress, note)
    bake_weights(student)
    report = _score_and_export(fp_model, student, tokenizer, valid, labels, cfg, formats, out_dir, names, onnx_form)
    report["embedding"] = {"module": embedding, "bits": embedding_bits(cfg) if embedding else None}
    report["attention"] = {"quantized": attention, "bits": cfg.attention_bits if attention else None}
    if attention:  # each runtime's file (`lowbit.grid.export_bits`)
        report["attention"]["runtimes"] = {"onnxruntime": cfg.attention_bits if cfg.onnx_attention else 0,
                                           "openvino": cfg.attention_bits}
    report["smoothing"] = {"alpha": cfg.smooth or None, "min_ratio": cfg.smooth_min_ratio or None, "inputs": smoothed,
                           "folded_into_value": folded}
    report["residual_projections"] = {"mode": cfg.residual_projections, "linears": residual}
    report.update({"model": str(model_dir), "teacher_model": key["teacher_model"], "task": train.source,
                   "train_rows": len(train), "transfer_rows": len(transfer or ()), "valid_rows": len(valid),
                   "config": cfg.to_dict(), "training": summary})
    if recipe:
        report["recipe"] = dict(recipe)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        _write_folder(tmp, student, tokenizer, cfg, names, formats, report)
        if devices:
            if note:
                note(f"measuring the exports on {', '.join(d.name for d in devices)}")
            seq = min(latency_seq_len, int(getattr(student.config, "max_position_embeddings", 512) or 512))
            report["latency"] = measure_exports(tmp, devices, student.config, seq)
            write_json_atomic(tmp / REPORT_NAME, report)
    shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    return report


def _score_and_export(
    fp_model: Any, student: Any, tokenizer: Any, valid: TaskData, labels: list[str], cfg: QuantizeConfig,
    formats: Sequence[str], out_dir: str | Path, names: list[str], onnx_form: str = ONNX_FORMS[0],
) -> dict[str, Any]:
    y = valid.label_ids({n: i for i, n in enumerate(labels)})
    fp_logits = task_logits(torch_runner(fp_model), tokenizer, valid, cfg.max_len)
    q_logits = task_logits(torch_runner(student), tokenizer, valid, cfg.max_len)
    scores = {"fp32": evaluate_logits(y, fp_logits).to_dict(),
              f"kdlsq-{cfg.bits}bit-torch": evaluate_logits(y, q_logits, fp_logits).to_dict()}
    report: dict[str, Any] = {"bits": cfg.bits, "act_bits": cfg.act_bits, "reduce_range": cfg.reduce_range,
                              "weight_levels": list(weight_levels(student)), "quantized_linears": len(names),
                              "simulated_only": not formats, "scores": scores, "checks": {}}
    if not formats:
        return report
    work = Path(tempfile.mkdtemp(prefix="nasbert-quant-"))
    example = _example(student, valid.pairs is not None)
    # `--attention-bits auto`: ONNX Runtime's file computes the trained model with float attention (`export_bits`)
    ort_model = student
    if quantized_attentions(student) and not cfg.onnx_attention:
        ort_model = copy.deepcopy(student)
        plain_attention(ort_model)
    try:
        onnx_path = export_quantized_onnx(ort_model, work / "model.onnx", example, cfg.bits, form=onnx_form)
        report["onnx_form"] = onnx_form if cfg.bits == 8 else "matmulnbits"
        if cfg.bits == 8:  # the int8 weights the kernels get lie on the trained grid (reduced: no int16 saturation)
            report["onnx_weight_range"] = check_weight_range(onnx_path, report["weight_levels"])
        paths = {"onnxruntime": onnx_path} if "onnx" in formats else {}
        if "openvino" in formats:  # centred activations as int8 (`runtimes.signed`): what the IR is converted from
            ov_src = onnx_path if ort_model is student else export_quantized_onnx(
                student, work / "model_attention.onnx", example, cfg.bits, form=onnx_form)
            paths["openvino"], report["openvino_signed_inputs"] = openvino_onnx(ov_src, work / "model_openvino.onnx")
            report["_onnx_openvino"] = str(paths["openvino"])
        compiled = runtime_runners(paths)
        runners = {rt: first_output(c) for rt, c in compiled.items()}
        pos = int(getattr(student.config, "max_position_embeddings", 512) or 512)
        checks = [c for rt, run in runners.items() for c in check_logits(
            torch_runner(ort_model if rt == "onnxruntime" else student), {rt: run}, pos, int(student.config.vocab_size),
            valid.pairs is not None)]
        report["checks"] = summarize(checks)
        bad = [c for c in checks if not c.passed]
        if bad:
            passed = sorted({c.runtime for c in checks} - {c.runtime for c in bad})
            fmt = {"onnxruntime": "onnx", "openvino": "openvino"}
            hint = f"--format {','.join(fmt[r] for r in passed)} (or none)" if passed else "--format none"
            raise ExportError(f"the quantized export differs from the fake-quantized model in {len(bad)} of {len(checks)} "
                              "checks: " + "; ".join(c.describe() for c in bad[:4]) + f"; the trained state is kept beside "
                              f"the output: rerun with {hint} to write the folder without training again")
        for rt, run in runners.items():
            logits = task_logits(run, tokenizer, valid, cfg.max_len)
            scores[f"kdlsq-{cfg.bits}bit-{rt}"] = {**evaluate_logits(y, logits, fp_logits).to_dict(),
                                                   "agreement_vs_torch": float((logits.argmax(1) == q_logits.argmax(1)).mean())}
        report["_onnx"] = str(onnx_path)
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _check_ir_compiles(xml: Path) -> None:
    """The written IR compiles on this machine's CPU plugin (the checks ran the ONNX file): one-line error if not."""
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.runtimes.openvino_rt import OvCompiled

    try:
        OvCompiled(xml, load_device("cpu-openvino"))
    except RuntimeError as e:
        last = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip()), repr(e))
        raise ExportError(f"OpenVINO cannot compile the quantized IR {xml.name}: {last}; "
                          "pass --format onnx and open the ONNX file with OpenVINO instead") from None


def _write_folder(tmp: Path, student: Any, tokenizer: Any, cfg: QuantizeConfig, names: list[str], formats: Sequence[str],
                  report: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from nasbert_deploy.lowbit.qdq import float_copy
    from nasbert_deploy.model.remote_code import write_remote_code

    # clone: a shared input quantizer appears under every reader's name, and safetensors refuses shared memory
    quant_state = {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()
                   if _is_quantizer_state(k)}
    plain = float_copy(student)
    merge_residual(plain)  # x + D x as the Linear I + D: the folder loads as a plain model
    plain.save_pretrained(tmp)  # plain Linears holding the dequantized (on-grid) weights
    tokenizer.save_pretrained(tmp)
    if getattr(student.config, "model_type", "") == "nasbert":
        write_remote_code(tmp)
    save_file(quant_state, str(tmp / QUANT_WEIGHTS))
    onnx_src = report.pop("_onnx", None)
    ov_src = report.pop("_onnx_openvino", None)
    files = {}
    if onnx_src:
        target = tmp / onnx_name(cfg.bits)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(onnx_src, target)
        files["onnx"] = onnx_name(cfg.bits)
        if "openvino" in formats:
            from nasbert_deploy.runtimes.convert import onnx_to_openvino

            xml = f"openvino/openvino_model_q{cfg.bits}.xml"
            # the reader's graph: the one the checks ran (OpenVINO opening the ONNX file of `runtimes.signed`)
            onnx_to_openvino(ov_src or target, tmp / xml, fp16=False, convert=False)
            _check_ir_compiles(tmp / xml)
            files["openvino"] = xml
        shutil.rmtree(Path(onnx_src).parent, ignore_errors=True)
    report["files"] = files
    meta = {"method": "KDLSQ (LSQ step sizes + distillation)", "bits": cfg.bits, "act_bits": cfg.act_bits,
            "reduce_range": cfg.reduce_range, "weight_levels": list(weight_levels(student)),
            "weights": "symmetric per output channel",
            "activations": "uint8 per tensor" + (f", centred on zero (signed int8 in OpenVINO): {cfg.signed_activations}"
                                                 if cfg.signed_activations != "off" else ", asymmetric"), "linears": names,
            "shared_input_quantizers": shared_input_groups(student), "files": files,
            "onnx_form": report.get("onnx_form"),
            "embedding_bits": report.get("embedding", {}).get("bits") or 0,
            "embedding": report.get("embedding", {}).get("module"),
            "attention_bits": report.get("attention", {}).get("bits") or 0,
            "onnx_attention_bits": (report.get("attention", {}).get("runtimes") or {}).get("onnxruntime", 0),
            "smooth_alpha": report.get("smoothing", {}).get("alpha"),
            "residual_linears": report.get("residual_projections", {}).get("linears", []),
            "smoothed_inputs": report.get("smoothing", {}).get("inputs", []),
            "smooth_folded_into_value": report.get("smoothing", {}).get("folded_into_value", [])}
    write_json_atomic(tmp / QUANT_JSON, meta)
    write_json_atomic(tmp / REPORT_NAME, report)
