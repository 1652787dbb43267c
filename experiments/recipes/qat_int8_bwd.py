"""QAT W4A8 with the whole step int8: integer forward matmuls and the opt-in int8 backward
(``quantization.qat(..., backward='int8')``: both gradient products as int8 dots on the
forward's codes and a stochastically rounded int8 gradient; convolutions keep the float
backward). Beside ``qat_w4a8``, the same recipe with the float backward."""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  compressor = quantization.qat(
    4, 8, apply_fn=trainer.model.apply, batches=trainer.calibration_batches(), backward="int8"
  )
  return FineTune(compressor, epochs=trainer.epochs(15), lr=3e-4)


RECIPE = Recipe("qat_w4a8_int8bwd", build, order=36, description="QAT W4A8, int8 forward and int8 backward")
