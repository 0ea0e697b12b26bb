"""Extract Then Distill: a NAS-BERT student initialised from its teacher's own parameters (ETD, Chen et al. 2021).

A student of any architecture in a space whose `output_dim` is the teacher's width gets:

- hidden dimensions: a width-h part of the network keeps the teacher's h most important residual
  dimensions `S(h)` (one global ranking, so narrower sets nest inside wider ones); `embed_proj`, the
  block boundaries and the output head become the selection matrices between those sets, so a student
  with the teacher's width and layers reproduces the teacher exactly;
- embeddings: copied when the space's `embed_dim` is the teacher's width; otherwise projected onto the
  teacher word embeddings' top principal directions, with `embed_proj` undoing the projection and the
  teacher's LayerNorm scale (approximate: LayerNorm then runs on fewer dimensions);
- each `mha` op: the teacher layer it maps to (below) keeps its most important heads. When the space's
  `head_dim` is g times the teacher's head size, a student head is g teacher heads side by side (its
  query is scaled by 1/sqrt(g) so the logits keep their scale); any other head_dim cannot be extracted;
- each `ffn` op: the mapped layer's most important `ffn_ratio * h` intermediate neurons;
- separable convolutions and identities keep the model's own initialisation.

Layer mapping (explicit and reported): block i distils teacher layers `split_layers` assigns it (as in
block-wise distillation); the j-th of k ops of a kind in a block takes the block's teacher layer
`layers[j * n // k]` (n layers in the block), so a student with one attention per block of two teacher
layers takes layers 1, 3, 5 of a 6-layer teacher, as DistilBERT does. `layer_map` overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasbert_deploy.errors import TeacherError
from nasbert_deploy.model.importance import Importance, teacher_shape
from nasbert_deploy.model.modeling import NasBertConfig, NasBertModel
from nasbert_deploy.model.ops import Embeddings, FeedForward, MultiHeadAttention
from nasbert_deploy.space import Arch, SearchSpace
from nasbert_deploy.teacher import split_layers

LayerMap = list[list[int | None]]  # per block, per op: 0-based teacher layer, None for ops that are not extracted


def default_layer_map(arch: Arch, teacher_layers: int) -> LayerMap:
    """The mapping described in the module doc: per block, per op, a 0-based teacher layer (None: not extracted)."""
    ends = split_layers(teacher_layers, len(arch.blocks))
    starts = [0, *ends[:-1]]
    out: LayerMap = []
    for block, start, end in zip(arch.blocks, starts, ends):
        layers = list(range(start, end))
        row: list[int | None] = []
        for pos, op in enumerate(block.ops):
            if op.kind not in ("mha", "ffn"):
                row.append(None)
                continue
            same = [p for p, o in enumerate(block.ops) if o.kind == op.kind]
            j, k = same.index(pos), len(same)
            row.append(layers[j * len(layers) // k])
        out.append(row)
    return out


def _check(arch: Arch, space: SearchSpace, teacher: Any, layer_map: LayerMap) -> tuple[int, int, int, int]:
    L, H, inner, D = teacher_shape(teacher)
    d = D // H
    if space.output_dim != D:
        raise TeacherError(f"ETD needs a space whose output_dim is the teacher's width {D}; this one has {space.output_dim}")
    if space.head_dim % d:
        raise TeacherError(f"ETD needs head_dim a multiple of the teacher's head size {d}; the space has {space.head_dim}")
    if max(arch.hiddens) > D:
        raise TeacherError(f"ETD cannot extract hidden {max(arch.hiddens)} from a teacher of width {D}")
    for b in arch.blocks:
        if "ffn" in {o.kind for o in b.ops} and space.ffn_ratio * b.hidden > inner:
            raise TeacherError(f"ETD cannot extract an FFN of {space.ffn_ratio * b.hidden} neurons from {inner}")
        if "mha" in {o.kind for o in b.ops} and space.heads(b.hidden) * (space.head_dim // d) > H:
            raise TeacherError(f"ETD cannot extract {space.heads(b.hidden)} heads of {space.head_dim} from {H} heads of {d}")
    if [len(r) for r in layer_map] != [len(b.ops) for b in arch.blocks]:
        raise TeacherError("the layer map needs one entry per op of every block")
    for row, b in zip(layer_map, arch.blocks):
        for t, op in zip(row, b.ops):
            if op.kind in ("mha", "ffn") and (t is None or not 0 <= t < L):
                raise TeacherError(f"layer map: {op} needs a teacher layer in 0..{L - 1}, got {t}")
    return L, H, inner, D


def check_extractable(arch: Arch, space: SearchSpace, teacher: Any, layer_map: LayerMap | None = None) -> None:
    """TeacherError, before any importance is scored, if `arch` cannot be extracted from `teacher`."""
    _check(arch, space, teacher, layer_map if layer_map is not None else default_layer_map(arch, teacher_shape(teacher)[0]))


def selection(rows: list[int], cols: list[int], size: tuple[int, int]) -> torch.Tensor:
    """A (len(rows), len(cols)) 0/1 matrix with 1 where rows[i] == cols[j] (dimension `size` only for dtype/shape)."""
    m = torch.zeros(size)
    where = {c: j for j, c in enumerate(cols)}
    for i, r in enumerate(rows):
        if r in where:
            m[i, where[r]] = 1.0
    return m


@dataclass(frozen=True)
class EmbeddingInit:
    """The teacher's embeddings at a student's width E: tables (rows, E), the student's LayerNorm (E,) and the
    affine `adapter` (T, E) + (T,) after it that returns to the teacher's width T (identity when E = T)."""

    word: torch.Tensor
    position: torch.Tensor
    token_type: torch.Tensor
    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    adapter_weight: torch.Tensor
    adapter_bias: torch.Tensor


