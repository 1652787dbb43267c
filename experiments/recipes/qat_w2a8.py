"""QAT W2A8: 2-bit per-channel weights and 8-bit activations at calibrated ranges,
fine-tuned with integer forward matmuls (``jaxcompress.quantization.qat``)."""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  compressor = quantization.qat(2, 8, apply_fn=trainer.model.apply, batches=trainer.calibration_batches())
  return FineTune(compressor, epochs=trainer.epochs(15), lr=3e-4)


RECIPE = Recipe("qat_w2a8", build, order=38, description="QAT W2A8 (int8 forward)")
