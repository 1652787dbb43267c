"""LSQ W2A2: 2-bit kernels and 2-bit hidden activations with learned step sizes.

Esser et al. 2020, https://arxiv.org/abs/1902.08153.
"""

from experiments.recipes._lsq import lsq_wa
from experiments.recipes.base import Recipe


def build(params, trainer):
  return lsq_wa(params, trainer, 2, epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("lsq_w2a2", build, order=66, description="LSQ W2A2 (hidden activations), fine-tune")
