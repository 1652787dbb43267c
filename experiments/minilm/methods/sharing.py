"""K-means weight sharing, 16 clusters per kernel (4-bit indices), no fine-tuning.

Han, Mao & Dally 2016, "Deep Compression" §3, https://arxiv.org/abs/1510.00149
(``quantization.kmeans``, linear init). Served as the dense view.
"""

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import quantization


def kmeans16(ctx: Context) -> Result:
  return ctx.compress(quantization.kmeans(16, iterations=30, where=ctx.where))


METHODS = (Method("kmeans16", kmeans16, order=60, description="k-means 16 per kernel, no fine-tune"),)
