"""2:4 semi-structured sparsity along the contraction axis, by magnitude, then fine-tuning.

LeNet-5's convs have 1 and 6 input channels, which groups of 4 do not tile: they stay dense.

Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", https://arxiv.org/abs/2104.08378.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  return FineTune(pruning.n_m(2, 4, where=r"fc.*/kernel"), epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("nm_2_4", build, order=12, description="2:4 on kernels (input axis), Dense layers")
