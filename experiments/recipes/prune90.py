"""Pruning and quantization in one chain: magnitude pruning to 90%, then int8 or int4 codes,
binary weights or a 16-entry k-means codebook on the survivors (the k-means row is Deep
Compression's pruning + trained quantization, without its Huffman stage and in one
fine-tuning phase instead of two).

Han, Mao & Dally 2016, "Deep Compression", https://arxiv.org/abs/1510.00149.
"""

import functools

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning, quantization

QUANTIZERS = {
  "int8": (lambda: quantization.fake_quant(8, per_channel=True), 60, 3e-3, 50),
  "int4": (lambda: quantization.fake_quant(4, per_channel=True), 60, 3e-3, 51),
  "binary": (lambda: quantization.binary_connect(), 60, 3e-3, 52),
  "kmeans16": (lambda: quantization.kmeans(16, iterations=30), 30, 1e-3, 53),
}


def build(name, params, trainer):
  del params
  quantizer, epochs, lr, _ = QUANTIZERS[name]
  compressor = jc.chain(pruning.magnitude(0.9), quantizer())
  return FineTune(compressor, epochs=trainer.epochs(epochs), lr=lr)


RECIPES = tuple(
  Recipe(
    f"prune90_{name}", functools.partial(build, name), order=order, description=f"magnitude 90% + {name}, fine-tune"
  )
  for name, (_, _, _, order) in QUANTIZERS.items()
)
