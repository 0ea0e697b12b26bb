"""lowbit: fake quantization with learned step sizes (LSQ) and its integer ONNX form, below every stage that uses it.

`lsq` (quantized Linears), `embedding` (the word-embedding table per row), `qdq` (the fake-quantized model as an
integer (MatMulIntegerToFloat), QDQ or MatMulNBits ONNX graph), `grid` (the host's safe 8-bit weight range), `item` (a
fake-quantized module exported for the latency profiler). `quantize` trains with them (KDLSQ); `profiling` times their
exports (kdlsq devices).
"""

# the 8-bit ONNX graph forms (`qdq`): "integer" QuantizeLinear -> MatMulIntegerToFloat (com.microsoft) with the bias
# inside, the default; "qdq" standard Q/DQ operators only. Here (no imports) so the command line can list them.
ONNX_FORMS: tuple[str, ...] = ("integer", "qdq")
