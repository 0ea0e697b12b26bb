"""`search-task`: task-specific architecture search (KD-NAS) with a controller, proxy distillation from a fine-tuned
teacher and the device's latency table; the best student distilled on the whole task and exported.

Thin shell over `nasbert_deploy.tasksearch`; heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nasbert_deploy.cli.common import DeviceOpt, SeedOpt, SpaceName, ThreadsOpt, choice, console, set_threads
from nasbert_deploy.student.tasks import SAMPLE_TASK
from nasbert_deploy.tasksearch import DEFAULT_ETD_SPACE, START_INITS

app = typer.Typer()
ControllerName = choice("ControllerName", ("reinforce", "evolution"))  # tasksearch.controllers.CONTROLLERS
KdName = choice("KdName", ("auto", "kl", "mse"))  # auto, then student.task_training.KD_LOSSES
StartName = choice("StartName", START_INITS)


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


@app.command("search-task")
def search_task(
    task: Annotated[str, _opt("--task", help=f"Task file (.jsonl/.csv/.tsv: text, \\[text_pair], label; .jsonl of "
                              f"query/document pairs: retrieval) or {SAMPLE_TASK}.")],
    teacher_model: Annotated[Path, _opt("--teacher-model", help="Fine-tuned teacher classifier folder (its labels "
                                        "must cover the task's); on a retrieval task an encoder folder, or `default` "
                                        "(the offline MiniLM-L6).")],
    max_latency_ms: Annotated[float, _opt("--max-latency-ms", help="Hard latency budget (ms) on --device, from its "
                                          "latency table.")],
    out: Annotated[Path, _opt("--out", help="Output folder: search/ (state, cache), student/, export/, result.json; "
                              "run again to resume.")],
    device: DeviceOpt = None,
    max_params: Annotated[str | None, _opt("--max-params", help="Parameter budget (10M, 500K).")] = None,
    valid: Annotated[Path | None, _opt("--valid", help="Task file the final student is reported on (default: a "
                                       "stratified 10% of --task).")] = None,
    controller: Annotated[ControllerName, _opt("--controller", help="REINFORCE with a baseline, or regularised "
                                               "evolution.")] = ControllerName("reinforce"),
    evaluations: Annotated[int, _opt("--evaluations", min=1, max=10_000, help="Distinct architectures to evaluate "
                                     "(episodes are bounded at 4x this).")] = 30,
    latency_weight: Annotated[float, _opt("--latency-weight", min=-1.0, max=0.0, help="w in the reward "
                                          "accuracy * (latency / budget) ** w.")] = -0.07,
    proxy_rows: Annotated[int | None, _opt("--proxy-rows", min=8, help="Training rows of each proxy distillation "
                                            "(default 384; retrieval: pairs, default 2048).")] = None,
    proxy_heldout: Annotated[int | None, _opt("--proxy-heldout", min=4, help="Held-out training rows scoring each "
                                               "proxy (default 256; retrieval: queries ranked in the pool of their "
                                               "documents, default 1000).")] = None,
    proxy_epochs: Annotated[int, _opt("--proxy-epochs", min=1, max=50, help="Passes of each proxy distillation.")] = 2,
    rerank_top: Annotated[int, _opt("--rerank-top", min=0, max=100, help="Score the search's best K archs again "
                                    "under --rerank-seeds proxy seeds; the best mean goes to the final distillation "
                                    "(0: the search's best as it is).")] = 4,
    rerank_seeds: Annotated[int, _opt("--rerank-seeds", min=1, max=20, help="Proxy seeds of the rerank (the "
                                      "search's own included).")] = 3,
    rerank_agnostic: Annotated[bool, _opt("--rerank-agnostic/--no-rerank-agnostic", help="With a supernet start, "
                                          "the rerank also weighs NAS-BERT's task-agnostic picks within 1, 0.85 and "
                                          "0.7 x the budget.")] = True,
    rerank_arch: Annotated[list[str] | None, _opt("--rerank-arch", help="An architecture of your own (e.g. a "
                                                  "hand-designed baseline) the rerank weighs beside the search's; "
                                                  "repeatable.")] = None,
    final_epochs: Annotated[int, _opt("--final-epochs", min=1, max=100, help="Passes of the final distillation.")] = 3,
    final_lr: Annotated[float | None, _opt("--final-lr", min=1e-7, help="Learning rate of the final distillation "
                                           "(default 2e-4; after --corpus 1e-4, the recipe of docs/quality.md).")] = None,
    kd: Annotated[KdName, _opt("--kd", help="Distillation term of the final distillation: mse (of the logits) or kl "
                               "(tau^2 KL of the softened distributions); auto: mse with --corpus or --transfer (the "
                               "recipe of docs/quality.md), else kl (measured better there).")] = KdName("auto"),
    corpus: Annotated[Path | None, _opt("--corpus", help="Unlabelled text, one paragraph per line: the pick is "
                                        "distilled on it from --encoder (hidden states) before the final "
                                        "distillation, the recipe of docs/quality.md.")] = None,
    distill_steps: Annotated[int, _opt("--distill-steps", min=1, help="Steps of the --corpus distillation (32 "
                                       "paragraphs of 64 tokens each).")] = 1000,
    rerank_distilled: Annotated[bool, _opt("--rerank-distilled", help="Distil every rerank candidate on --corpus "
                                           "too and start the rerank's proxies from those encoders (minutes per "
                                           "candidate; ranks as the final recipe does).")] = False,
    distilled_dir: Annotated[Path | None, _opt("--distilled-dir", help="Folder for the --corpus encoders (default "
                                               "OUT/search/distilled); they do not depend on the task: searches of "
                                               "several tasks may share one, at the same time too.")] = None,
    transfer: Annotated[Path | None, _opt("--transfer", help="Unlabelled in-domain text, one paragraph per line, "
                                          "the teacher labels for the final distillation (KD-only rows).")] = None,
    transfer_rows: Annotated[int, _opt("--transfer-rows", min=0, help="Use this many --transfer lines (0: all).")] = 0,
    seq_len: Annotated[int, _opt("--seq-len", min=2, help="Sequence length of the latency budget.")] = 128,
    table: Annotated[Path | None, _opt("--table", help="Latency table (default: the device's, "
                                       "./profiles/NAME.json or the shipped one).")] = None,
    supernet: Annotated[Path | None, _opt("--supernet", help="Supernet folder (default: the shipped one); "
                                          "--init supernet only.")] = None,
    init: Annotated[StartName, _opt("--init", help="Where each student's weights start: its supernet path, or "
                                    "extracted from --encoder keeping its most important (etd-impt) or random "
                                    "(etd-rand) heads, neurons and dimensions.")] = StartName("supernet"),
    space: Annotated[SpaceName | None, _opt("--space", help=f"Search space of an --init etd-* search (default "
                                            f"{DEFAULT_ETD_SPACE}: the MiniLM-L6 teacher's geometry); a supernet "
                                            "search runs in its supernet's.")] = None,
    encoder: Annotated[Path | None, _opt("--encoder", help="Pre-trained encoder --init etd-* extracts from and "
                                         "--corpus distils from (default: the offline MiniLM-L6 teacher).")] = None,
    search_only: Annotated[bool, _opt("--search-only", help="Stop after the search (no final distillation, no "
                                      "export).")] = False,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 0,
    cache: Annotated[Path | None, _opt("--cache", help="Proxy-result cache file (default OUT/search/cache.json): "
                                       "searches of the same task, teacher, start and proxy settings reuse each "
                                       "other's scores (another --latency-weight, budget, controller or table); one "
                                       "search at a time; results of other settings in it are replaced.")] = None,
    force: Annotated[bool, _opt("--force", help="Start over: remove a previous search in --out.")] = False,
) -> None:
    """Search the best student for one task within a device budget (KD-NAS), distil it on the task, export it."""
    from nasbert_deploy.cli.retrieval_train import DEFAULT_TEACHER
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.search.run import parse_budget
    from nasbert_deploy.student.retrieval import is_retrieval_file
    from nasbert_deploy.tasksearch.proxy import ProxyConfig
    from nasbert_deploy.tasksearch.request import TaskSearchRequest, prepare
    from nasbert_deploy.tasksearch.retrieval import PROXY_HELDOUT, PROXY_ROWS
    from nasbert_deploy.teacher import default_teacher_path

    spec = device or load_device("cpu-ort")
    budget = parse_budget(max_latency_ms, max_params)
    retrieval = is_retrieval_file(task)
    rows, held = (PROXY_ROWS, PROXY_HELDOUT) if retrieval else (ProxyConfig.rows, ProxyConfig.heldout)
    proxy = ProxyConfig(rows=proxy_rows or rows, heldout=proxy_heldout or held, epochs=proxy_epochs, seed=seed)
    if retrieval:  # the encoder's similarity distributions are distilled (KL), the default teacher allowed
        kd = KdName("kl") if kd.value == "auto" else kd
        if str(teacher_model) == DEFAULT_TEACHER:
            teacher_model = default_teacher_path()
    request = TaskSearchRequest(task, teacher_model, spec, budget, out, valid, table, supernet, controller.value,
                                evaluations, latency_weight, proxy,
                                final_config(final_epochs, final_lr, kd.value, seed, corpus is not None, transfer is not None),
                                spec.batch_sizes[0], seq_len, search_only, force, seed, init=init.value,
                                space=None if space is None else space.value, encoder=encoder,
                                rerank_top=rerank_top, rerank_seeds=rerank_seeds,
                                rerank_agnostic=rerank_agnostic, rerank_archs=tuple(rerank_arch or ()), corpus=corpus,
                                distill_steps=distill_steps, distilled_dir=distilled_dir,
                                rerank_distilled=rerank_distilled, transfer=transfer, transfer_rows=transfer_rows,
                                cache=cache)
    prepared = prepare(request)  # every check before any work
    set_threads(threads)
    _run(request, prepared)


def final_config(epochs: int, lr: float | None, kd: str, seed: int, distilled: bool, transfer: bool) -> Any:
    """The final distillation's settings: `DEFAULT_FINAL` with these. `--kd auto`: the logits' MSE for the recipe of
    docs/quality.md (a corpus stage or a transfer set; `finetune --kd auto`'s, measured there), KL from the supernet's
    weights on the task's rows alone (docs/task-search.md: MSE 0.45 point lower there); after a corpus stage the
    learning rate is the recipe's 1e-4 (`benchmarks/bench_task_distill.py`)."""
    from dataclasses import replace

    from nasbert_deploy.tasksearch.request import DEFAULT_FINAL

    rate = lr if lr is not None else 1e-4 if distilled else DEFAULT_FINAL.lr
    term = kd if kd != "auto" else "mse" if distilled or transfer else "kl"
    return replace(DEFAULT_FINAL, epochs=epochs, seed=seed, lr=rate, kd=term)


def _run(request: Any, prepared: Any) -> None:
    from nasbert_deploy.cli.common import training_progress
    from nasbert_deploy.tasksearch.run import run_task_search

    def note(line: str) -> None:
        console.print(line, highlight=False, markup=False)

    with training_progress("training") as update:
        result = run_task_search(request, note, update, prepared=prepared)
    s = result["search"]
    console.print(f"searched {s['best_arch']} with {s['controller']}: {s['evaluations']} evaluations, {s['episodes']} "
                  f"episodes, {s['rejected_over_budget']} over-budget samples rejected, {s['wall_s']:.0f} s",
                  highlight=False)
    if "rerank" in result:
        rr = result["rerank"]
        console.print(f"picked {result['pick']} by the rerank of {len(rr['candidates'])} candidates under {rr['seeds']} "
                      "proxy seeds", highlight=False)
    if "export" in result:
        e = result["export"]
        measured = "n/a" if e["measured_ms"] is None else f"{e['measured_ms']:.2f}"
        console.print(f"exported to {request.out / 'export'}: predicted {e['predicted_ms']:.2f} ms, measured {measured} "
                      f"ms on {request.spec.name}; {_valid_score(result['final']['valid'])}",
                      highlight=False)
        for flag in e["latency_flags"]:
            console.print(f"[bold yellow]warning:[/] {flag}", highlight=False)
    console.print(f"result: {request.out / 'result.json'}", highlight=False)


def _valid_score(v: dict[str, Any]) -> str:
    return f"valid MRR {v['mrr']:.3f}" if "mrr" in v else f"valid accuracy {v['accuracy']:.3f}"
