"""The `prune` command as one library call: checks, latency table, gates, pruning, fine-tuning, artefacts, report.

Phases and where a resumed run picks up (all under the sibling work folder `<out>.work/`, removed at the end):

1. latency table: loaded from `table_path` (default ./profiles/prune/NAME.json) or profiled and written there;
2. gate training: `<out>.work/gates.ckpt` (step checkpoints) -> `<out>.work/pruned/` (model with gates applied);
3. fine-tuning of the pruned model with distillation (`student.finetune.train_classifier`) -> `<out>.work/finetuned/`;
4. `<out>` written atomically: HF folder with remote code, ONNX, OpenVINO IR, `prune_report.json`, after
   numeric validation; latency of the unpruned and the pruned model measured side by side on the device.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasbert_deploy.devices import DeviceSpec
from nasbert_deploy.errors import TaskError
from nasbert_deploy.fileio import atomic_dir, write_json_atomic
from nasbert_deploy.model.loop import NoteFn, ProgressFn
from nasbert_deploy.prune.calibration import calibrated_selection, device_scale, timing_kwargs
from nasbert_deploy.prune.from_nasbert import NASBERT_TYPE, bert_view, to_pruned_bert
from nasbert_deploy.prune.gates import Selection, ffn_widths, head_counts
from nasbert_deploy.prune.latency import PruneLatencyTable, default_table_path, head_kind, table_name
from nasbert_deploy.prune.profile import PruneProfileSettings, holdout_summary, profile_table
from nasbert_deploy.prune.train import GateConfig, fit_selection, train_gates
from nasbert_deploy.qa.squad import QAData
from nasbert_deploy.student.tasks import TaskData

REPORT_NAME = "prune_report.json"
SELECTION_NAME = "selection.json"
Step = Callable[[str], None]


@dataclass(frozen=True)
class PruneRequest:
    model: Path
    train: TaskData | QAData
    valid: TaskData | QAData
    out: Path
    spec: DeviceSpec
    max_latency_ms: float
    gates: GateConfig = GateConfig()
    finetune_epochs: int = 1
    finetune_lr: float = 5e-5
    teacher_model: Path | None = None
    table_path: Path | None = None
    profile: PruneProfileSettings = PruneProfileSettings()
    calibrate: bool = True  # scale the table to this machine (one timing), then re-select while over / well under budget
    timing_kwargs: dict[str, Any] = field(default_factory=lambda: {"warmup": 5, "runs": 20, "min_time_s": 0.5})


def check_request(req: PruneRequest) -> dict[str, Any]:
    """Cheap checks before any work (model folder is a BERT classifier, teacher too, task labels known); the config."""
    from nasbert_deploy.prune.apply import check_supported
    from nasbert_deploy.prune.tasks import task_adapter
    from nasbert_deploy.qa.train import check_qa_folder, is_qa_config
    from nasbert_deploy.runtimes.base import require_available
    from nasbert_deploy.student.finetune import check_model_folder
    from nasbert_deploy.teacher import read_model_config

    qa = task_adapter(req.train, req.valid).kind == "extractive-qa"
    config = read_model_config(req.model, "--model", TaskError)
    if qa or is_qa_config(config):
        if not qa:
            raise TaskError(f"--model {req.model} is an extractive question-answering model; give it a SQuAD task file "
                            "(.json) or prune a sequence classifier instead")
        check_qa_folder(req.model)
        if req.teacher_model is not None:
            check_qa_folder(req.teacher_model, option="--teacher-model")
    else:
        check_model_folder(req.model, classifier=True)
        if req.teacher_model is not None:
            check_model_folder(req.teacher_model, classifier=True, option="--teacher-model")
    check_supported(config, req.model)
    if config.get("model_type") == NASBERT_TYPE:  # gated and pruned in its BERT form (`prune.from_nasbert`)
        config = {**config, **bert_view(config), "pooling": "mean"}
    if not qa:
        label2id = {str(v): int(k) for k, v in (config.get("id2label") or {}).items()}
        for data in (req.train, req.valid):
            data.label_ids(label2id)  # TaskError naming the labels the model's head does not know
    positions = int(config.get("max_position_embeddings") or 0)
    if positions and req.profile.seq_len > positions:
        raise TaskError(f"--seq-len {req.profile.seq_len} is longer than the model's {positions} positions "
                        f"(max_position_embeddings); give --seq-len {positions} or less")
    if req.max_latency_ms <= 0:
        raise TaskError(f"--max-latency-ms must be > 0, got {req.max_latency_ms:g}")
    require_available(req.spec)
    path = table_path(req, config)
    if path.is_file():  # a table already made: the budget is checked now, not after loading the model
        table = PruneLatencyTable.load(path)
        table.check_model(int(config["hidden_size"]), int(config["num_attention_heads"]), int(config["intermediate_size"]),
                          req.profile.clock)
        table.check_budget(req.max_latency_ms, int(config["num_hidden_layers"]), req.spec.name)
    return config


def table_path(req: PruneRequest, config: dict[str, Any]) -> Path:
    """`req.table_path`, else the default place of the device's table for this model's width."""
    s = req.profile
    name = table_name(req.spec.name, int(config["hidden_size"]), int(config["num_attention_heads"]),
                      int(config["intermediate_size"]), s.batch, s.seq_len, s.clock, head_kind(config))
    return req.table_path or default_table_path(name)


def get_table(req: PruneRequest, model_config: Any, progress: Callable[[str, int, int], None] | None,
              note: NoteFn | None) -> tuple[PruneLatencyTable, Path]:
    """The device's pruning table for this model's width: loaded if it exists, else profiled and saved."""
    from nasbert_deploy.profiling.host import cpu_model

    hidden, heads, ffn = int(model_config.hidden_size), int(model_config.num_attention_heads), int(model_config.intermediate_size)
    path = table_path(req, model_config.to_dict())
    if path.is_file():
        table = PruneLatencyTable.load(path)
        table.check_model(hidden, heads, ffn, req.profile.clock)
        made_on = table.manifest.get("cpu_model")
        if note and made_on and made_on != cpu_model():
            fix = "--calibrate scales it to this machine by one timing of the unpruned model; " if req.calibrate else ""
            note(f"the latency table {path} was made on {made_on!r}, this machine is {cpu_model()!r}: its figures may "
                 f"not hold here ({fix}delete it, or pass another --table, to profile this machine)")
        return table, path
    if note:
        note(f"profiling the pruning latency table for {req.spec.name} -> {path} (a few minutes, once per device and width)")
    table = profile_table(model_config, req.spec, req.profile, progress)
    table.save(path)
    return table, path


def prune(req: PruneRequest, progress: ProgressFn | None = None, note: NoteFn | None = None,
          profile_progress: Callable[[str, int, int], None] | None = None, step: Step | None = None) -> dict[str, Any]:
    """Run every phase (see the module doc); returns the report (also written to `<out>/prune_report.json`)."""

    from nasbert_deploy.model.loop import checkpoint_dir
    from nasbert_deploy.model.pruned_bert import register
    from nasbert_deploy.prune.apply import kept_summary, prune_model
    from nasbert_deploy.prune.gates import GatedModel
    from nasbert_deploy.prune.tasks import task_adapter
    from nasbert_deploy.student.task_training import FinetuneConfig

    say = step or (lambda _s: None)
    check_request(req)
    register()
    task = task_adapter(req.train, req.valid)
    model, tokenizer = task.load(req.model)
    if model.config.model_type == NASBERT_TYPE:
        model = to_pruned_bert(model)
        if note:
            note("NAS-BERT classifier carried over into its BERT form (mean pooling, embedding projection) for pruning")
    heads0, width0 = head_counts(model)[0], ffn_widths(model)[0]
    layers = len(head_counts(model))
    table, table_path = get_table(req, model.config, profile_progress, note)
    table.check_budget(req.max_latency_ms, layers, req.spec.name)
    gcfg = req.gates
    teacher, t_tok = (model, tokenizer) if req.teacher_model is None else task.load(req.teacher_model)
    task.bind(model, tokenizer, teacher, t_tok)
    say("unpruned model on the valid split")
    unpruned_valid = task.logits(model, tokenizer, "valid", gcfg.max_len)  # loyalty is against the input model

    @functools.cache
    def teacher_train_logits() -> Any:  # only when gates or fine-tuning still have to train
        say("teacher logits on the training rows")
        return task.logits(teacher, t_tok, "train", gcfg.max_len, teacher=True)

    work = req.out.with_name(req.out.name + ".work")
    key = {"model": str(req.model), "task": req.train.source, "device": req.spec.name, "table": table.manifest["name"],
           "teacher_model": None if req.teacher_model is None else str(req.teacher_model)}
    pruned_dir, tuned_dir = work / "pruned", work / "finetuned"
    if (pruned_dir / SELECTION_NAME).is_file():
        import json

        saved = json.loads((pruned_dir / SELECTION_NAME).read_text())
        sel, gate_report = Selection.from_dict(saved["selection"]), saved["gates"]
        if note:
            note(f"resuming after gate training ({pruned_dir})")
    else:
        import copy

        qa = task.kind == "extractive-qa"
        scale = device_scale(model, table, req, layers, qa, work, say) if req.calibrate else None
        target = req.max_latency_ms if scale is None else scale["target_ms"]
        work.mkdir(parents=True, exist_ok=True)  # after the checks of `device_scale`: an infeasible budget leaves nothing
        if note and scale is not None:
            note(f"latency table scaled x{scale['factor']:.3f} to this machine (unpruned model measured "
                 f"{scale['unpruned_measured_ms']:.2f} ms, table {scale['unpruned_predicted_ms']:.2f} ms): the gates "
                 f"aim at {target:.2f} table ms for the {req.max_latency_ms:g} ms budget")
            if scale["unpruned_measured_ms"] <= req.max_latency_ms:
                note(f"the unpruned model is within the {req.max_latency_ms:g} ms budget on this machine already: "
                     "the gates prune as little as they can (give a smaller budget for a faster model)")
        teacher_copy = copy.deepcopy(teacher).eval() if gcfg.hidden_weight > 0 else None
        gated = GatedModel(copy.deepcopy(model), init=gcfg.gate_init)
        data = task.gate_data(tokenizer, teacher_train_logits(), gcfg)
        gate_report = train_gates(gated, data, table, target, gcfg, checkpoint_dir(work / "gates"), key,
                                  teacher_copy, progress, note)
        sel = fit_selection(gated, table, target)
        gated.remove_hooks()
        if scale is not None:
            gate_report["device_scale"] = scale
            sel, gate_report["calibration"] = calibrated_selection(gated, sel, table, req, qa, say, target)
        pruned = prune_model(gated.model, sel)
        with atomic_dir(pruned_dir) as tmp:
            pruned.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / SELECTION_NAME, {"selection": sel.to_dict(), "gates": gate_report})
        shutil.rmtree(checkpoint_dir(work / "gates"), ignore_errors=True)
    pruned, _ = task.load(pruned_dir)
    after_gates = task.score(task.logits(pruned, tokenizer, "valid", gcfg.max_len), unpruned_valid)
    ft_report = None
    if req.finetune_epochs > 0:
        if not (tuned_dir / "config.json").is_file():
            say("fine-tuning the pruned model")
            fcfg = FinetuneConfig(epochs=req.finetune_epochs, batch_size=gcfg.batch_size, max_len=gcfg.max_len,
                                  lr=req.finetune_lr, lam=gcfg.distill_weight, temperature=gcfg.temperature, seed=gcfg.seed)
            task.finetune(pruned, tokenizer, tuned_dir, fcfg, teacher_train_logits(), progress,
                          {**key, "phase": "prune-finetune"}, note)
        pruned, _ = task.load(tuned_dir)
        ft_report = json_or_none(tuned_dir / "finetune_report.json")
    final = after_gates
    if req.finetune_epochs > 0:
        final = task.score(task.logits(pruned, tokenizer, "valid", gcfg.max_len), unpruned_valid)
    unpruned_eval = task.score(unpruned_valid)
    factor = float((gate_report.get("device_scale") or {}).get("factor", 1.0))
    report = _finish(req, model, pruned, tokenizer, table, table_path, sel, layers, say, task.kind == "extractive-qa",
                     factor)
    report.update({
        "model": str(req.model), "task": req.train.source, "valid": req.valid.source, "task_kind": task.kind,
        "labels": task.labels,
        "teacher_model": key["teacher_model"], "gates": gate_report, "gate_config": gcfg.to_dict(),
        "finetune": ft_report, "finetune_epochs": req.finetune_epochs,
        "kept": kept_summary(sel, heads0, width0), "selection": sel.to_dict(),
        "quality": {"unpruned": unpruned_eval, "after_gates": after_gates, "pruned": final},
    })
    with atomic_dir(req.out) as tmp:
        for f in Path(report.pop("_staging")).iterdir():
            shutil.move(str(f), tmp / f.name)
        write_json_atomic(tmp / REPORT_NAME, report)
    shutil.rmtree(work, ignore_errors=True)
    return report


def json_or_none(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


def _finish(req: PruneRequest, model: Any, pruned: Any, tokenizer: Any, table: PruneLatencyTable, table_path: Path,
            sel: Selection, layers: int, say: Step, qa: bool = False, factor: float = 1.0) -> dict[str, Any]:
    """Artefacts into a staging folder beside `out`, validation, side-by-side latency; the report's deployment part."""
    from nasbert_deploy.export.report import machine
    from nasbert_deploy.prune.artefacts import latency_rows, measure_side_by_side, validate_artefacts, write_artefacts

    staging = req.out.with_name(req.out.name + ".work") / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    say("ONNX and OpenVINO export")
    write_artefacts(pruned, tokenizer, staging, qa)
    say("numeric validation")
    checks = validate_artefacts(pruned, staging, qa=qa)
    say(f"latency on {req.spec.name}")
    s = req.profile
    measured = measure_side_by_side({"unpruned": model, "pruned": pruned}, req.spec, s.batch, s.seq_len, timing_kwargs(req),
                                    {"pruned": staging}, qa)
    shapes = {"unpruned": ([table.heads] * layers, [table.ffn] * layers), "pruned": (sel.head_counts, sel.widths)}
    params = {"unpruned": sum(p.numel() for p in model.parameters()), "pruned": sum(p.numel() for p in pruned.parameters())}
    return {
        "_staging": str(staging),
        "device": req.spec.name,
        "max_latency_ms": req.max_latency_ms,
        "batch": s.batch,
        "seq_len": s.seq_len,
        "clock": s.clock,
        "latency": latency_rows(table, measured, shapes, req.max_latency_ms, factor),
        "table": {"path": str(table_path), "name": table.manifest["name"], "scale": table.scale, "offset_ms": table.offset_ms,
                  "holdout": holdout_summary(table)},
        "validation": {"checks": len(checks), "passed": sum(c.passed for c in checks),
                       "max_abs_diff": {n: max(c.max_abs_diff for c in checks if c.runtime == n)
                                        for n in sorted({c.runtime for c in checks})}},
        "params": params,
        "machine": machine(),
    }


