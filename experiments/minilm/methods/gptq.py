"""GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323) beside round-to-nearest on the same grid.

- ``gptq4_g128`` / ``gptq3_g128``: ``quantization.gptq`` on the 36 Dense kernels: 4 / 3 bits,
  affine (zero point) per group of 128 input rows, act-order (static groups), damping 0.01,
  sequential (each layer's Hessian from the inputs of the already quantized layers), Hessians
  over the real tokens of the calibration sentences (``token_mask`` = the attention mask).
- ``int4_g128_affine`` / ``int3_g128_affine``: round to nearest on that same grid (affine, per
  group of 128), ``quantization.ptq``: the baseline GPTQ must beat at equal bits and groups.

- ``gptq4_g128_sym``: the same on the symmetric int4 g128 grid of ``int4_g128`` (the grid
  Qwix's GPTQ supports: the peer row ``qwix_gptq4_g128``).

Weight-only: served as the dense view (dequantized weights).
"""

import functools

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import quantization


def gptq(ctx: Context, bits: int, symmetric: bool = False) -> Result:
  q = quantization.gptq(
    ctx.apply,
    ctx.params,
    list(ctx.calibration),
    bits=bits,
    group_size=128,
    where=ctx.where,
    token_mask=lambda b: b[1],
    symmetric=symmetric,
  )
  raised = sorted({r.damp for r in q.layers.values() if r.damp > 0.01})
  return Result(q.packed, ctx.embed(q.packed), notes=f"damp raised to {raised}" if raised else "")


def rtn(ctx: Context, bits: int) -> Result:
  q = quantization.ptq(ctx.apply, ctx.params, weight_bits=bits, group_size=128, symmetric=False, where=ctx.where)
  return Result(q.packed, ctx.embed(q.packed, q.apply))


METHODS = (
  Method("int4_g128_affine", functools.partial(rtn, bits=4), order=22, description="int4 g128 affine RTN", quick=True),
  Method("gptq4_g128", functools.partial(gptq, bits=4), order=23, description="GPTQ int4 g128 affine", quick=True),
  Method(
    "gptq4_g128_sym",
    functools.partial(gptq, bits=4, symmetric=True),
    order=23,
    description="GPTQ int4 g128 symmetric",
  ),
  Method("int3_g128_affine", functools.partial(rtn, bits=3), order=24, description="int3 g128 affine RTN"),
  Method("gptq3_g128", functools.partial(gptq, bits=3), order=25, description="GPTQ int3 g128 affine"),
)
