"""One-shot magnitude pruning of the Dense kernels, no fine-tuning: the baseline SparseGPT and Wanda improve on.

- ``magnitude_50``: the 50% smallest ``|w|`` of each kernel (Han et al. 2015,
  https://arxiv.org/abs/1506.02626), ``pruning.magnitude``.
- ``magnitude_2_4``: 2 of every 4 consecutive input weights by ``|w|`` (Mishra et al. 2021,
  https://arxiv.org/abs/2104.08378), ``pruning.n_m``.

Served as the dense view (zeros where pruned).
"""

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import pruning


def magnitude_50(ctx: Context) -> Result:
  return ctx.compress(pruning.magnitude(0.5, where=ctx.where))


def magnitude_2_4(ctx: Context) -> Result:
  return ctx.compress(pruning.n_m(2, 4, where=ctx.where))


METHODS = (
  Method("magnitude_50", magnitude_50, order=40, description="magnitude 50% per kernel, one-shot", quick=True),
  Method("magnitude_2_4", magnitude_2_4, order=41, description="magnitude 2:4, one-shot"),
)
