"""LSQ W4A4: 4-bit kernels and 4-bit hidden activations with learned step sizes.

Esser et al. 2020, https://arxiv.org/abs/1902.08153.
"""

from experiments.recipes._lsq import lsq_wa
from experiments.recipes.base import Recipe


def build(params, trainer):
  return lsq_wa(params, trainer, 4, epochs=trainer.epochs(20), lr=3e-4)


RECIPE = Recipe("lsq_w4a4", build, order=67, description="LSQ W4A4 (hidden activations), fine-tune")
