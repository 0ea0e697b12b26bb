"""Export a standalone model: transformers folder, ONNX, OpenVINO IR, INT8, numeric validation, report.

    from nasbert_deploy.export.pipeline import ExportOptions, export_model, model_from_supernet
    model, info = model_from_supernet("128:mha,ffn|192:sep3,ffn", supernet_dir=None)  # default supernet
    report = export_model(model, "out/", tokenizer, load_device("cpu-ort"), ExportOptions(int8=True), weights=info)

Everything is written into a temporary folder beside `out` and renamed onto it only when every step
succeeded (conversion, validation on a grid of shapes, measurement), so a failed or interrupted
export leaves nothing behind. Output folder layout (loads without nasbert-deploy, see `ecosystem`):

    config.json (+ auto_map), model.safetensors,        transformers: AutoModel.from_pretrained(out,
    configuration_nasbert.py, modeling_nasbert.py,        trust_remote_code=True), or without it where
    tokenizer files                                       nasbert_deploy is imported
    modules.json, sentence_bert_config.json,            sentence-transformers: mean pooling + Normalize
    config_sentence_transformers.json, 1_Pooling/
    onnx/model.onnx                                     one file; inputs input_ids, attention_mask
                                                        (+ token_type_ids); output last_hidden_state;
                                                        dynamic batch and sequence axes
    openvino/openvino_model.xml / .bin                  OpenVINO IR from the ONNX file
    onnx/model_qint8.onnx,                              with --int8 (ORT dynamic QInt8; NNCF PTQ)
    openvino/openvino_model_qint8_quantized.xml / .bin
    README.md                                           model card (`card`)
    report.json, report.md                              see `export_report`
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import CheckpointError, ExportError, TableError
from nasbert_deploy.export import measure
from nasbert_deploy.export.validate import (
    VALIDATION_BATCHES,
    VALIDATION_SEQ_LENS,
    is_classifier_model,
    output_name,
    raise_failures,
)
from nasbert_deploy.runtimes.base import EXPORT_ARTEFACTS
from nasbert_deploy.space import Arch, SearchSpace

FORMATS = ("onnx", "openvino")
DEFAULT_CALIBRATION_SIZE = 64


@dataclass(frozen=True)
class ExportOptions:
    """What to write and check. `batch`/`seq_len` are the shape latency and memory are reported at."""

    formats: tuple[str, ...] = FORMATS
    int8: bool = False
    fp16: bool = False
    token_type_ids: bool = False
    batch: int = 1
    seq_len: int = 128
    validate: bool = True
    measure_latency: bool = True
    rescale_latency: bool = False  # re-time the table's reference model beside the export: prediction for the host now
    budget_ms: tuple[float, ...] = ()  # the latency budget per device (searched exports): the report flags overruns
    latency_factors: dict[str, float] = field(default_factory=dict)  # device -> `--calibrate` factor on its predictions
    measure_memory: bool = True
    validation_batches: tuple[int, ...] = VALIDATION_BATCHES
    validation_seq_lens: tuple[int, ...] = VALIDATION_SEQ_LENS
    calibration_texts: tuple[str, ...] = field(default=(), repr=False)
    timing_kwargs: dict[str, Any] = field(default_factory=lambda: dict(measure.DEFAULT_TIMING))

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ExportError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)} (comma-separated)")
        if self.fp16 and "openvino" not in self.formats:
            raise ExportError("--fp16 applies to the OpenVINO IR: add openvino to --format")
        if self.batch < 1 or self.seq_len < 2:
            raise ExportError(f"batch must be >= 1 and seq_len >= 2, got batch {self.batch}, seq_len {self.seq_len}")


def parse_formats(text: str) -> tuple[str, ...]:
    """'onnx,openvino' -> ('onnx', 'openvino'); `ExportError` on unknown names."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    ExportOptions(formats=names)  # validates
    return names


def check_device_formats(spec: DeviceSpec, options: ExportOptions) -> None:
    """The artefact the device runs must be among those exported (it is what the report times)."""
    need = {"onnxruntime": "onnx", "openvino": "openvino"}.get(spec.runtime)
    if need and need not in options.formats:
        raise ExportError(f"device {spec.name!r} runs {spec.runtime}: add {need} to --format (now {','.join(options.formats)})")
    if spec.quantizer == "kdlsq":
        raise ExportError(f"device {spec.name!r} runs the integer exports of `nasbert-deploy quantize` (KDLSQ): quantize a "
                          f"fine-tuned model with `nasbert-deploy quantize --bits {spec.kdlsq_bits} --device {spec.name}`, "
                          "or export for a float or PTQ device (cpu-ort, cpu-ort-int8, ...)")
    if spec.precision == "int8" and not options.int8:
        raise ExportError(f"device {spec.name!r} runs INT8 models: add --int8")
    if spec.precision == "fp16" and spec.runtime == "openvino" and not options.fp16:
        raise ExportError(f"device {spec.name!r} runs fp16: add --fp16")


