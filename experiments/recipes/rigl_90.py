"""RigL at 90% (ERK allocation): drop the smallest weights and regrow by gradient
magnitude every 100 steps, for the first 75% of the run.

Starts from the trained baseline's largest weights (``init_mask='magnitude'``).
Evci et al. 2020, "Rigging the Lottery", https://arxiv.org/abs/1911.11134.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  epochs = trainer.epochs(60)
  end = max(2, int(0.75 * epochs * trainer.steps_per_epoch))
  every = max(1, min(100, end // 4))
  compressor = pruning.rigl(0.9, frequency=every, end_step=end, init_mask="magnitude")
  return FineTune(compressor, epochs=epochs, lr=3e-3)


RECIPE = Recipe("rigl_90", build, order=14, description="RigL 90% ERK, regrow by |grad|, fine-tune")
