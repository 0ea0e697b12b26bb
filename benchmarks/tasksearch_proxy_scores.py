"""Score given architectures under `search-task`'s proxy, the way its rerank does (same proxy seeds, same cache).

Does the proxy rank a hand-designed student below the search's pick? Run it with the search's own folder, so the
cached proxy results and the teacher's logits are reused and every arch sees the same splits:

    python benchmarks/tasksearch_proxy_scores.py --task ../shared/tasks/debian-sections/train.jsonl \
        --teacher-model checkpoints/teacher-debian-sections --out runs/x20/search --budget-ms 1.611 \
        --arch "128:mha,ffn,id|128:mha,id,id|128:ffn,id,id" --arch "256:sep3,sep3,id|128:mha,id,id|192:sep7,id,id"

Proxy settings are search-task's defaults except where given (another proxy in a search's folder replaces its proxy
cache: give it its own --out); prints one line per arch: the accuracy under each
proxy seed, mean, spread, predicted latency (ms, the device's table). A pair file is a retrieval task (accuracy:
held-out MRR; `--teacher-model default` is the frozen MiniLM-L6); `--train-embeddings` lets the proxy train the
inherited token embeddings too (search-task keeps them frozen):

    python benchmarks/tasksearch_proxy_scores.py --task ../shared/tasks/debian-retrieval/train.jsonl \
        --teacher-model default --out runs/ret-proxy/search --budget-ms 100 --proxy-rows 2048 --proxy-heldout 1000 \
        --seeds 2 --train-embeddings --arch "192:mha,ffn,id|192:mha,ffn,id|192:mha,ffn,id" --arch ...

`--corpus FILE` starts each proxy from the arch's encoder distilled `--distill-steps` on that corpus first, as
`search-task --rerank-distilled` does (kept in `--distilled-dir`, default OUT/search/distilled; runs sharing the
folder reuse each other's encoders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


def bad_input(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="training file of the search")
    ap.add_argument("--teacher-model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the search's --out (its proxy cache is reused)")
    ap.add_argument("--budget-ms", type=float, required=True, help="the search's --max-latency-ms")
    ap.add_argument("--arch", action="append", required=True)
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--proxy-rows", type=int, default=1024)
    ap.add_argument("--proxy-heldout", type=int, default=400)
    ap.add_argument("--proxy-epochs", type=int, default=2)
    ap.add_argument("--proxy-len", type=int, default=64, help="proxy sequence length")
    ap.add_argument("--seeds", type=int, default=3, help="proxy seeds (the rerank's --rerank-seeds)")
    ap.add_argument("--train-embeddings", action="store_true", help="the proxy trains the token embeddings too")
    ap.add_argument("--corpus", type=Path, help="distil each arch on this corpus first (search-task --rerank-distilled)")
    ap.add_argument("--distill-steps", type=int, default=1000, help="steps of the --corpus distillation")
    ap.add_argument("--distilled-dir", type=Path, help="folder of the --corpus encoders (default OUT/search/distilled)")
    args = ap.parse_args()
    if str(args.teacher_model) == "default":
        from nasbert_deploy.teacher import default_teacher_path

        args.teacher_model = default_teacher_path()
    if not Path(args.task).is_file() or not (args.teacher_model / "config.json").is_file():
        bad_input("--task must be a task file and --teacher-model a fine-tuned classifier (retrieval: encoder) folder")
    if args.corpus is not None and not args.corpus.is_file():
        bad_input(f"--corpus must be a text file, one paragraph per line; {args.corpus} is not a file")
    if args.seeds < 1 or args.budget_ms <= 0:
        bad_input(f"--seeds must be >= 1 and --budget-ms > 0, got {args.seeds} and {args.budget_ms}")

    import torch

    torch.set_num_threads(1)
    from nasbert_deploy.devices import load_device
    from nasbert_deploy.errors import NasBertDeployError
    from nasbert_deploy.search.problem import Budget
    from nasbert_deploy.tasksearch.proxy import ProxyConfig
    from nasbert_deploy.tasksearch.request import TaskSearchRequest, prepare
    from nasbert_deploy.tasksearch.rerank import rerank
    from nasbert_deploy.tasksearch.start import load_start

    proxy = ProxyConfig(rows=args.proxy_rows, heldout=args.proxy_heldout, epochs=args.proxy_epochs, max_len=args.proxy_len,
                        freeze_embeddings=not args.train_embeddings, seed=0)
    try:  # every check before the supernet loads and anything is written
        req = TaskSearchRequest(args.task, args.teacher_model, load_device(args.device), Budget(args.budget_ms),
                                args.out, proxy=proxy, search_only=True, corpus=args.corpus,
                                distill_steps=args.distill_steps, distilled_dir=args.distilled_dir,
                                rerank_distilled=args.corpus is not None)
        prepared = prepare(req)
        for arch in args.arch:
            prepared.space.parse(arch)
    except NasBertDeployError as e:
        bad_input(str(e))
    texts = [] if prepared.retrieval else prepared.train.texts
    net = load_start("supernet", prepared.supernet_dir, prepared.space, prepared.encoder_path, texts, 0,
                     args.out / "search", print)
    if args.corpus is None:
        result = rerank(req, prepared, net, list(args.arch), args.seeds, print)
    else:  # as search-task --rerank-distilled: the proxies start from the corpus-distilled encoders
        from dataclasses import replace

        from nasbert_deploy.tasksearch.request import STATE_DIR
        from nasbert_deploy.tasksearch.run import corpus_start

        distilled = corpus_start(req, prepared, net, print, None)
        result = rerank(req, replace(prepared, start_key={**prepared.start_key, **distilled.key()}), distilled,
                        list(args.arch), args.seeds, print, cache=args.out / STATE_DIR / "cache-distilled.json")
    for c in result["candidates"]:
        accs = " ".join(f"{a:.4f}" for a in c["accuracies"])
        print(f"{c['arch']}  proxy {accs}  mean {c['mean']:.4f} +- {c['sd']:.4f}  {c['latency_ms']:.3f} ms")


if __name__ == "__main__":
    main()
