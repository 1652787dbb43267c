"""Trained Ternary Quantization: ternary kernels with learned positive and negative scales
(threshold 0.05 max|w|), fine-tuned.

Zhu, Han, Mao & Dally 2017, https://arxiv.org/abs/1612.01064.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.ttq(0.05), epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("ttq", build, order=63, description="TTQ learned ternary scales, fine-tune")