@torch.no_grad()
def teacher_embeddings(teacher: Any, embed_dim: int) -> EmbeddingInit:
    """Copy (E = T) or truncated-SVD projection (E < T) of the teacher's embeddings (see docs/supernet.md).

    Teacher word table W (V, T) = U S Vh; P = Vh[:E].T (T, E). Student tables = teacher tables @ P;
    adapter = diag(teacher LN gamma) P sqrt(T/E) with bias teacher LN beta, so that
    adapter(LN_E(z P)) ~ LN_T(z) when the top-E directions hold most of z's energy."""
    emb = teacher.get_input_embeddings().weight.detach().float()  # (V, T)
    T = emb.shape[1]
    if embed_dim > T:
        raise TeacherError(f"cannot project the teacher's {T}-wide embeddings to a wider {embed_dim}")
    temb = getattr(teacher, "embeddings", None)
    ln = getattr(temb, "LayerNorm", None)
    gamma = ln.weight.detach().float() if ln is not None else torch.ones(T)
    beta = ln.bias.detach().float() if ln is not None else torch.zeros(T)
    proj = torch.eye(T) if embed_dim == T else torch.linalg.svd(emb, full_matrices=False)[2][:embed_dim].T

    def table(name: str) -> torch.Tensor:
        src = getattr(temb, name, None)
        return torch.zeros(0, embed_dim) if src is None else src.weight.detach().float() @ proj

    if embed_dim == T:
        norm_w, norm_b, adapter_w, adapter_b = gamma, beta, torch.eye(T), torch.zeros(T)
    else:
        norm_w, norm_b = torch.ones(embed_dim), torch.zeros(embed_dim)
        adapter_w, adapter_b = gamma[:, None] * proj * math.sqrt(T / embed_dim), beta
    return EmbeddingInit(emb @ proj, table("position_embeddings"), table("token_type_embeddings"), norm_w, norm_b,
                         adapter_w, adapter_b)


@torch.no_grad()
def load_embeddings(dst: Embeddings, init: EmbeddingInit) -> None:
    """Write `init`'s tables and LayerNorm into a student's `Embeddings` (rows beyond the teacher's stay)."""
    for table, src in ((dst.word, init.word), (dst.position, init.position), (dst.token_type, init.token_type)):
        n = min(len(src), len(table.weight))
        table.weight[:n] = src[:n]
    dst.norm.weight.copy_(init.norm_weight)
    dst.norm.bias.copy_(init.norm_bias)


@torch.no_grad()
def _embeddings(student: NasBertModel, teacher: Any, s0: list[int]) -> None:
    init = teacher_embeddings(teacher, student.embeddings.word.weight.shape[1])
    load_embeddings(student.embeddings, init)
    student.embed_proj.weight.copy_(init.adapter_weight[s0])  # the adapter's rows for the kept dimensions
    student.embed_proj.bias.copy_(init.adapter_bias[s0])


