"""The dense float32 baseline itself: nothing removed, nothing quantized."""

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe


def build(params, trainer):
  del params, trainer
  return FineTune(jc.identity(), epochs=0)


RECIPE = Recipe(
  "dense", build, models=("lenet300100", "lenet5", "mlp64"), order=0, description="trained baseline, float32"
)
