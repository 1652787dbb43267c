"""HWGQ W1A2: binary kernels (sign times mean|w| per output channel) and 2-bit hidden
activations on the half-wave Gaussian quantizer's levels, clipped-ReLU backward.

Cai et al. 2017, https://arxiv.org/abs/1702.00953 (the levels are scaled by each batch's
statistics, which the paper gets from BatchNorm; these models have none).
"""

import jaxcompress as jc
from experiments.recipes._lsq import hidden
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  c = jc.chain(quantization.xnor_net(), quantization.hwgq_activations(2, where=hidden(params)))
  return FineTune(c, epochs=trainer.epochs(30), lr=1e-3)


RECIPE = Recipe(
  "hwgq_w1a2", build, order=62, description="HWGQ W1A2: binary kernels, half-wave Gaussian activations", full_only=True
)