@torch.no_grad()
def copy_attention(op: MultiHeadAttention, layer: Any, heads: list[int], d: int, s: list[int], group: int) -> None:
    """Teacher `layer`'s attention restricted to `heads` (of size d, grouped g at a time) and residual dims `s`."""
    att = layer.attention
    dims = [h * d + i for h in heads for i in range(d)]  # the kept heads' context dimensions, grouped g by g
    for mine, theirs in ((op.query, att.self.query), (op.key, att.self.key), (op.value, att.self.value)):
        mine.weight.copy_(theirs.weight[dims][:, s])
        mine.bias.copy_(theirs.bias[dims])
    if group > 1:  # g teacher heads form one student head: keep the logits' scale
        op.query.weight.mul_(group**-0.5)
        op.query.bias.mul_(group**-0.5)
    op.out.weight.copy_(att.output.dense.weight[s][:, dims])
    op.out.bias.copy_(att.output.dense.bias[s])
    op.norm.weight.copy_(att.output.LayerNorm.weight[s])
    op.norm.bias.copy_(att.output.LayerNorm.bias[s])


@torch.no_grad()
def copy_ffn(op: FeedForward, layer: Any, neurons: list[int], s: list[int]) -> None:
    """Teacher `layer`'s FFN restricted to intermediate `neurons` and residual dims `s`."""
    op.fc1.weight.copy_(layer.intermediate.dense.weight[neurons][:, s])
    op.fc1.bias.copy_(layer.intermediate.dense.bias[neurons])
    op.fc2.weight.copy_(layer.output.dense.weight[s][:, neurons])
    op.fc2.bias.copy_(layer.output.dense.bias[s])
    op.norm.weight.copy_(layer.output.LayerNorm.weight[s])
    op.norm.bias.copy_(layer.output.LayerNorm.bias[s])


def choose_heads(importance: Importance, layer: int, student_heads: int, group: int) -> list[int]:
    """The teacher heads (0-based) of `layer` that make `student_heads` heads of `group` teacher heads each:
    the most important ones, in index order, or by rank when grouped (so a group pairs similar ranks)."""
    heads = importance.top(importance.heads[layer], student_heads * group)
    return sorted(heads, key=lambda h: -float(importance.heads[layer][h])) if group > 1 else heads


def extract_student(
    arch: str | Arch,
    space: SearchSpace,
    teacher: Any,
    importance: Importance,
    layer_map: LayerMap | None = None,
) -> tuple[NasBertModel, dict[str, Any]]:
    """A `NasBertModel` of `arch` initialised from the BERT-class encoder `teacher` (see the module doc),
    and a report of what came from where (1-based teacher layers, heads and neuron counts per op)."""
    a = space.parse(str(arch)) if isinstance(arch, str) else space.validate(arch)
    L = teacher_shape(teacher)[0]
    lmap = layer_map if layer_map is not None else default_layer_map(a, L)
    _, H, _, D = _check(a, space, teacher, lmap)
    d, group = D // H, space.head_dim // (D // H)
    torch.manual_seed(0)  # the ops ETD does not extract (convolutions) start as a random student does
    student = NasBertModel(NasBertConfig.from_arch(str(a), space)).eval()
    order = importance.hidden_order()
    dims = {h: sorted(order[:h]) for h in set(a.hiddens)}
    _embeddings(student, teacher, dims[a.blocks[0].hidden])
    report_blocks = []
    for i, (block, row) in enumerate(zip(a.blocks, lmap)):
        s = dims[block.hidden]
        ops_report = []
        for op, module, t in zip(block.ops, student.blocks[i].layers, row):
            if op.kind == "mha":
                heads = choose_heads(importance, t, space.heads(block.hidden), group)
                copy_attention(module, teacher.encoder.layer[t], heads, d, s, group)
                ops_report.append({"op": str(op), "teacher_layer": t + 1, "heads": [h + 1 for h in heads]})
            elif op.kind == "ffn":
                w = space.ffn_ratio * block.hidden
                copy_ffn(module, teacher.encoder.layer[t], importance.top(importance.neurons[t], w), s)
                ops_report.append({"op": str(op), "teacher_layer": t + 1, "neurons": w})
            else:
                ops_report.append({"op": str(op), "teacher_layer": None})
        report_blocks.append({"hidden": block.hidden, "ops": ops_report})
    with torch.no_grad():
        hs = a.hiddens
        for j, boundary in enumerate(student.boundaries):
            boundary.weight.copy_(selection(dims[hs[j + 1]], dims[hs[j]], (hs[j + 1], hs[j])))
            boundary.bias.zero_()
        student.head.weight.copy_(selection(list(range(D)), dims[hs[-1]], (D, hs[-1])))
        student.head.bias.zero_()
    report = {
        "method": f"etd-{importance.method}",
        "importance_texts": importance.texts,
        "embeddings": "copied" if space.embed_dim == D else f"projected onto {space.embed_dim} principal directions",
        "blocks": report_blocks,
    }
    return student, report


