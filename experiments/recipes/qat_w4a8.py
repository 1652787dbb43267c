"""QAT W4A8: 4-bit per-channel weights and 8-bit activations at calibrated ranges,
fine-tuned with integer forward matmuls (``jaxcompress.quantization.qat``)."""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  compressor = quantization.qat(4, 8, apply_fn=trainer.model.apply, batches=trainer.calibration_batches())
  return FineTune(compressor, epochs=trainer.epochs(15), lr=3e-4)


RECIPE = Recipe("qat_w4a8", build, order=36, description="QAT W4A8 (int8 forward)")
