"""Global magnitude pruning to 90%: one ranking over all layers (compare magnitude_90,
which prunes every layer to 90%), then masked fine-tuning.

Han et al. 2015, "Learning both Weights and Connections", https://arxiv.org/abs/1506.02626;
global ranking as in Frankle & Carbin 2019, https://arxiv.org/abs/1803.03635.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  return FineTune(pruning.magnitude(0.9, scope="global"), epochs=trainer.epochs(60), lr=3e-3)


RECIPE = Recipe("global_90", build, order=11, description="one-shot global magnitude 90% + fine-tune")
