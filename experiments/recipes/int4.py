"""4-bit symmetric per-channel weights with quantization-aware fine-tuning (STE).

Jacob et al. 2018, https://arxiv.org/abs/1712.05877.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.fake_quant(4, per_channel=True), epochs=trainer.epochs(15), lr=3e-4)


RECIPE = Recipe("int4", build, order=40, description="fake-quant int4 per-channel, QAT")
