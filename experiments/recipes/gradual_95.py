"""Gradual magnitude pruning from 0 to 95% along Zhu & Gupta's cubic schedule.

Zhu & Gupta 2017, "To prune, or not to prune", https://arxiv.org/abs/1710.01878.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  epochs = trainer.epochs(60)
  end = max(2, int(0.6 * epochs * trainer.steps_per_epoch))  # last 40% recovers at 95%
  every = max(1, min(trainer.steps_per_epoch // 2, end))
  schedule = pruning.polynomial_sparsity(0.95, begin_step=0, end_step=end, frequency=every)
  return FineTune(pruning.magnitude(schedule), epochs=epochs, lr=3e-3)


RECIPE = Recipe("gradual_95", build, order=21, description="polynomial 0 -> 95% during fine-tune")
