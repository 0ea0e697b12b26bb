"""`search-task` from the library's side: check everything, search (resumable), distil the best on the whole task,
export it, write `out/result.json`.

    from nasbert_deploy.tasksearch.run import run_task_search
    result = run_task_search(TaskSearchRequest("train.jsonl", Path("teacher-ft"), load_device("cpu-ort"),
                                               Budget(5.0), Path("out")))
    result["search"]["best_arch"], result["final"]["valid"]["accuracy"], result["export"]["measured_ms"]

`result["start"]` says where the students' weights came from (`--init`; for ETD the encoder, the space and the
layer mapping of the best architecture); the final student's report and the export's weights record it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nasbert_deploy.fileio import write_json_atomic
from nasbert_deploy.tasksearch.request import STATE_DIR, TaskSearchRequest, prepare, request_dict

Note = Callable[[str], None]


def run_task_search(request: TaskSearchRequest, note: Note = print, progress: Any = None, on_step: Any = None,
                    prepared: Any = None) -> dict[str, Any]:
    """The whole task search; every input is checked before any work (`prepare`). Returns the result dict
    (also written to `out/result.json`)."""
    from nasbert_deploy.tasksearch.final import distill_final, export_student, summary
    from nasbert_deploy.tasksearch.loop import run_search
    from nasbert_deploy.tasksearch.start import load_start

    prepared = prepared or prepare(request)
    pred = prepared.check.costs(prepared.fastest)
    note(f"search space {prepared.space.name}, device {request.spec.name} (table {prepared.table_path}, "
         f"{_cpu(prepared.table)}); fastest arch {pred.latency_ms:.2f} ms, budget {request.budget.flags()}")
    if prepared.encoder_path is not None:
        note(f"students extracted from {prepared.encoder_path} ({request.init}) in space {prepared.space.name}")
    train = prepared.train  # the texts ETD's importance is scored on: a retrieval task's queries and documents
    texts = train.queries + train.documents if prepared.retrieval else train.texts
    start = load_start(request.init, prepared.supernet_dir, prepared.space, prepared.encoder_path, texts,
                       request.proxy.seed, request.out / STATE_DIR, note)
    distilled = corpus_start(request, prepared, start, note, progress)
    outcome = run_search(request, prepared, start, note)
    best = outcome.best
    note(f"best: {outcome.best_arch} (proxy {prepared.metric} {best['accuracy']:.3f}, {best['latency_ms']:.2f} ms predicted, "
         f"reward {best['reward']:.3f}); {outcome.evaluations} evaluations in {outcome.wall_s:.0f} s")
    best_arch, best_ms, reranked = outcome.best_arch, best["latency_ms"], None
    if request.reranks:
        from nasbert_deploy.tasksearch.rerank import rerank, rerank_candidates

        cands = rerank_candidates(request, prepared, [outcome.history], note)
        if request.rerank_distilled and distilled is not None:
            note(f"rerank: proxies start from the candidates distilled {request.distill_steps} steps on {request.corpus}")
            reranked = rerank(request, replace(prepared, start_key={**prepared.start_key, **distilled.key()}), distilled,
                              cands, request.rerank_seeds, note, cache=request.out / STATE_DIR / "cache-distilled.json")
        else:
            reranked = rerank(request, prepared, start, cands, request.rerank_seeds, note)
        best_arch, best_ms = reranked["best_arch"], reranked["candidates"][0]["latency_ms"]
        note(f"pick after the rerank: {best_arch} ({best_ms:.2f} ms predicted)")
    final_start = start if distilled is None else distilled
    record = final_start.record(best_arch)
    if "layer_map" in record:
        note(f"layer map of the best (student op < encoder layer): {record['layer_map']}")
    result: dict[str, Any] = {"request": request_dict(request), "labels": prepared.labels,
                              "train_rows": len(prepared.train), "valid_rows": len(prepared.valid),
                              "latency_table": str(prepared.table_path), "table_cpu": _cpu(prepared.table),
                              "start": record, "search": outcome.to_dict(), "pick": best_arch}
    if reranked is not None:
        result["rerank"] = reranked
    if prepared.retrieval:  # what the proxy trained with (batch and temperature set for pairs)
        from nasbert_deploy.tasksearch.retrieval import proxy_config

        result["retrieval_proxy"] = proxy_config(request.proxy).to_dict()
    if not request.search_only:
        final_key = {**prepared.start_key, **({"layer_map": record["layer_map"]} if "layer_map" in record else {}),
                     **({} if distilled is None else distilled.key())}
        if prepared.retrieval:
            from nasbert_deploy.tasksearch.retrieval import distill_final_retrieval, final_config

            final = distill_final_retrieval(best_arch, final_start, prepared.tokenizer, prepared.train, prepared.valid,
                                            request.teacher_model, request.out / "student", final_config(request.final),
                                            progress, note, final_key)
        else:
            final = distill_final(best_arch, final_start, prepared.tokenizer, prepared.train, prepared.valid,
                                  prepared.labels, request.teacher_model, request.out / "student", request.final,
                                  request.out / STATE_DIR, progress, note, final_key, prepared.transfer_texts)
        model = final.pop("model")
        result["final"] = {**final, "start": record}
        note(final_line(final["valid"]))
        held = ("the retrieval encoder (also in ../student)" if prepared.retrieval
                else "encoder of the task classifier in ../student")
        weights = {"init": "tasksearch", "start": record, "task": str(request.task),
                   "teacher_model": str(request.teacher_model), "note": held}
        if prepared.supernet_dir is not None:
            weights["supernet"] = str(prepared.supernet_dir)
        report = export_student(model, prepared.tokenizer, request.out / "export", request.spec,
                                request.budget.max_latency_ms, request.batch, request.seq_len, weights, on_step)
        result["export"] = summary(report, best_ms)
    write_json_atomic(request.out / "result.json", result)
    return result


def corpus_start(request: TaskSearchRequest, prepared: Any, start: Any, note: Note, progress: Any) -> Any:
    """With `request.corpus`: the start whose students are distilled on it first (`tasksearch.distilled`); else None."""
    if request.corpus is None:
        return None
    from nasbert_deploy.tasksearch.distilled import CorpusDistillation, DistilledStart, corpus_digest

    texts = prepared.corpus_texts or []
    identity = {"start": {**prepared.start_key, "supernet": str(prepared.supernet_dir)}, "corpus_sha": corpus_digest(texts),
                "teacher": str(prepared.distill_teacher.path)}
    return DistilledStart(start, prepared.distill_teacher, texts, CorpusDistillation(request.corpus, request.distill_steps),
                          request.distilled_dir or request.out / STATE_DIR / "distilled", identity, request.seed, note,
                          progress)


def final_line(v: dict[str, Any]) -> str:
    """The final student's valid-split scores in one line (classification or retrieval)."""
    if "mrr" in v:
        return (f"final student: valid MRR {v['mrr']:.3f}, recall@1 {v['recall@1']:.3f}, ranking loyalty@10 "
                f"{v['ranking_loyalty@10']:.3f} (teacher MRR {v['teacher_mrr']:.3f})")
    return (f"final student: valid accuracy {v['accuracy']:.3f}, macro-F1 {v['macro_f1']:.3f}, label loyalty "
            f"{v['label_loyalty']:.3f} (teacher {v['teacher_accuracy']:.3f})")


def _cpu(table: Any) -> str:
    manifest = getattr(table, "manifest", None) or {}
    return f"made on {manifest.get('cpu_model') or 'an unknown CPU'}"
