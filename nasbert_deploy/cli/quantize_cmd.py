"""`quantize`: KD-aware quantization with learned step sizes (KDLSQ), exported to low-bit kernels.

Thin shell over `nasbert_deploy.quantize.run`; heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nasbert_deploy.cli.common import SeedOpt, ThreadsOpt, choice, console, print_report, set_threads, training_progress
from nasbert_deploy.lowbit.grid import (
    ATTENTION_MODES,
    DEFAULT_ATTENTION_MODE,
    DEFAULT_RESIDUAL,
    DEFAULT_SIGNED_ACTIVATIONS,
    REDUCE_RANGE_MODES,
    RESIDUAL_MODES,
    SIGNED_ACTIVATIONS,
    export_bits,
)
from nasbert_deploy.quantize import BITS, KERNELS, ONNX_FORMS, RECIPES
from nasbert_deploy.student.tasks import SAMPLE_TASK

app = typer.Typer()
BitsName = choice("BitsName", [str(b) for b in BITS])
ReduceRange = choice("ReduceRange", REDUCE_RANGE_MODES)
OnnxForm = choice("OnnxForm", ONNX_FORMS)
EmbeddingBits = choice("EmbeddingBits", ["weights", *[str(b) for b in BITS], "float"])
AttentionBits = choice("AttentionBits", ATTENTION_MODES)
SignedActivations = choice("SignedActivations", SIGNED_ACTIVATIONS)
ResidualMode = choice("ResidualMode", RESIDUAL_MODES)
Recipe = choice("Recipe", RECIPES)
DEFAULT_FORMATS = {b: ",".join(KERNELS[b]) or "none" for b in BITS}


def parse_formats(value: str) -> list[str]:
    """`--format onnx,openvino` | `none` -> the list (checked against the bits by the library)."""
    from nasbert_deploy.errors import ExportError
    from nasbert_deploy.quantize import FORMATS

    items = [v.strip() for v in value.split(",") if v.strip()]
    if items == ["none"]:
        return []
    bad = [v for v in items if v not in FORMATS]
    if bad or not items:
        raise ExportError(f"--format {value!r}: valid: a comma-separated subset of {', '.join(FORMATS)}, or none")
    return list(dict.fromkeys(items))


@app.command("quantize")
def quantize_cmd(
    model: Annotated[Path, typer.Option("--model", help="Fine-tuned classifier folder (teacher or student).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (model, scales, ONNX/OpenVINO, report).")],
    task: Annotated[str, typer.Option("--task", help=f"Training task file (.jsonl/.csv/.tsv) or {SAMPLE_TASK}.")] = SAMPLE_TASK,
    bits: Annotated[BitsName, typer.Option("--bits", help="Weight bits (8-bit activations); 2: simulated.")] = BitsName("8"),
    teacher_model: Annotated[Path | None, typer.Option("--teacher-model",
                                                       help="Classifier to distil from (default: --model in fp32).")] = None,
    valid: Annotated[Path | None, typer.Option("--valid", help="Validation task file (default: split off 10%).")] = None,
    transfer: Annotated[Path | None, typer.Option("--transfer", help="Unlabelled in-domain text, one paragraph per line, "
                                                  "added to the training rows and distilled only (texts of the task "
                                                  "are dropped from it).")] = None,
    transfer_rows: Annotated[int, typer.Option("--transfer-rows", min=0, help="Use this many --transfer lines (0: all).")] = 0,
    formats: Annotated[str | None, typer.Option("--format", help="Exports: onnx, openvino, or none "
                                                "(default: those with kernels: onnx,openvino for 8 and 4; none for 2).")] = None,
    onnx_form: Annotated[OnnxForm, typer.Option(
        "--onnx-form", help="8-bit ONNX graph: integer (QuantizeLinear -> MatMulIntegerToFloat with the bias inside: "
        "com.microsoft ops that ONNX Runtime and OpenVINO run) or qdq (standard Q/DQ operators only, for other "
        "runtimes; on ONNX Runtime a float bias Add per Linear of a Hugging Face BERT graph).")] = OnnxForm(ONNX_FORMS[0]),
    reduce_range: Annotated[ReduceRange, typer.Option(
        "--reduce-range", help="8-bit weights on [-63, 63] (ORT's u8 x s8 kernels saturate int16 beyond |w| 64 on x86 "
        "without VNNI); auto: on when this CPU lacks VNNI/AMX.")] = ReduceRange("auto"),
    embedding_bits: Annotated[EmbeddingBits, typer.Option(
        "--embedding-bits", help="Bits of the word-embedding table (one step size per row, dequantized on lookup): "
        "weights (as --bits), 8, 4, 2, or float.")] = EmbeddingBits("weights"),
    attention_bits: Annotated[AttentionBits, typer.Option(
        "--attention-bits", help="Attention's score product Q·Kᵀ of NAS-BERT models: auto (trained in 8 bits; 8-bit in "
        "the OpenVINO IR, as NNCF quantizes it, float in the ONNX Runtime file, as its dynamic INT8 keeps it: each "
        "runtime's faster graph; float everywhere below 8-bit weights), 8 (8-bit in both), or float.")] = AttentionBits(
        DEFAULT_ATTENTION_MODE),
    signed_activations: Annotated[SignedActivations, typer.Option(
        "--signed-activations", help="Centre the 8-bit grid of a Linear's input on zero (signed int8 in the OpenVINO IR, "
        "whose FullyConnected layers then run on s8 inputs; uint8 with zero point 128 in the ONNX file): auto (the "
        "inputs whose calibration range is two-sided, on CPUs with AMX-INT8; asymmetric elsewhere, where OpenVINO runs u8 "
        "inputs faster), on (all), off (asymmetric grids).")] = SignedActivations(
        DEFAULT_SIGNED_ACTIVATIONS),
    residual_projections: Annotated[ResidualMode, typer.Option(
        "--residual-projections", help="Square Linears close to the identity (a converted teacher's projections): "
        "auto quantizes only W - I and adds the input back in float (y = x + (W - I) x + b), off quantizes W as any "
        "Linear.")] = ResidualMode(DEFAULT_RESIDUAL),
    recipe: Annotated[Recipe, typer.Option(
        "--recipe", help="loyal: weights kept, step sizes learned by distillation alone after SmoothQuant 0.95 on the "
        "inputs with outlier channels (the export tracks the float model); trained: weights trained too, with the "
        "gold-label term, no smoothing (low-bit weights need it); auto: loyal at 8 bits, trained at 4 and 2. --lr, "
        "--ce-weight, --smooth and --smooth-min-ratio override its values.")] = Recipe("auto"),
    smooth: Annotated[float | None, typer.Option(
        "--smooth", min=0.0, max=0.99, help="SmoothQuant's alpha: divide quantized inputs by a per-channel scale "
        "(from max |x| on 16 training batches) and multiply it into the weights first (a Mul before each QuantizeLinear "
        "in the export); 0: off. Default: the recipe's (loyal 0.95, trained 0).")] = None,
    smooth_min_ratio: Annotated[float | None, typer.Option(
        "--smooth-min-ratio", min=0.0, help="With --smooth: smooth only the inputs whose largest channel's max |x| is at "
        "least this many times the median channel's (each smoothed input costs a float Mul on ONNX Runtime); 0: all. "
        "Default: the recipe's (loyal 8).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps (raise it and rerun to continue).")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples per step.")] = 16,
    max_len: Annotated[int, typer.Option("--max-len", min=2, help="Tokens per example.")] = 128,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="AdamW learning rate of the weights (0: kept). "
                                             "Default: the recipe's (loyal 0, trained 2e-5).")] = None,
    step_lr: Annotated[float, typer.Option("--step-lr", min=0.0, help="Learning rate of the relative step sizes.")] = 2e-3,
    ce_weight: Annotated[float | None, typer.Option("--ce-weight", min=0.0, help="Weight of the gold-label cross-entropy "
                                                    "beside the distillation terms (0: distillation only). Default: the "
                                                    "recipe's (loyal 0, trained 1).")] = None,
    hidden_weight: Annotated[float, typer.Option("--hidden-weight", min=0.0, help="Weight of the hidden-state MSE to the "
                                                 "fp32 model's layer outputs (0: logits and labels only).")] = 1.0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 100,
    devices: Annotated[list[str] | None, typer.Option("--device", help="Measure the exports on this kdlsq device and predict "
                                                      "them with its latency table (repeatable; default: every shipped "
                                                      "kdlsq device of --bits and --format, e.g. cpu-ort-kdlsq8).")] = None,
    no_timing: Annotated[bool, typer.Option("--no-timing", help="Do not measure the exports' latency.")] = False,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing, non-empty --out folder.")] = False,
) -> None:
    """Quantize a classifier with learned step sizes, trained by distillation from its fp32 self (resumable)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.lowbit.grid import resolve_reduce_range, resolve_signed_activations
    from nasbert_deploy.quantize import RECIPE_SETTINGS, resolve_recipe
    from nasbert_deploy.quantize.latency import check_devices, default_devices
    from nasbert_deploy.quantize.run import check_request, quantize
    from nasbert_deploy.quantize.train import QuantizeConfig
    from nasbert_deploy.student.finetune import transfer_texts
    from nasbert_deploy.student.tasks import task_splits

    check_output(out, "dir", force)
    b = int(bits.value)
    chosen_recipe, recipe_why = resolve_recipe(recipe.value, b)
    given = {"lr": lr, "ce_weight": ce_weight, "smooth": smooth, "smooth_min_ratio": smooth_min_ratio}
    settings = {k: v if v is not None else RECIPE_SETTINGS[chosen_recipe][k] for k, v in given.items()}
    if not settings["smooth"]:
        if smooth_min_ratio:
            from nasbert_deploy.errors import InputError

            raise InputError(f"--smooth-min-ratio {smooth_min_ratio} selects which inputs SmoothQuant divides, and "
                             f"SmoothQuant is off here; give --smooth ALPHA in (0, 1) with it, or leave it out")
        settings["smooth_min_ratio"] = 0.0
    changed = [f"--{k.replace('_', '-')} {v:g}" for k, v in given.items() if v is not None]
    chosen = parse_formats(formats if formats is not None else DEFAULT_FORMATS[b])
    check_request(b, chosen, onnx_form=onnx_form.value)
    specs = [] if no_timing else check_devices(devices if devices else default_devices(b, chosen), b, chosen)
    reduce, reduce_why = resolve_reduce_range(reduce_range.value, b)
    signed, signed_why = resolve_signed_activations(signed_activations.value)
    set_threads(threads)
    train, val = task_splits(task, valid)
    extra = None if transfer is None else transfer_texts(transfer, train, val, transfer_rows, seed)
    e = embedding_bits.value
    ebits = None if e == "weights" else 0 if e == "float" else int(e)
    att_bits = export_bits(attention_bits.value, "openvino", b)  # trained at what OpenVINO's IR gets
    # without --format onnx the ONNX file is the IR's source only: it keeps the IR's attention (one export, not two)
    onnx_attention = "onnx" not in chosen or export_bits(attention_bits.value, "onnxruntime", b) == att_bits
    cfg = QuantizeConfig(bits=b, embedding_bits=ebits, attention_bits=att_bits, onnx_attention=onnx_attention,
                         reduce_range=reduce, smooth=settings["smooth"], smooth_min_ratio=settings["smooth_min_ratio"],
                         signed_activations=signed,
                         residual_projections=residual_projections.value,
                         steps=steps, batch_size=batch_size,
                         max_len=max_len, lr=settings["lr"], step_lr=step_lr, ce_weight=settings["ce_weight"],
                         hidden_weight=hidden_weight,
                         checkpoint_every=checkpoint_every, seed=seed)
    with training_progress(f"quantizing ({b}-bit)") as update:
        report = quantize(model, train, val, out, cfg, chosen, teacher_model, update, note=console.print, devices=specs,
                          transfer=extra, onnx_form=onnx_form.value,
                          recipe={"name": chosen_recipe, "why": recipe_why, "overrides": changed})
    lo, hi = report["weight_levels"]
    rows: dict[str, object] = {"recipe": f"{chosen_recipe} ({recipe_why}" + (f"; {', '.join(changed)}" if changed else "")
                               + ")", "weight grid": f"[{lo}, {hi}], reduce range {reduce_why}", "input grids": signed_why,
                               "train rows": report["train_rows"], "transfer rows": report["transfer_rows"],
                               "valid rows": report["valid_rows"],
                               "train_s": report["training"]["train_s"]}
    for name, s in report["scores"].items():
        rows[f"{name} accuracy"] = s["accuracy"]
        if s.get("probability_loyalty") is not None:
            rows[f"{name} prob. loyalty"] = s["probability_loyalty"]
    emb = report.get("embedding") or {}
    rows["word embeddings"] = f"{emb['bits']}-bit per row" if emb.get("module") else "float"
    att = report.get("attention") or {}
    per = {rt: f"{b}-bit" if b else "float" for rt, b in (att.get("runtimes") or {}).items()}
    rows["attention products"] = (f"{att['bits']}-bit ({att['quantized']} attentions)" + (
        f"; ONNX Runtime file {per['onnxruntime']}, OpenVINO IR {per['openvino']}" if len(set(per.values())) > 1 else "")
    ) if att.get("quantized") else "float"
    sm = report.get("smoothing") or {}
    fold = len(sm.get("folded_into_value") or [])
    rows["SmoothQuant"] = (f"alpha {sm['alpha']} on {len(sm['inputs']) + fold} inputs"
                           + (f" (max/median >= {sm['min_ratio']})" if sm.get("min_ratio") else "")
                           + (f" ({fold} folded into value)" if fold else "")) if sm.get("alpha") else "off"
    res = (report.get("residual_projections") or {}).get("linears") or []
    rows["residual form (x + (W - I) x)"] = f"{len(res)} Linears" if res else "none"
    for rt, c in report["checks"].items():
        rows[f"{rt} vs torch max |diff|"] = c["max_abs_diff"]
    for lat in report.get("latency", []):
        m = (lat.get("measured") or {}).get("median_ms")
        pred = lat.get("predicted_ms")
        rows[f"{lat['device']} ms (b1 x {lat['seq_len']})"] = (
            f"measured {m:.3f}" if m else lat.get("measured_note", "not measured")) + (
            f", predicted {pred:.3f} ({m / pred - 1:+.1%})" if pred and m else f"; {lat.get('predicted_note', '')}")
    if report["simulated_only"]:
        rows["exports"] = "none (simulated: no runtime has these kernels)"
    print_report(f"quantized -> {out}", rows)
