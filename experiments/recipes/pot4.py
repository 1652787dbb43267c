"""Power-of-two weights at 4 bits: 0 and ±2^e over 7 exponents, fine-tuned.

Zhou et al. 2017 (INQ's levels, without its incremental schedule),
https://arxiv.org/abs/1702.03044.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.power_of_two(7), epochs=trainer.epochs(20), lr=3e-4)


RECIPE = Recipe("pot4", build, order=64, description="power-of-two 4-bit kernels, fine-tune")
