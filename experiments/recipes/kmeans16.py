"""K-means weight sharing: 16 clusters per kernel (4-bit indices), linear init, with
codebook fine-tuning (each centroid trained by the summed gradients of its weights).

Han, Mao & Dally 2016, "Deep Compression" §3, https://arxiv.org/abs/1510.00149.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.kmeans(16, iterations=30), epochs=trainer.epochs(20), lr=3e-4)


RECIPE = Recipe("kmeans16", build, order=65, description="k-means 16 clusters, codebook fine-tune")
