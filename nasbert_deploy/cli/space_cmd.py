"""`space show` and `arch info`: the search space and one architecture's sizes."""

from __future__ import annotations

from typing import Annotated

import typer

from nasbert_deploy.cli.common import SpaceName, console

space_app = typer.Typer(help="Inspect search spaces.", no_args_is_help=True)
arch_app = typer.Typer(help="Inspect architectures.", no_args_is_help=True)

SpaceOpt = Annotated[SpaceName, typer.Option("--space", help="Search space.")]


@space_app.command("show")
def show(space: SpaceOpt = SpaceName("standard")) -> None:
    """The space: blocks, layers, hidden sizes, operations, size and parameter range."""
    from rich.table import Table

    from nasbert_deploy.space import Arch, BlockArch, Op, format_params, get_space

    sp = get_space(space.value)
    smallest = Arch(
        tuple(
            BlockArch(min(sp.hidden_sizes), (Op("sep", min(sp.conv_kernels)),) + (Op("id"),) * (sp.layers_per_block - 1))
            for _ in range(sp.num_blocks)
        )
    )
    largest = sp.largest_arch("ffn")
    t = Table(title=f"search space {sp.name!r} (hash {sp.space_hash()})", show_header=False)
    t.add_row("blocks x layers", f"{sp.num_blocks} x {sp.layers_per_block}")
    t.add_row("hidden sizes", ", ".join(map(str, sp.hidden_sizes)))
    t.add_row("operations", ", ".join(o.name for o in sp.all_ops) + f"  (heads = hidden/{sp.head_dim}, FFN {sp.ffn_ratio}x)")
    t.add_row("embedding", f"vocab {sp.vocab_size} x {sp.embed_dim} (factorized), output {sp.output_dim}")
    t.add_row("archs per block", f"{sp.block_count():,}")
    t.add_row("archs in space", f"{sp.size():.3e}")
    t.add_row(
        "params",
        f"{format_params(sp.params(smallest))} .. {format_params(sp.params(largest))} "
        f"(without embedding tables {format_params(sp.params(smallest, embeddings=False))} .. "
        f"{format_params(sp.params(largest, embeddings=False))})",
    )
    console.print(t)


@arch_app.command("info")
def info(
    arch: Annotated[str, typer.Argument(help="Arch string, e.g. '128:mha,ffn,id,id,id,id|...'.")],
    space: SpaceOpt = SpaceName("standard"),
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="Sequence length for FLOPs.")] = 128,
) -> None:
    """Parameters, FLOPs and a per-block summary of one architecture."""
    from rich.table import Table

    from nasbert_deploy.space import format_params, get_space

    sp = get_space(space.value)
    a = sp.parse(arch)
    console.print(f"arch {a} (space {sp.name})", highlight=False, soft_wrap=True)  # never wrapped mid-token
    t = Table()
    for col in ("block", "hidden", "heads", "layers", "params", f"GFLOPs@{seq_len}"):
        t.add_column(col, justify="right")
    for i, b in enumerate(a.blocks, 1):
        p = sum(sp.op_params(op, b.hidden) for op in b.ops)
        f = sum(sp.op_flops(op, b.hidden, seq_len) for op in b.ops)
        ops = ",".join(o.name for o in b.ops if not o.is_identity)
        t.add_row(str(i), str(b.hidden), str(sp.heads(b.hidden)), ops, format_params(p), f"{f / 1e9:.3f}")
    console.print(t)
    console.print(
        f"params {format_params(sp.params(a))} (without embedding tables "
        f"{format_params(sp.params(a, embeddings=False))}), GFLOPs@{seq_len} {sp.flops(a, seq_len) / 1e9:.3f}"
    )
