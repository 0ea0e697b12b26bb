"""quantize: KD-aware quantization with learned step sizes (KDLSQ-BERT), exported to low-bit kernels.

Light on purpose (the command line builds its choices from it without importing torch):
`BITS` the weight bit widths; `KERNELS` which export formats have a kernel for each of them; `RECIPES` the training
recipes `quantize --recipe` names and `resolve_recipe` the one `auto` picks.
"""

from nasbert_deploy.lowbit import ONNX_FORMS  # the 8-bit ONNX graph forms (lowbit.qdq), for the command line

__all__ = ["BITS", "FORMATS", "KERNELS", "ONNX_FORMS", "RECIPES", "RECIPE_SETTINGS", "resolve_recipe"]

BITS: tuple[int, ...] = (8, 4, 2)
FORMATS: tuple[str, ...] = ("onnx", "openvino")
# formats with real low-bit kernels per weight bit width (activations are 8-bit throughout):
# 8: QuantizeLinear -> MatMulIntegerToFloat ONNX (or QDQ) -> ORT integer MatMul; OpenVINO reads it as FakeQuantize
#    and runs INT8
# 4: ORT MatMulNBits (com.microsoft); OpenVINO reads that node as u4 weight compression (FullyConnected u4)
# 2: no kernel anywhere: simulated (PyTorch fake quantization) only
KERNELS: dict[int, tuple[str, ...]] = {8: ("onnx", "openvino"), 4: ("onnx", "openvino"), 2: ()}

# What `quantize` trains by default (docs/quantization.md, "Recipes"):
# loyal: the weights stay where the float model has them (lr 0) and only the step sizes are learned, by distillation
#   alone (no gold-label term), after SmoothQuant on the inputs with outlier channels (max/median of the per-channel
#   max |x| >= 8; each one is a float Mul on ONNX Runtime): the export tracks its float model (probability loyalty
#   0.988-0.993 on the committed teachers, 0.992 on a NAS student) at PTQ's latency. 8-bit weights need no more.
# trained: weights trained too (AdamW 2e-5) with the gold-label cross-entropy beside distillation, no smoothing (it
#   moves range into the weights, which 4- and 2-bit grids cannot hold): what low-bit weights need to recover.
RECIPES: tuple[str, ...] = ("auto", "loyal", "trained")
RECIPE_SETTINGS: dict[str, dict[str, float]] = {
    "loyal": {"lr": 0.0, "ce_weight": 0.0, "smooth": 0.95, "smooth_min_ratio": 8.0},
    "trained": {"lr": 2e-5, "ce_weight": 1.0, "smooth": 0.0, "smooth_min_ratio": 0.0},
}


def resolve_recipe(recipe: str, bits: int) -> tuple[str, str]:
    """(the recipe, why): `auto` is loyal at 8 bits and trained at 4 and 2."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: valid: {', '.join(RECIPES)}")
    if recipe != "auto":
        return recipe, "as asked"
    if bits == 8:
        return "loyal", "auto: 8-bit weights keep the float model's, only step sizes are learned"
    return "trained", f"auto: {bits}-bit weights are trained to recover accuracy"
