"""SparseGPT (Frantar & Alistarh 2023, https://arxiv.org/abs/2301.00774), one-shot, no fine-tuning.

- ``sparsegpt_50``: 50% unstructured per kernel, masks chosen per block of 128 input columns
  by the OBS saliency ``w² / [H⁻¹]_jj``, the survivors updated by the OBS step.
- ``sparsegpt_2_4``: 2 of every 4 consecutive input weights, the same update.

``pruning.sparsegpt`` on the 36 Dense kernels, sequential, Hessians over the real tokens of
the calibration sentences; packed by ``pruning.fixed(masks)`` (survivors stored sparse), served
as the dense view. Compare with ``magnitude_50`` / ``magnitude_2_4``.
"""

import functools

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import pruning


def sparsegpt(ctx: Context, n_m) -> Result:
  r = pruning.sparsegpt(
    ctx.apply, ctx.params, list(ctx.calibration), sparsity=0.5, n_m=n_m, where=ctx.where, token_mask=lambda b: b[1]
  )
  c = pruning.fixed(r.masks)
  packed = c.pack(*c.init(r.params))
  return Result(packed, ctx.embed(packed))


METHODS = (
  Method("sparsegpt_50", functools.partial(sparsegpt, n_m=None), order=42, description="SparseGPT 50%", quick=True),
  Method("sparsegpt_2_4", functools.partial(sparsegpt, n_m=(2, 4)), order=43, description="SparseGPT 2:4"),
)
