"""Truncated SVD of the MLP kernels, no fine-tuning, served as the factors' ops ``(x @ u) @ v``.

Denton et al. 2014, https://arxiv.org/abs/1404.0736 (``lowrank.svd`` with ``ratio=``: the
largest rank whose factors take at most that fraction of the kernel's parameters;
``lowrank.serve``). The attention kernels stay dense.
"""

import functools

from experiments.minilm.methods.base import MLP, Context, Method, Result
from jaxcompress import lowrank


def svd(ctx: Context, ratio: float) -> Result:
  c = lowrank.svd(ratio=ratio, where=MLP)
  trainable, state = c.init(ctx.params)
  packed = c.pack(trainable, state)
  return Result(packed, lowrank.serve(ctx.apply, packed))


METHODS = (
  Method("svd_mlp_50", functools.partial(svd, ratio=0.5), order=70, description="SVD of the MLP kernels, 50% params"),
)
