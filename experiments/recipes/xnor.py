"""XNOR-Net-scaled binary weights: sign(w) times alpha = mean|w| per output channel.

Rastegari et al. 2016, https://arxiv.org/abs/1603.05279 (weights only; activations
stay float).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.xnor_net(), epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe("xnor", build, order=61, description="binary kernels, alpha per channel, fine-tune")
