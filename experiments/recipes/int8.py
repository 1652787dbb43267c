"""8-bit symmetric per-channel weights: post-training quantization plus brief QAT.

Jacob et al. 2018, https://arxiv.org/abs/1712.05877.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.fake_quant(8, per_channel=True), epochs=trainer.epochs(3), lr=1e-4)


RECIPE = Recipe("int8", build, order=30, description="fake-quant int8 per-channel, short QAT")
