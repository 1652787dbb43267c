"""Post-training quantization: 8-bit symmetric per-channel weights, no training.

Jacob et al. 2018, https://arxiv.org/abs/1712.05877.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params, trainer
  return FineTune(quantization.fake_quant(8, per_channel=True), epochs=0)


RECIPE = Recipe("ptq_int8", build, order=26, description="PTQ int8 per-channel weights")
