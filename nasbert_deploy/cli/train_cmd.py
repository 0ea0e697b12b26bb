"""`distill`, `finetune`, `finetune-teacher`, `evaluate`: train and score standalone students.

Thin shell over `nasbert_deploy.student.distill` / `.finetune`; heavy imports happen inside commands.
`--task pydoc-sample` (the default, `tasks.SAMPLE_TASK`) is the shipped pydoc-sections sample (300 train / 100 valid rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import (
    EvalRuntimeName,
    SeedOpt,
    SpaceName,
    StudentInitName,
    ThreadsOpt,
    TrainDevice,
    choice,
    console,
    print_report,
    set_threads,
)
from nasbert_deploy.cli.training_runs import print_finetune, processes, run_qa, squad_task
from nasbert_deploy.errors import TaskError
from nasbert_deploy.student.tasks import SAMPLE_TASK

app = typer.Typer()


def _opt(*names: str, help: str | None = None, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


TaskOpt = Annotated[str, _opt("--task", help="Task file (.jsonl/.csv/.tsv: text, \\[text_pair], label; or .jsonl "
                                f"query/document pairs: retrieval) or {SAMPLE_TASK}.")]
ValidFractionOpt = Annotated[float, _opt("--valid-fraction", min=0.01, max=0.9,
                                         help="Stratified share held out when no --valid.")]
BatchOpt = Annotated[int, _opt("--batch-size", min=1, help="Examples per step and process (under torchrun each "
                                "process takes this many, so a step sees processes x this many).")]
MaxLenOpt = Annotated[int, _opt("--max-len", min=2, help="Tokens per example (longer ones are truncated).")]
LrOpt = Annotated[float, _opt("--lr", min=0.0, help="AdamW learning rate.")]
PoolingName = choice("PoolingName", ("auto", "cls", "mean"))  # student.finetune.POOLINGS (torch-free here)
KdName = choice("KdName", ("auto", "kl", "mse"))  # auto, then student.task_training.KD_LOSSES
RetrievalBatchOpt = Annotated[int | None, _opt("--batch-size", min=1, help="Examples per step and process (default 16; "
                                               "32 query/document pairs on a retrieval task, whose negatives are the "
                                               "batch's other documents).")]
EpochsOpt = Annotated[int, _opt("--epochs", min=1, help="Passes over the training rows.")]
ForceOpt = Annotated[bool, _opt("--force", help="Replace an existing, non-empty --out folder.")]
DeviceOpt = Annotated[TrainDevice, _opt("--device", help="Where to train: a GPU when torch sees one (auto), the CPU, "
                                        "or a GPU (cuda; under torchrun one per process).")]


@app.command("distill")
def distill_cmd(
    out: Annotated[Path, _opt("--out", help="Output HF folder (model, tokenizer, distill_report.json).")],
    corpus: Annotated[Path, _opt("--corpus", help="Unlabelled text, one paragraph per line.")],
    arch: Annotated[str | None, _opt("--arch", help="Arch string of the student.")] = None,
    from_export: Annotated[Path | None, _opt("--from-export", help="Start from an exported NAS-BERT HF folder, or a "
                                             "BERT-family encoder folder (e.g. `truncate`'s), converted exactly.")] = None,
    teacher: Annotated[Path | None, _opt("--teacher", help="Teacher HF folder (default: offline MiniLM-L6), or a "
                                                "fine-tuned NAS-BERT teacher from `finetune` (task-specific stage).")] = None,
    supernet: Annotated[Path | None, _opt("--supernet", help="Supernet checkpoint (default: the shipped one).")] = None,
    init: Annotated[StudentInitName, _opt("--init", help="Start --arch from supernet weights, random ones, or the "
                                          "teacher's most important (etd-impt) or random (etd-rand) units.")]
    = StudentInitName("supernet"),
    space: Annotated[SpaceName, _opt("--space", help="Search space for --init random / etd-*.")] = SpaceName("minilm"),
    valid_corpus: Annotated[Path | None, _opt("--valid-corpus", help="Held-out text for the reported losses.")] = None,
    heldout_every: Annotated[int, _opt("--heldout-every", min=0, help="Also score --valid-corpus at step 0 and every N "
                                       "steps: the report's heldout_curve (0 = only at the end).")] = 0,
    steps: Annotated[int, _opt("--steps", min=1, help="Optimizer steps (raise it and rerun to continue training).")] = 2000,
    batch_size: BatchOpt = 16,
    seq_len: Annotated[int, _opt("--seq-len", min=2, help="Tokens per paragraph (longer ones are truncated).")] = 64,
    lr: LrOpt = 3e-4,
    hidden_weight: Annotated[float, _opt("--hidden-weight", min=0.0, help="Weight of the last-hidden-state MSE.")] = 1.0,
    block_weight: Annotated[float, _opt("--block-weight", min=0.0,
                                        help="Weight of the block-boundary MSE losses (0 = off).")] = 0.0,
    prediction_weight: Annotated[float, _opt("--prediction-weight", min=0.0,
                                             help="Weight of the MLM-head KL loss (teachers with an MLM head).")] = 0.0,
    temperature: Annotated[float, _opt("--temperature", min=0.01, help="Temperature of the prediction-layer loss.")] = 1.0,
    embedding_weight: Annotated[float, _opt("--embedding-weight", min=0.0, help="Weight of 1 - cosine between the "
                                            "student's and the teacher's mean-pooled sentence embeddings.")] = 0.0,
    similarity_weight: Annotated[float, _opt("--similarity-weight", min=0.0, help="Weight of the in-batch similarity "
                                             "KL of sentence embeddings (what retrieval ranks by).")] = 0.0,
    similarity_temperature: Annotated[float, _opt("--similarity-temperature", min=0.001,
                                                  help="Temperature of the similarity KLs.")] = 0.05,
    query_weight: Annotated[float, _opt("--query-weight", min=0.0, help="Weight of the query-to-document similarity "
                                        "KL: each paragraph's first --query-len tokens (a query) ranked against the "
                                        "rest of every paragraph of the batch (documents), as retrieval ranks.")] = 0.0,
    query_len: Annotated[int, _opt("--query-len", min=3, help="Tokens of the query head ([CLS] ... [SEP]); "
                                   "paragraphs under this + 4 tokens are not cut.")] = 12,
    checkpoint_every: Annotated[int, _opt("--checkpoint-every", min=1, help="Steps between resumable checkpoints.")] = 200,
    layer_map: Annotated[str | None, _opt("--layer-map", help="Teacher layer per block (3,5,6; 0 = no block loss; the "
                                          "last is what the output regresses) or the file `layer-map` writes; turns "
                                          "a --block-weight of 0 into 1.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = TrainDevice("auto"),
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Distil a standalone student from the teacher on unlabelled text (resumable; torchrun for several processes)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.layermap.maps import layer_map_for
    from nasbert_deploy.model.teacher_view import load_any_teacher
    from nasbert_deploy.space import get_space
    from nasbert_deploy.student.distill import DistillConfig, build_student, distill
    from nasbert_deploy.supernet.teacher_cache import read_paragraphs
    from nasbert_deploy.teacher import load_teacher, resolve_teacher_path

    check_output(out, "dir", force)
    if heldout_every and valid_corpus is None:
        from nasbert_deploy.errors import CorpusError

        raise CorpusError("--heldout-every scores held-out text: give --valid-corpus too")
    set_threads(threads)
    mapped = layer_map_for(layer_map, arch, from_export, teacher) if layer_map is not None else None
    cfg = DistillConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, hidden_weight=hidden_weight,
                        intermediate_weight=block_weight, prediction_weight=prediction_weight, temperature=temperature,
                        embedding_weight=embedding_weight, similarity_weight=similarity_weight,
                        similarity_temperature=similarity_temperature, query_weight=query_weight, query_len=query_len,
                        checkpoint_every=checkpoint_every, seed=seed,
                        layer_map=mapped)
    texts = read_paragraphs(corpus)
    held_out = read_paragraphs(valid_corpus) if valid_corpus else None
    resolve_teacher_path(teacher)  # a bad --teacher folder fails before the student is built
    if init.value.startswith("etd-"):
        from nasbert_deploy.errors import CheckpointError

        if arch is None or from_export is not None:
            raise CheckpointError("--init etd-* extracts an --arch from the teacher; give --arch, not --from-export")
        get_space(space.value).parse(arch)  # ArchError before the teacher is loaded
    with processes(device.value) as run:
        if mapped is not None and run.note:
            run.note(f"distillation layer map {','.join(map(str, mapped))} (block weight {cfg.intermediate_weight:g})",
                     highlight=False)
        if init.value.startswith("etd-"):
            from nasbert_deploy.student.extraction import etd_student, extraction_summary

            assert arch is not None
            t = load_teacher(teacher)
            with run.progress("scoring the teacher's units") as update:  # every rank extracts the same student
                student = etd_student(arch, get_space(space.value), t, texts, init.value, seed=seed,
                                      progress=None if update is None else lambda n, k: update(n, k, {}))
            meta = extraction_summary(student)
            if run.note:
                run.note(f"extracted from the teacher ({init.value}): {meta['layer_map']}")
        else:
            random_space = get_space(space.value) if init.value == "random" else None
            student = build_student(arch, from_export, supernet, init.value, random_space)
            t, meta = load_any_teacher(teacher), {}  # a NAS-BERT teacher too: task-specific distillation
        with run.progress("distilling") as update:
            report = distill(student, t, texts, out, cfg, held_out, update, metadata=meta, note=run.note, device=run.device,
                             heldout_every=heldout_every)
    if run.rank:
        return
    rows = {k: report[k] for k in ("arch", "params", "init", "steps", "train_s", "train_loss_last")}
    if run.world > 1:
        rows["processes"] = run.world
    if mapped is not None:
        rows["layer map"] = ",".join(map(str, report["distill_layer_map"]))
    names = {"hidden": "held-out hidden MSE", "blocks": "held-out block MSE", "hidden_fvu": "held-out unexplained variance"}
    rows.update({names.get(k, k): v for k, v in report.get("heldout", {}).items()})
    print_report(f"distilled -> {out}", rows)


@app.command("finetune")
def finetune_cmd(
    model: Annotated[Path, _opt("--model", help="Encoder HF folder (e.g. from `distill`).")],
    out: Annotated[Path, _opt("--out", help="Output classifier folder.")],
    task: TaskOpt = SAMPLE_TASK,
    valid: Annotated[Path | None, _opt("--valid", help="Validation task file (default: split off --valid-fraction).")] = None,
    valid_fraction: ValidFractionOpt = 0.1,
    teacher_model: Annotated[Path | None, _opt("--teacher-model", help="Fine-tuned teacher classifier for task KD; on a "
                                               "retrieval task an encoder folder, or `default` (the offline MiniLM-L6).")] = None,
    transfer: Annotated[Path | None, _opt("--transfer", help="Unlabelled in-domain text, one paragraph per line, "
                                          "that the teacher labels for extra KD-only rows (needs --teacher-model).")] = None,
    transfer_rows: Annotated[int, _opt("--transfer-rows", min=0, help="Use this many --transfer lines (0: all).")] = 0,
    lam: Annotated[float, _opt("--lambda", min=0.0, max=1.0, help="KD weight: (1-lambda) CE + lambda KD "
                               "(retrieval: InfoNCE for CE).")] = 0.5,
    temperature: Annotated[float | None, _opt("--temperature", min=0.01, help="KD temperature (default 1 for "
                                              "logits; 0.05 for a retrieval task's cosine similarities).")] = None,
    kd: Annotated[KdName, _opt("--kd", help="Distillation term: mse (of the logits; --temperature unused) or kl (tau^2 "
                               "KL of the softened distributions); auto: mse, kl for SQuAD.")] = KdName("auto"),
    pooling: Annotated[PoolingName, _opt("--pooling", help="For a plain BERT encoder (e.g. `truncate`'s): mean "
                                         "(auto's pick) converts it exactly under the students' mean-pooling head, so "
                                         "it trains and exports as they do; cls: its own [CLS]-pooler classifier. "
                                         "NAS-BERT and pruned models keep their own head.")] = PoolingName("auto"),
    head_from_teacher: Annotated[bool, _opt("--head-from-teacher", help="Start the classifier from --teacher-model's "
                                            "(after `distill --teacher` from that fine-tuned teacher).")] = False,
    epochs: EpochsOpt = 5,
    batch_size: RetrievalBatchOpt = None,
    max_len: MaxLenOpt = 128,
    lr: LrOpt = 2e-4,
    seed: SeedOpt = 0,
    device: DeviceOpt = TrainDevice("auto"),
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Fine-tune a student on a labelled task or retrieval pairs, optionally distilling a fine-tuned teacher
    (resumable; torchrun)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune, transfer_texts
    from nasbert_deploy.student.retrieval import is_retrieval_file
    from nasbert_deploy.student.tasks import task_splits

    check_output(out, "dir", force)
    if is_retrieval_file(task):
        from nasbert_deploy.cli import retrieval_train

        retrieval_train.check_options({"--transfer": transfer is not None, "--head-from-teacher": head_from_teacher,
                                       "--kd mse": kd.value == "mse", "--pooling cls": pooling.value == "cls"})
        set_threads(threads)
        retrieval_train.run(model, task, valid, valid_fraction, out, dict(
            epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, lam=lam, temperature=temperature, seed=seed),
            teacher_model, device.value, student=True)
        return
    batch_size, temperature = batch_size or 16, temperature or 1.0
    if transfer is not None and teacher_model is None:
        raise TaskError("--transfer needs --teacher-model: the teacher labels the transfer set")
    set_threads(threads)
    if kd.value != "auto" and teacher_model is None:
        raise TaskError(f"--kd {kd.value} is the distillation term: it needs --teacher-model")
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, lam=lam, temperature=temperature,
                         seed=seed, kd=_kd_term(kd.value, task, teacher_model))
    if squad_task(task):
        if transfer is not None:
            raise TaskError("--transfer is for single-text classification; a SQuAD task trains on its questions only")
        run_qa(model, task, valid, valid_fraction, out, cfg, teacher_model, device.value, fresh=None)
        return
    train, val = task_splits(task, valid, valid_fraction)
    extra = None if transfer is None else transfer_texts(transfer, train, val, transfer_rows, seed)
    with processes(device.value) as run, run.progress("fine-tuning") as update:
        report = finetune(model, train, val, out, cfg, teacher_model, update, note=run.note, device=run.device,
                          transfer=extra, pooling=pooling.value, head_from_teacher=head_from_teacher)
    if run.rank == 0:
        print_finetune(f"fine-tuned -> {out}", report)


@app.command("finetune-teacher")
def finetune_teacher_cmd(
    out: Annotated[Path, _opt("--out", help="Output teacher classifier folder.")],
    teacher: Annotated[Path | None, _opt("--teacher", help="Any local HF encoder (default: offline MiniLM-L6).")] = None,
    task: TaskOpt = SAMPLE_TASK,
    valid: Annotated[Path | None, _opt("--valid", help="Validation task file.")] = None,
    valid_fraction: ValidFractionOpt = 0.1,
    epochs: EpochsOpt = 3,
    batch_size: RetrievalBatchOpt = None,
    max_len: MaxLenOpt = 128,
    lr: LrOpt = 5e-5,
    pooling: Annotated[PoolingName, _opt("--pooling", help="cls: the encoder's own classifier ([CLS] pooler); mean: "
                                         "the encoder converted exactly under the students' mean-pooling head, as "
                                         "sentence encoders are trained; auto: mean for BERT encoders, else cls.")
                       ] = PoolingName("auto"),
    seed: SeedOpt = 0,
    device: DeviceOpt = TrainDevice("auto"),
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
) -> None:
    """Fine-tune the teacher encoder as a sequence classifier, or on retrieval pairs (the teacher for task
    distillation; torchrun)."""
    from nasbert_deploy.fileio import check_output
    from nasbert_deploy.student.finetune import FinetuneConfig, finetune_teacher
    from nasbert_deploy.student.retrieval import is_retrieval_file
    from nasbert_deploy.student.tasks import task_splits

    check_output(out, "dir", force)
    set_threads(threads)
    if is_retrieval_file(task):
        from nasbert_deploy.cli import retrieval_train
        from nasbert_deploy.teacher import resolve_teacher_path

        retrieval_train.check_options({"--pooling cls": pooling.value == "cls"})
        retrieval_train.run(resolve_teacher_path(teacher), task, valid, valid_fraction, out, dict(
            epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, lam=0.0, temperature=None, seed=seed),
            None, device.value, student=False)
        return
    batch_size = batch_size or 16
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr, seed=seed)
    if squad_task(task):
        from nasbert_deploy.teacher import resolve_teacher_path

        run_qa(resolve_teacher_path(teacher), task, valid, valid_fraction, out, cfg, None, device.value, fresh=True)
        return
    train, val = task_splits(task, valid, valid_fraction)
    with processes(device.value) as run, run.progress("fine-tuning teacher") as update:
        report = finetune_teacher(teacher, train, val, out, cfg, update, note=run.note, pooling=pooling.value,
                                  device=run.device)
    if run.rank == 0:
        print_finetune(f"fine-tuned teacher -> {out}", report)


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, _opt("--model", help="Fine-tuned classifier folder.")],
    task: Annotated[str, _opt("--task", help=f"Labelled task file, or {SAMPLE_TASK} (its valid split).")] = SAMPLE_TASK,
    teacher_model: Annotated[Path | None, _opt("--teacher-model", help="Fine-tuned teacher: adds loyalty scores.")] = None,
    runtime: Annotated[EvalRuntimeName, _opt("--runtime", help="PyTorch, the ONNX/OpenVINO export, or an export "
                                             "folder's INT8 files (*-int8).")] = EvalRuntimeName("torch"),
    batch_size: Annotated[int, _opt("--batch-size", min=1, help="Examples per forward pass.")] = 64,
    max_len: MaxLenOpt = 128,
    json_out: Annotated[Path | None, _opt("--json", help="Also write the report as JSON.")] = None,
    threads: ThreadsOpt = 0,
    force: Annotated[bool, _opt("--force", help="Replace an existing --json file.")] = False,
    train: Annotated[Path | None, _opt("--train", help="Training file of a linear probe: scores an encoder's frozen "
                                       "embeddings (no task head needed; --teacher-model is then an encoder too).")] = None,
) -> None:
    """Accuracy, macro-F1 and, against a teacher, label and probability loyalty; frozen-embedding probe and
    retrieval scores (recall@k, MRR, ranking loyalty) for encoders without a task head."""
    from nasbert_deploy.fileio import check_output, write_json_atomic
    from nasbert_deploy.student.finetune import evaluate
    from nasbert_deploy.student.retrieval import is_retrieval_file
    from nasbert_deploy.student.tasks import eval_task

    if json_out is not None:
        check_output(json_out, "file", force, option="--json")
    set_threads(threads)
    if train is not None or is_retrieval_file(task):
        from nasbert_deploy.student.quality import encoder_quality

        report = encoder_quality(model, task, train, teacher_model, runtime.value, max_len, threads or 1)
        rows = {k: v for k, v in report.items() if v is not None and k not in ("model", "task", "teacher", "kind")}
        print_report(f"{model} on {task} ({runtime.value}, frozen embeddings)", rows)
        if json_out is not None:
            write_json_atomic(json_out, report)
        _record(model, report, task, runtime.value, train)
        return
    if squad_task(task):
        from nasbert_deploy.qa.squad import load_squad

        if runtime.value.endswith("-int8"):
            raise TaskError(f"--runtime {runtime.value} scores classifiers and encoders; extractive QA runs on torch, "
                            "onnxruntime or openvino")
        from nasbert_deploy.qa.train import evaluate_qa

        report = evaluate_qa(model, load_squad(task), teacher_model, max_len, runtime.value)
        print_report(f"{model} on {task} ({runtime.value}, SQuAD {'v2.0' if report['squad_v2'] else 'v1.1'})", report)
        if json_out is not None:
            write_json_atomic(json_out, report)
        return
    data = eval_task(task)
    report = evaluate(model, data, teacher_model, runtime.value, batch_size, max_len)
    rows = {k: v for k, v in report.items() if v is not None and k != "labels"}
    print_report(f"{model} on {data.source} ({runtime.value})", rows)
    if json_out is not None:
        write_json_atomic(json_out, report)
    _record(model, {**report, "teacher": str(teacher_model) if teacher_model else None}, data.source or task, runtime.value)


def _kd_term(kd: str, task: str | Path, teacher_model: Path | None) -> str:
    """`--kd auto`: logit MSE for classification (docs/quality.md §6), KL for SQuAD and without a teacher."""
    return kd if kd != "auto" else "mse" if teacher_model is not None and not squad_task(task) else "kl"


def _record(model: Path, report: dict[str, Any], task: str, runtime: str, train: Path | None = None) -> None:
    """An export folder's model card gets the scores (`card.record_evaluation`); other folders are left alone."""
    from nasbert_deploy.export.card import record_evaluation

    card = record_evaluation(model, report, task, runtime, train)
    if card is not None:
        console.print(f"scores added to the model card {card}", highlight=False, soft_wrap=True)
