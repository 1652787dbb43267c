"""Structured pruning of the conv net: remove 50% of the channels of every prunable
group (conv filters and hidden units, by L1 filter norm), physically, then fine-tune
the narrower network.

Li et al. 2017, "Pruning Filters for Efficient ConvNets", https://arxiv.org/abs/1608.08710.
"""

import numpy as np

from experiments.recipes import _narrow
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  example = np.zeros((1, 8, 8, 1), np.float32)
  compressor = pruning.channel_prune(0.5, apply_fn=trainer.model.apply, inputs=[example])
  del params
  return FineTune(compressor, epochs=trainer.epochs(30), lr=1e-3, flops=_narrow.flops(trainer.model))


RECIPE = Recipe("channels_50", build, models=("lenet5",), order=15, description="50% channels (L1), shrunk + fine-tune")
