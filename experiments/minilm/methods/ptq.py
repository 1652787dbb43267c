"""Post-training quantization with what ``jaxcompress.quantization`` has, no calibration of weights.

- ``w8a8``: int8 symmetric per-channel weights, int8 asymmetric per-tensor activations at
  min-max ranges calibrated on the calibration batches (``quantization.ptq(act_bits=8)``),
  evaluated as fake-quant (dequantized weights, fake-quantized activations).
- ``w8a8_served``: the same packed model through ``quantization.serve``'s int8 × int8 → int32
  matmuls (Jacob et al. 2018, https://arxiv.org/abs/1712.05877).
- ``int8``: weight-only int8 per channel (round to nearest).
- ``int4_g128`` / ``int4_g64``: weight-only int4, symmetric, one scale per group of 128 / 64
  input rows of each output column (round to nearest: the baseline GPTQ and AWQ improve on).
"""

import functools

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import quantization


def _batches(ctx: Context):
  return [(ids, mask) for ids, mask in ctx.calibration]


def w8a8(ctx: Context, served: bool) -> Result:
  q = quantization.ptq(ctx.apply, ctx.params, weight_bits=8, act_bits=8, batches=_batches(ctx), where=ctx.where)
  if served:
    fn = quantization.serve(ctx.apply, q.packed, act_ranges=q.act_ranges)
    return Result(q.packed, fn)
  return Result(q.packed, ctx.embed(q.packed, q.apply))


def weight_only(ctx: Context, bits: int, group_size: int | None) -> Result:
  q = quantization.ptq(
    ctx.apply, ctx.params, weight_bits=bits, per_channel=group_size is None, group_size=group_size, where=ctx.where
  )
  return Result(q.packed, ctx.embed(q.packed, q.apply))


METHODS = (
  Method("w8a8", functools.partial(w8a8, served=False), order=10, description="PTQ W8A8 (fake-quant)", quick=True),
  Method("w8a8_served", functools.partial(w8a8, served=True), order=11, description="PTQ W8A8, int8 matmuls"),
  Method("int8", functools.partial(weight_only, bits=8, group_size=None), order=12, description="int8 weight-only"),
  Method("int4_g128", functools.partial(weight_only, bits=4, group_size=128), order=20, description="int4 g128 RTN"),
  Method(
    "int4_g64", functools.partial(weight_only, bits=4, group_size=64), order=21, description="int4 g64 RTN", quick=True
  ),
)
