"""Ternary Weight Networks: delta = 0.7 mean|w|, alpha = mean |w| above delta, fine-tuned.

Li, Zhang & Liu 2016, https://arxiv.org/abs/1605.04711.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.twn(0.7), epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("twn", build, order=62, description="TWN ternary kernels, fine-tune")
