"""QAT W4A8 and W2A8: 4- or 2-bit per-channel weights and 8-bit activations at calibrated
ranges, fine-tuned with integer forward matmuls (``jaxcompress.quantization.qat``)."""

import functools

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(bits, params, trainer):
  del params
  compressor = quantization.qat(bits, 8, apply_fn=trainer.model.apply, batches=trainer.calibration_batches())
  return FineTune(compressor, epochs=trainer.epochs(15), lr=3e-4)


RECIPES = tuple(
  Recipe(
    f"qat_w{bits}a8",
    functools.partial(build, bits),
    order=order,
    description=f"QAT W{bits}A8 (int8 forward)",
    full_only=bits == 2,
  )
  for bits, order in ((4, 36), (2, 38))
)
