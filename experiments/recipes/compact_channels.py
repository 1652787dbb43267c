"""ShuffleNetV2-small with 50% of its channels removed: the dependency groups run through
the channel split, the shuffle, the depthwise convs and the concatenations, so the pruned
network is a narrower ShuffleNetV2 (by L1 filter norm, one-shot, then fine-tuned).

Li et al. 2017, "Pruning Filters for Efficient ConvNets", https://arxiv.org/abs/1608.08710.
"""

import numpy as np

from experiments.recipes import _narrow
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning


def build(params, trainer):
  del params
  example = np.zeros((1, 8, 8, 1), np.float32)
  compressor = pruning.channel_prune(0.5, apply_fn=trainer.model.apply, inputs=[example])
  return FineTune(compressor, epochs=trainer.epochs(30), lr=1e-3, flops=_narrow.flops(trainer.model))


RECIPE = Recipe(
  "compact_channels_50",
  build,
  models=("shufflenet_v2_small",),
  order=16,
  description="ShuffleNetV2: 50% channels (L1), shrunk + fine-tune",
  full_only=True,
)
