"""Any module fake-quantized and exported as `nasbert-deploy quantize` exports a trained classifier: what the latency
profiler times for a `quantizer = "kdlsq"` device (a block, an operation, a whole model of the search space).

Latency depends on the graph, not on the values: the step sizes keep their LSQ start (least-error weight steps per
output channel, activation ranges from the example inputs) instead of trained ones, and every other choice is
`quantize`'s: every `nn.Linear` quantized (8-bit activations; Linears reading one tensor share one input quantizer),
the word-embedding table per row at the weights' bits, attention as `--attention-bits`' default exports it for the
device's runtime (`grid.export_bits`: 8-bit in OpenVINO's IR, float in ONNX Runtime's file), input grids centred as
`--signed-activations`' default on this CPU, QDQ (8 bit) or MatMulNBits (4 bit) ONNX (OpenVINO's runtime reads it
through `runtimes.signed`, as `quantize` converts its IR).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from nasbert_deploy.lowbit.attention import DEFAULT_BITS, quantize_attention
from nasbert_deploy.lowbit.embedding import QuantEmbedding
from nasbert_deploy.lowbit.grid import DEFAULT_SIGNED_ACTIVATIONS, resolve_signed_activations
from nasbert_deploy.lowbit.lsq import quantize_linears
from nasbert_deploy.lowbit.qdq import export_quantized_onnx

KDLSQ_BITS = {"int8": 8, "int4": 4}  # device precision -> weight bits of the `quantize` export it stands for


def word_table(module: nn.Module) -> str | None:
    """Qualified name of `module`'s word-embedding table, the `nn.Embedding` with the most rows (the vocabulary;
    positions and token types have few), or None without one."""
    tables = [(m.num_embeddings, n) for n, m in module.named_modules() if isinstance(m, nn.Embedding)]
    return max(tables)[1] if tables else None


def kdlsq_onnx(
    module: nn.Module, example_inputs: Mapping[str, torch.Tensor], output_name: str, path: str | Path, bits: int,
    reduce_range: bool = False, attention_bits: int = DEFAULT_BITS,
) -> Path:
    """Fake-quantize `module` in place at `bits` (8 or 4) and write its integer ONNX graph to `path` (atomic).

    `module` is called with `example_inputs` as positional arguments, in order (the profiler's items)."""
    quantize_linears(module, bits, 8, example_inputs, reduce_range, positional=True,
                     signed_activations=resolve_signed_activations(DEFAULT_SIGNED_ACTIVATIONS)[0])
    name = word_table(module)
    if name is not None:
        module.set_submodule(name, QuantEmbedding.from_embedding(module.get_submodule(name), bits))  # type: ignore[arg-type]
    if attention_bits:
        quantize_attention(module, attention_bits)
    module.eval()
    with torch.no_grad():  # the activation quantizers take their ranges from this first call
        module(*example_inputs.values())
    return export_quantized_onnx(module, path, example_inputs, bits, output_name, first_output=False)
