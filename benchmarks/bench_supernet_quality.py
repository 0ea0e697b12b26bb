"""How good is the supernet? Two checks, printed as tables.

1. Ranking: for ~10 block architectures per block, the block loss with the supernet's shared
   weights vs the loss of the same block trained alone (fresh weights, same optimizer, batch size
   and number of steps), both on the same validation paragraphs; Kendall's tau per block and pooled.
2. Inherited weights: for 5 subnets extracted from the supernet (no further training), the mean
   cosine between their sentence embeddings (mean pooling) and the teacher's (mean-pooled last hidden
   state) on the validation corpus; a randomly initialised model of the same arch as the baseline.

Small settings (a few minutes on 2 CPU cores):

    python benchmarks/bench_supernet_quality.py --supernet /work/runs/default-supernet \\
        --archs 6 --steps 60 --train-paragraphs 512 --val-paragraphs 64
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau

from nasbert_deploy.model.modeling import mean_pool
from nasbert_deploy.space import Arch, BlockArch, SearchSpace
from nasbert_deploy.supernet.blockwise import batch_indices, masked_mse
from nasbert_deploy.supernet.candidates import CandidateTable
from nasbert_deploy.supernet.default import CANDIDATES_FILE, resolve_supernet_dir
from nasbert_deploy.supernet.network import Supernet
from nasbert_deploy.supernet.shrinking import score_blocks
from nasbert_deploy.supernet.teacher_cache import TeacherCache, build_teacher_cache, read_paragraphs
from nasbert_deploy.teacher import load_teacher

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def pick_blocks(space: SearchSpace, table: CandidateTable | None, index: int, n: int, rng: random.Random) -> list[BlockArch]:
    """`n` candidates of block `index` spread over the size range (from the table when there is one)."""
    pool = [c.block for c in table.blocks[index]] if table else list(space.enumerate_blocks())
    pool.sort(key=lambda b: (sum(space.op_params(o, b.hidden) for o in b.ops), str(b)))
    if len(pool) <= n:
        return pool
    step = len(pool) / n
    return [pool[min(len(pool) - 1, int(i * step + rng.random() * step))] for i in range(n)]


def train_alone(
    space: SearchSpace, index: int, block: BlockArch, train: TeacherCache, steps: int, batch: int, lr: float
) -> Supernet:
    """Fresh weights for one block path, trained alone exactly as the supernet trains a path."""
    torch.manual_seed(0)
    net = Supernet(space).train()
    params = net.block_params(index, block)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    spe = max(1, len(train) // batch)
    for step in range(steps):
        idx = batch_indices(step, spe, len(train), batch, 0, 1, 0)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100)
        opt.zero_grad(set_to_none=True)
        m = train.attention_mask[idx]
        loss = masked_mse(
            net.forward_block(index, block, train.states[index][idx].float(), m), train.states[index + 1][idx].float(), m
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return net


@torch.no_grad()
def sentence_cosine(model: torch.nn.Module, teacher_model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean cosine between mean-pooled student and teacher outputs over the paragraphs."""
    sims = []
    for lo in range(0, len(ids), 32):
        i, m = ids[lo : lo + 32], mask[lo : lo + 32]
        s = mean_pool(model(i, m).last_hidden_state, m)
        t = mean_pool(teacher_model(input_ids=i, attention_mask=m).last_hidden_state, m)
        sims.append(torch.nn.functional.cosine_similarity(s, t, dim=-1))
    return float(torch.cat(sims).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", type=Path, default=None, help="supernet folder (default: the shipped default)")
    ap.add_argument("--teacher", type=Path, default=None, help="teacher folder (default: offline MiniLM-L6)")
    ap.add_argument("--corpus", type=Path, default=SHARED / "pydoc-valid.txt", help="validation text")
    ap.add_argument("--train-corpus", type=Path, default=SHARED / "pydoc-train.txt", help="text for the stand-alone blocks")
    ap.add_argument("--train-paragraphs", type=int, default=1024)
    ap.add_argument("--val-paragraphs", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--archs", type=int, default=10, help="architectures per block for the ranking check")
    ap.add_argument("--steps", type=int, default=0, help="stand-alone training steps (0 = the supernet's steps)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--subnets", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/nasbert-bench-cache"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t0 = time.time()

    d = resolve_supernet_dir(args.supernet)
    net, meta = Supernet.load(d)
    net.eval()
    sp = net.space
    table = CandidateTable.load(d / CANDIDATES_FILE, sp) if (d / CANDIDATES_FILE).is_file() else None
    steps = args.steps or int(meta.get("steps", 200))
    teacher = load_teacher(args.teacher)
    build = lambda path, n: build_teacher_cache(  # noqa: E731
        teacher, read_paragraphs(path, limit=n), args.seq_len, sp.num_blocks, args.cache_dir
    )
    val, train = build(args.corpus, args.val_paragraphs), build(args.train_corpus, args.train_paragraphs)
    print(f"supernet {d} ({sp.name}, {meta.get('steps')} steps); stand-alone blocks: {steps} steps x batch {args.batch_size}")

    print(f"\n{'block':>5} {'arch':<28} {'params':>9} {'supernet':>9} {'alone':>9}")
    taus = []
    for i in range(sp.num_blocks):
        blocks = pick_blocks(sp, table, i, args.archs, rng)
        sup = score_blocks(net, i, blocks, val, 64)
        alone = [score_blocks(train_alone(sp, i, b, train, steps, args.batch_size, args.lr), i, [b], val, 64)[0] for b in blocks]
        for b, s, a in zip(blocks, sup, alone):
            print(f"{i:>5} {str(b):<28} {sum(sp.op_params(o, b.hidden) for o in b.ops):>9,} {s:>9.4f} {a:>9.4f}")
        tau = kendalltau(sup, alone)
        print(f"block {i}: Kendall tau {tau.statistic:+.3f} (p {tau.pvalue:.3f}, n {len(blocks)})")
        taus.append(float(tau.statistic))
    # not pooled over blocks: block loss scales differ, which would inflate a pooled tau
    print(f"mean Kendall tau over blocks {sum(taus) / len(taus):+.3f}")

    ids, mask = val.input_ids, val.attention_mask
    print(f"\n{'subnet (inherited weights)':<70} {'params':>8} {'cos':>6} {'random':>7}")
    cos = []
    for k in range(args.subnets):
        q = (k + 0.5) / args.subnets
        blocks = []
        for i in range(sp.num_blocks):
            pool = sorted(
                (c.block for c in table.blocks[i]) if table else sp.enumerate_blocks(),
                key=lambda b: sum(sp.op_params(o, b.hidden) for o in b.ops),
            )
            blocks.append(pool[int(q * len(pool))])
        arch = Arch(tuple(blocks))
        c = sentence_cosine(net.extract(arch), teacher.model, ids, mask)
        torch.manual_seed(0)
        from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel

        r = sentence_cosine(NasBertModel(NasBertConfig.from_arch(arch, sp)).eval(), teacher.model, ids, mask)
        cos.append(c)
        print(f"{str(arch):<70} {sp.params(arch) / 1e6:>7.2f}M {c:>6.3f} {r:>7.3f}")
    print(f"mean cosine (inherited) {sum(cos) / len(cos):.3f} over {len(ids)} paragraphs; wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