def teacher_space(teacher: Any) -> SearchSpace:
    """The space in which the BERT-class `teacher` is one architecture (`teacher_arch`): its width, head size,
    FFN ratio, embeddings and vocabulary; one block per teacher layer."""
    L, H, inner, D = teacher_shape(teacher)
    cfg = teacher.config
    if inner % D or getattr(cfg, "hidden_act", "gelu") != "gelu":
        raise TeacherError(f"cannot convert the teacher: FFN {inner} is not a multiple of its width {D}, "
                           f"or its activation {getattr(cfg, 'hidden_act', '?')!r} is not 'gelu'")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise TeacherError("cannot convert the teacher: only absolute position embeddings are supported")
    return SearchSpace(name="teacher", num_blocks=L, layers_per_block=2, hidden_sizes=(D,), conv_kernels=(3,),
                       head_dim=D // H, ffn_ratio=inner // D, embed_dim=D, output_dim=D, vocab_size=int(cfg.vocab_size),
                       max_positions=int(cfg.max_position_embeddings), type_vocab_size=int(cfg.type_vocab_size))


def convert_teacher(teacher: Any) -> NasBertModel:
    """The teacher itself as a `NasBertModel` (same outputs, up to LayerNorm epsilon): every head, neuron and
    dimension extracted, one block per layer. Lets the teacher train with the students' mean-pooling head."""
    space = teacher_space(teacher)
    L, H, inner, D = teacher_shape(teacher)
    arch = "|".join([f"{D}:mha,ffn"] * L)
    keep_all = Importance(torch.ones(L, H), torch.ones(L, inner), torch.ones(D), "all", 0)
    model, _ = extract_student(arch, space, teacher, keep_all)
    return without_projections(model)


def convert_teacher_folder(path: Any) -> NasBertModel:
    """The BERT-family encoder in the folder `path` (`teacher.load_teacher`: local files only, one-line
    `TeacherError`s) as a `NasBertModel` with the same outputs (`convert_teacher`)."""
    from nasbert_deploy.teacher import load_teacher

    return convert_teacher(load_teacher(path).model)


def without_projections(model: NasBertModel) -> NasBertModel:
    """`model` with its square projections (embedding, boundaries, head) as `nn.Identity` (config
    `identity_projections`): same outputs, 6% faster for MiniLM-L6 (`benchmarks/bench_teacher_forms.py`). Each one
    must be an exact identity (weight I, bias 0), as `extract_student` makes them when every dimension is kept."""
    state = model.state_dict()
    dropped = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == m.out_features
               and (n in ("embed_proj", "head") or n.startswith("boundaries."))]
    for name in dropped:
        w, b = state.pop(f"{name}.weight"), state.pop(f"{name}.bias")
        if not (torch.equal(w, torch.eye(w.shape[0], dtype=w.dtype)) and not b.any()):
            raise ValueError(f"{name} is not an identity projection; it cannot be dropped")
    config = NasBertConfig(**{**model.config.to_dict(), "identity_projections": True})
    out = NasBertModel(config).eval()
    out.load_state_dict(state)
    return out


def describe_map(report: dict[str, Any]) -> str:
    """One line: which teacher layer each student op came from, e.g. 'mha<L1 ffn<L1 id | ...'."""
    parts = []
    for block in report["blocks"]:
        ops = [f"{o['op']}<L{o['teacher_layer']}" if o["teacher_layer"] else o["op"] for o in block["ops"]]
        parts.append(f"{block['hidden']}: " + " ".join(ops))
    return " | ".join(parts)
