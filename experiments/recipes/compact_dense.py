"""The compact digit models (``experiments.models.COMPACT``) trained from scratch, float32:
their parameters, FLOPs, bytes and accuracy beside LeNet-5's dense row. ``full_only``:
XLA's CPU depthwise and grouped convolutions make their training several times slower per
step than LeNet-5's (see ``experiments/bench_compact.py``)."""

import jaxcompress as jc
from experiments.models import COMPACT
from experiments.recipes.base import FineTune, Recipe


def build(params, trainer):
  del params, trainer
  return FineTune(jc.identity(), epochs=0)


RECIPE = Recipe(
  "from_scratch",
  build,
  models=COMPACT,
  order=1,
  description="compact network trained from scratch, float32",
  full_only=True,
)
