"""One-shot magnitude pruning to 90% sparsity per layer, then masked fine-tuning.

Han et al. 2015, "Learning both Weights and Connections", https://arxiv.org/abs/1506.02626.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  return FineTune(pruning.magnitude(0.9), epochs=trainer.epochs(60), lr=3e-3)


RECIPE = Recipe("magnitude_90", build, order=10, description="one-shot magnitude 90% + fine-tune")
