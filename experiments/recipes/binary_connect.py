"""BinaryConnect: every kernel binarized to ±1 (deterministic sign, no scale), float
masters clipped to [-1, 1], fine-tuned.

Courbariaux, Bengio & David 2015, https://arxiv.org/abs/1511.00363 (the paper trains
with batch normalization, which these LeNets lack).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.binary_connect(), epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("binary_connect", build, order=60, description="BinaryConnect ±1 kernels, fine-tune")
