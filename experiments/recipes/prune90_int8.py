"""Deep-Compression-like: magnitude pruning to 90%, then int8 codes on the survivors.

Han, Mao & Dally 2016, "Deep Compression", https://arxiv.org/abs/1510.00149 (uniform
int8 here instead of k-means codebooks, and no Huffman stage).
"""

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning, quantization


def build(params, trainer):
  del params
  compressor = jc.chain(pruning.magnitude(0.9), quantization.fake_quant(8, per_channel=True))
  return FineTune(compressor, epochs=trainer.epochs(60), lr=3e-3)


RECIPE = Recipe("prune90_int8", build, order=50, description="magnitude 90% + int8, fine-tune")