def summary_rows(report: dict[str, Any]) -> dict[str, Any]:
    """The printed summary: one row per figure."""
    lat, q = report["latency"], report["quality"]
    rows: dict[str, Any] = {}
    for name in ("unpruned", "pruned"):
        m = lat["models"][name]
        rows[f"{name} latency ms (predicted / measured)"] = f"{m['predicted_ms']:.2f} / {m['measured_ms']:.2f}"
    if lat.get("table_factor", 1.0) != 1.0:
        rows["latency table scaled to this machine"] = f"x{lat['table_factor']:.3f} (one timing of the unpruned model)"
    if "measured_speedup" in lat:
        rows["measured speed-up"] = f"{lat['measured_speedup']:.2f}x (budget {report['max_latency_ms']:g} ms)"
    rows["heads per layer"] = " ".join(map(str, report["kept"]["heads_per_layer"]))
    rows["FFN neurons per layer"] = " ".join(map(str, report["kept"]["ffn_per_layer"]))
    rows["params (unpruned -> pruned)"] = f"{report['params']['unpruned']:,} -> {report['params']['pruned']:,}"
    for name in ("unpruned", "after_gates", "pruned"):
        if report.get("task_kind") == "extractive-qa":
            rows[f"valid EM / F1 ({name.replace('_', ' ')})"] = f"{q[name]['exact']:.2f} / {q[name]['f1']:.2f}"
        else:
            rows[f"valid accuracy ({name.replace('_', ' ')})"] = f"{q[name]['accuracy']:.4f}"
    if report.get("task_kind") == "extractive-qa":
        rows["answer loyalty / F1 to unpruned"] = f"{q['pruned']['answer_loyalty']:.4f} / {q['pruned']['f1_to_teacher']:.4f}"
    else:
        rows["label loyalty / probability loyalty"] = (f"{q['pruned']['label_loyalty']:.4f} / "
                                                       f"{q['pruned']['probability_loyalty']:.4f}")
    rows["validation"] = f"{report['validation']['passed']}/{report['validation']['checks']} checks passed"
    for flag in lat["flags"]:
        rows["flag"] = flag
    return rows
