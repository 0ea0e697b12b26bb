"""quantize: KD-aware quantization with learned step sizes (KDLSQ-BERT), exported to low-bit kernels.

Light on purpose (the command line builds its choices from it without importing torch):
`BITS` the weight bit widths; `KERNELS` which export formats have a kernel for each of them.
"""

from nasbert_deploy.lowbit import ONNX_FORMS  # the 8-bit ONNX graph forms (lowbit.qdq), for the command line

__all__ = ["BITS", "FORMATS", "KERNELS", "ONNX_FORMS"]

BITS: tuple[int, ...] = (8, 4, 2)
FORMATS: tuple[str, ...] = ("onnx", "openvino")
# formats with real low-bit kernels per weight bit width (activations are 8-bit throughout):
# 8: QuantizeLinear -> MatMulIntegerToFloat ONNX (or QDQ) -> ORT integer MatMul; OpenVINO reads it as FakeQuantize
#    and runs INT8
# 4: ORT MatMulNBits (com.microsoft); OpenVINO reads that node as u4 weight compression (FullyConnected u4)
# 2: no kernel anywhere: simulated (PyTorch fake quantization) only
KERNELS: dict[int, tuple[str, ...]] = {8: ("onnx", "openvino"), 4: ("onnx", "openvino"), 2: ()}
