"""Gradual magnitude pruning from 0 to 90%, 95% and 98% along Zhu & Gupta's cubic schedule.

Zhu & Gupta 2017, "To prune, or not to prune", https://arxiv.org/abs/1710.01878.
"""

import functools

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(target, params, trainer):
  del params
  epochs = trainer.epochs(60)
  end = max(2, int(0.6 * epochs * trainer.steps_per_epoch))  # the last 40% recovers at the target
  every = max(1, min(trainer.steps_per_epoch // 2, end))
  schedule = pruning.polynomial_sparsity(target, begin_step=0, end_step=end, frequency=every)
  return FineTune(pruning.magnitude(schedule), epochs=epochs, lr=3e-3)


RECIPES = tuple(
  Recipe(
    f"gradual_{round(100 * t)}",
    functools.partial(build, t),
    order=20 + i,
    description=f"polynomial 0 -> {t:.0%}",
    full_only=t != 0.95,  # the default run keeps one point of the schedule
  )
  for i, t in enumerate((0.90, 0.95, 0.98))
)
