"""Iterative magnitude pruning with rewinding: 3 rounds of 54% reach 90%.

Each round trains, prunes 54% of the surviving weights of every layer and rewinds the
survivors to their values one epoch into this fine-tune (late rewinding); the last 40%
of the run retrains the final ticket.

Frankle & Carbin 2019, https://arxiv.org/abs/1803.03635; Frankle et al. 2020,
https://arxiv.org/abs/1912.05671.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  epochs = trainer.epochs(60)
  total = epochs * trainer.steps_per_epoch
  round_steps = max(2, int(0.2 * total))
  rewind = min(trainer.steps_per_epoch, round_steps - 1)
  compressor = pruning.lottery_ticket(
    0.5358, rounds=3, frequency=round_steps, rewind_step=rewind, total_steps=total
  )  # 1 - (1 - 0.5358)**3 = 0.900
  return FineTune(compressor, epochs=epochs, lr=3e-3)


RECIPE = Recipe("lottery_90", build, order=13, description="IMP 3 rounds x 54%, rewind to epoch 1", full_only=True)
