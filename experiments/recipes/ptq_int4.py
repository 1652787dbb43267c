"""Post-training quantization: 4-bit symmetric per-channel weights, no training."""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params, trainer
  return FineTune(quantization.fake_quant(4, per_channel=True), epochs=0)


RECIPE = Recipe("ptq_int4", build, order=27, description="PTQ int4 per-channel weights", full_only=True)