# ---------------------------------------------------------------------------- model and arch
def resolve_supernet(supernet_dir: str | os.PathLike[str] | None) -> Path:
    """The supernet folder (`--supernet DIR` or the shipped default); `CheckpointError` saying how to get one."""
    try:
        from nasbert_deploy.supernet.default import resolve_supernet_dir
    except ImportError:
        resolve_supernet_dir = None  # type: ignore[assignment]
    if resolve_supernet_dir is None:
        if supernet_dir is None:
            raise CheckpointError("no default supernet in this build; pass --supernet DIR (or --init random for latency studies)")
        return Path(supernet_dir)
    try:
        return resolve_supernet_dir(supernet_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (or pass --init random to export random weights for latency studies)") from None


def model_from_supernet(arch: Arch | str, supernet_dir: str | os.PathLike[str] | None) -> tuple[Any, dict[str, Any]]:
    """(NasBertModel with weights inherited from the supernet, weights info for the report)."""
    from nasbert_deploy.supernet.network import Supernet

    folder = resolve_supernet(supernet_dir)
    net, meta = Supernet.load(folder)
    model = net.extract(arch)
    return model, {"init": "supernet", "supernet": str(folder), "supernet_metadata": meta,
                   "shipped_supernet": supernet_dir is None}


def random_model(arch: Arch | str, space: SearchSpace, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(NasBertModel with random weights (seeded), weights info saying so)."""
    import torch

    from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel

    torch.manual_seed(seed)
    model = NasBertModel(NasBertConfig.from_arch(arch, space)).eval()
    return model, {"init": "random", "seed": seed, "note": "weights are RANDOM: for latency studies only, not for accuracy"}


def supernet_space(supernet_dir: str | os.PathLike[str] | None) -> SearchSpace:
    """The space a supernet checkpoint was trained on (read from its JSON, no weights loaded)."""
    from nasbert_deploy.supernet.network import read_meta

    return SearchSpace.from_dict(read_meta(resolve_supernet(supernet_dir))["space"])  # CheckpointError / SpaceError


def select_arch(
    specs: DeviceSpec | Sequence[DeviceSpec],
    budget: Any,
    batch: int,
    seq_len: int,
    supernet_dir: str | os.PathLike[str] | None,
    tables: Sequence[Any] | None = None,
) -> Any:
    """The least-loss architecture within `budget` (a `search.Budget`, one latency per device) on every device
    of `specs` (a `search.ScoredArch`).

    Uses the supernet's candidate table and each device's latency table (or `tables`, one per device, e.g.
    calibrated ones); `InfeasibleBudgetError` (naming the binding constraint) when nothing fits. Memory is priced
    at the first device's precision.
    """
    from nasbert_deploy.search.problem import SearchProblem
    from nasbert_deploy.supernet.candidates import CandidateTable

    specs = [specs] if isinstance(specs, DeviceSpec) else list(specs)
    cands_path = resolve_supernet(supernet_dir) / "candidates.json"
    if not cands_path.is_file():
        raise TableError(f"{cands_path} does not exist: the supernet has no candidate table; pass --arch instead")
    cands = CandidateTable.load(cands_path)
    if tables is None:
        tables = [measure.load_latency_table(s, cands.space) for s in specs]
    problem = SearchProblem(cands, tables, batch, seq_len, specs[0].precision, [s.name for s in specs])
    return problem.search(budget, 1).best[0]


# ---------------------------------------------------------------------------- tokenizer and calibration
def load_export_tokenizer(path: str | os.PathLike[str] | None, space: SearchSpace) -> Any:
    """`--tokenizer PATH` (any local tokenizer folder) or the teacher's; its ids must fit the space's vocabulary."""
    from nasbert_deploy.errors import TeacherError

    if path is None:
        from nasbert_deploy.teacher import load_tokenizer

        tok = load_tokenizer(None)
    else:
        from transformers import AutoTokenizer

        p = Path(path)
        if not p.is_dir():
            raise TeacherError(f"--tokenizer {p} is not a folder with tokenizer files (tokenizer.json or vocab.txt)")
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # a foreign folder: transformers raises many kinds; the user needs one line
            raise TeacherError(f"cannot load a tokenizer from {p}: {type(exc).__name__}: {exc}") from None
    if len(tok) > space.vocab_size:
        raise TeacherError(
            f"the tokenizer has {len(tok)} tokens but the model's vocabulary has {space.vocab_size}; "
            "use the tokenizer the supernet was trained with"
        )
    return tok


def default_calibration_texts(limit: int = DEFAULT_CALIBRATION_SIZE) -> tuple[str, ...]:
    """The first `limit` non-empty lines of the shipped `data/sample.txt`."""
    from importlib import resources

    text = resources.files("nasbert_deploy").joinpath("data/sample.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())[:limit]


def calibration_inputs(tokenizer: Any, texts: Sequence[str], seq_len: int, token_type_ids: bool) -> list[dict[str, Any]]:
    """One input dict (int64 numpy, batch 1, up to `seq_len` tokens) per text, for NNCF calibration."""
    import numpy as np

    if not texts:
        raise ExportError("INT8 calibration needs text: the calibration file is empty")
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=seq_len, return_tensors="np")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        if ids.shape[1] < 2:  # a single token would be a size-1 axis; skip it
            continue
        d = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if token_type_ids:
            d["token_type_ids"] = np.zeros_like(ids)
        out.append(d)
    if not out:
        raise ExportError("INT8 calibration needs text of at least two tokens per line; the calibration text has none")
    return out


# ---------------------------------------------------------------------------- the export itself
@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF logs an INFO line per skipped quantizer on stdout; the user only needs warnings."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_model(
    model: Any,
    out_dir: str | os.PathLike[str],
    tokenizer: Any,
    spec: DeviceSpec,
    options: ExportOptions,
    weights: dict[str, Any],
    on_step: Callable[[str], None] | None = None,
    on_check: Callable[[Any], None] | None = None,
    more_specs: Sequence[DeviceSpec] = (),
) -> dict[str, Any]:
    """Write every artefact of `model` (a `NasBertModel`, or a `NasBertForSequenceClassification`: its output is
    `logits`) into `out_dir`, validate, measure on `spec` (and on each of `more_specs`); return the report.

    Raises `ExportError` (one, listing every failed check) if validation fails; then nothing is written.
    """
    from nasbert_deploy.export.card import write_model_card
    from nasbert_deploy.export.ecosystem import write_ecosystem_files
    from nasbert_deploy.export.report import build_report, write_report
    from nasbert_deploy.export.targets import validate_export
    from nasbert_deploy.fileio import atomic_dir
    from nasbert_deploy.model.remote_code import write_remote_code
    from nasbert_deploy.runtimes.convert import (
        EXAMPLE_BATCH,
        EXAMPLE_SEQ,
        FirstOutput,
        export_onnx,
        onnx_to_openvino,
        quantize_onnx_int8,
        quantize_openvino_int8,
    )

    def step(name: str) -> None:
        if on_step:
            on_step(name)

    for s in (spec, *more_specs):
        check_device_formats(s, options)
    space = model.config.search_space
    arch = model.config.arch_obj
    seq_len = min(options.seq_len, space.max_positions)
    model = model.eval()
    out = Path(out_dir)
    try:
        with atomic_dir(out) as tmp:
            step("transformers folder")
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            if is_classifier_model(model):  # custom code + auto_map; sentence-transformers is for encoders
                write_remote_code(tmp)
            else:
                write_ecosystem_files(tmp, tokenizer, space.output_dim, seq_len)  # ST truncates where latency is reported
            path = {kind: tmp / rel for kind, rel in EXPORT_ARTEFACTS.items()}
            for p in path.values():
                p.parent.mkdir(parents=True, exist_ok=True)
            step("ONNX")
            g = torch.Generator().manual_seed(0)
            ex_ids = torch.randint(1, min(len(tokenizer), space.vocab_size), (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=g)
            example = {"input_ids": ex_ids, "attention_mask": torch.ones_like(ex_ids)}
            if options.token_type_ids:
                example["token_type_ids"] = torch.zeros_like(ex_ids)
            onnx_path = export_onnx(FirstOutput(model), path["onnx"], example, [output_name(model)])
            if "openvino" in options.formats:
                step("OpenVINO IR" + (" (fp16 weights)" if options.fp16 else ""))
                onnx_to_openvino(onnx_path, path["openvino"], fp16=options.fp16)
            if options.int8:
                step("INT8 (ORT dynamic)")
                quantize_onnx_int8(onnx_path, path["onnx-int8"])
                if "openvino" in options.formats:
                    step("INT8 (NNCF, calibration text)")
                    texts = options.calibration_texts or default_calibration_texts()
                    calib = calibration_inputs(tokenizer, texts, seq_len, options.token_type_ids)
                    with _nncf_quiet():
                        quantize_openvino_int8(path["openvino"], path["openvino-int8"], calib)
            checks, ov_precision = [], None
            if options.validate:
                step("numeric validation")
                checks, ov_precision = validate_export(model, tmp, options, space, len(tokenizer), [spec, *more_specs],
                                                       on_check)
                raise_failures(checks)
            measured = measure.measure_all(model, tmp, spec, arch, space, options, seq_len, step, more_specs)
            if "onnx" not in options.formats:
                for kind in ("onnx", "onnx-int8"):
                    path[kind].unlink(missing_ok=True)
            for p in path.values():
                if p.parent.is_dir() and not any(p.parent.iterdir()):
                    p.parent.rmdir()
            report = build_report(arch, space, spec, options, seq_len, weights, checks, measured, tmp, ov_precision)
            write_report(report, tmp)
            write_model_card(tmp, report)
    except OSError as exc:  # unwritable or full output location
        raise ExportError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return report
