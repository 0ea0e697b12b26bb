"""Data parallelism under torchrun, shared by every trainer (supernet parts, student distillation, fine-tuning).

One scheme, no `DistributedDataParallel` wrapper: every rank holds the whole model and draws the same seeded
order of the data; at step s rank r takes slice r of global batch s (`--batch-size` rows per process, so a
global batch is world x batch rows), and the gradients are averaged with one flat all-reduce before clipping
and the optimizer step, so all ranks take the same step and hold the same weights. Rank 0 writes checkpoints
and outputs; the others wait for it (`on_rank_zero`), and a resumed run reads the checkpoint rank 0 wrote on
every rank.

Launch: `torchrun --nproc_per_node N $(which nasbert-deploy) COMMAND ...`; `init_distributed` reads torchrun's
environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`/`MASTER_PORT`) and joins the process group:
NCCL when training on GPUs (one per process, by local rank), Gloo on CPUs. A single process without torchrun
is world 1 and never touches `torch.distributed`.

Module import is light (no torch): the command line reads `TRAIN_DEVICES` for its `--device` choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from nasbert_deploy.errors import NasBertDeployError, RuntimeUnavailableError

if TYPE_CHECKING:
    import torch

TRAIN_DEVICES = ("auto", "cpu", "cuda")
T = TypeVar("T")


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed); known before any set-up."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world, torch device) from torchrun's env vars; initialises the process group when world > 1.

    `device`: one of `TRAIN_DEVICES`; 'auto' is CUDA when torch sees a GPU. 'cuda' without a visible GPU is a
    one-line `RuntimeUnavailableError`; with one, each process takes GPU `LOCAL_RANK` ('cuda:<local rank>').
    """
    import torch

    if device not in TRAIN_DEVICES:
        raise RuntimeUnavailableError(f"training device {device!r}; valid: {', '.join(TRAIN_DEVICES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return process_rank(), world, device


@contextmanager
def distributed_run(device: str) -> Iterator[tuple[int, int, str]]:
    """`init_distributed(device)` for the block, the process group torn down after it (also on errors)."""
    import torch

    rank, world, dev = init_distributed(device)
    try:
        yield rank, world, dev
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def world_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    import torch

    if world_info()[1] > 1:
        torch.distributed.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a shared cache), then the other ranks (reading what it made)."""
    rank, world = world_info()
    if world > 1 and rank != 0:
        barrier()
    yield
    if world > 1 and rank == 0:
        barrier()


def on_rank_zero(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only (writing outputs), its result returned on every rank once it is done.

    The others wait; if `fn` fails on rank 0 they fail too (`NasBertDeployError` naming the error) instead of
    waiting for ever. Without a process group this is `fn()`. The result must pickle (a report, not a model).
    """
    import torch

    rank, world = world_info()
    if world == 1:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if rank == 0:
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the other ranks have been told
            error = exc
    box = [None if error is None else f"{type(error).__name__}: {error}", result]
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise NasBertDeployError(f"rank 0 failed, so rank {rank} stops too: {box[0]}")
    return box[1]


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` without a process group)."""
    import torch

    world = world_info()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's rows of `x` (this rank's: `sizes[rank]` rows, maybe none), concatenated in rank order on every
    rank, detached (one all-gather of tensors padded to the largest slice; `x` itself without a process group)."""
    import torch

    rank, world = world_info()
    if world == 1:
        return x.detach()
    most = max(sizes)
    pad = torch.zeros(most, *x.shape[1:], dtype=x.dtype, device=x.device)
    pad[: sizes[rank]] = x.detach()
    parts = [torch.empty_like(pad) for _ in range(world)]
    torch.distributed.all_gather(parts, pad)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def allreduce_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over the ranks, in place (nothing without a process group)."""
    import torch

    if world_info()[1] > 1:
        torch.distributed.all_reduce(x)
    return x


def shard(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of `n` items (shares differ by at most one; ranks past the items get none)."""
    return range(rank * n // world, (rank + 1) * n // world)


def broadcast_params(params: Iterable[torch.Tensor]) -> None:
    """Every rank takes rank 0's values (identical starting weights whatever each rank built)."""
    import torch

    if world_info()[1] > 1:
        for p in params:
            torch.distributed.broadcast(p.data, 0)


def allreduce_grads(params: Iterable[torch.nn.Parameter], world: int, uneven: bool = False) -> None:
    """Average the gradients of `params` over the ranks with one flat all-reduce (in place; nothing when world 1).

    Without `uneven` only present gradients travel, so every rank must have the same ones (the supernet: all
    ranks train the same sampled path). With `uneven` a rank may lack gradients others have (a rank whose slice
    of the last batch is empty ran no backward): a missing gradient counts as zeros, and one that no rank has
    stays None (the optimizer then skips that parameter, as one process would).
    """
    import torch

    if world == 1:
        return
    params = list(params)
    if not uneven:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        _unflatten(flat, grads)
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = [p.grad is not None for p in params]
    device, dtype = params[0].device, params[0].dtype
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype)
             for p in params]
    flags = torch.tensor(present, device=device, dtype=dtype)  # how many ranks have each gradient
    flat = torch.cat([*parts, flags])
    torch.distributed.all_reduce(flat)
    anywhere = flat[-len(params):] > 0
    flat = flat[: -len(params)] / world
    offset = 0
    for p, has in zip(params, anywhere.tolist()):
        if has:
            g = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += p.numel()


def _unflatten(flat: torch.Tensor, grads: list[torch.Tensor]) -> None:
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (one small all-reduce; `values` itself without a process group).
    Every rank must pass the same keys. Scale a rank's share first for a mean (e.g. by 1 / world)."""
    import torch

    if world_info()[1] == 1 or not values:
        return dict(values)
    nccl = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
    device = f"cuda:{torch.cuda.current_device()}" if nccl else "cpu"
    t = torch.tensor(list(values.values()), dtype=torch.float32 if nccl else torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(values, t.tolist()))
