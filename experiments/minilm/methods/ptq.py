"""Post-training quantization with what ``jaxcompress.quantization`` has; round to nearest, no weight calibration.

- ``w8a8``: int8 symmetric per-channel weights (``quantization.ptq``), int8 asymmetric
  per-tensor activations at min-max ranges over the calibration sentences' real tokens
  (``Context.act_ranges``, with the quantized weights in place), evaluated as fake-quant
  (dequantized weights, ``activation_rule`` at every Dense input).
- ``w8a8_served``: the same packed model and ranges through ``quantization.serve``'s
  int8 × int8 → int32 matmuls (Jacob et al. 2018, https://arxiv.org/abs/1712.05877).
- ``w8a8_ptq``: ``quantization.ptq(act_bits=8, batches=...)`` as the library does it alone:
  its calibration sees the padding positions too.
- ``w8a8_ptq_masked``: the same call with ``token_mask=1`` (the attention mask): only real
  tokens set the ranges, so it matches ``w8a8``.
- ``w8a8_dynamic``: int8 symmetric per-channel weights, int8 symmetric activations with a
  scale per token computed on the fly (``quantization.ptq(act_per_token=True)``, SmoothQuant's
  O1 granularity; Qwix's default dynamic W8A8), fake-quant.
- ``int8``: weight-only int8 per channel.
- ``int4_g128`` / ``int4_g64``: weight-only int4, symmetric, one scale per group of 128 / 64
  input rows of each output column: the round-to-nearest baseline of GPTQ and AWQ.
- ``int4_g128_pytorch`` / ``int4_g64_pytorch``: the same with ``convention='pytorch'``: 16
  levels, codes -8..7 at absmax/7.5 (torch.ao's and Qwix's symmetric grid), where the default
  narrow grid has 15 (-7..7 at absmax/7).
"""

import functools

import jax

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import export, graph, quantization


def w8a8(ctx: Context, served: bool) -> Result:
  packed = quantization.ptq(ctx.apply, ctx.params, weight_bits=8, where=ctx.where).packed
  ranges = ctx.act_ranges(jax.jit(export.materialize_tree)(packed))
  if served:
    return Result(packed, quantization.serve(ctx.apply, packed, act_ranges=ranges))
  rule = quantization.activation_rule(quantization.QuantSpec(8, symmetric=False), ranges)
  fake = graph.rewrite(ctx.apply, rule, where=ctx.where)
  return Result(packed, ctx.embed(packed, lambda p, ids, mask: fake(export.materialize_tree(p), ids, mask)))


def w8a8_ptq(ctx: Context) -> Result:
  batches = list(ctx.calibration)
  q = quantization.ptq(ctx.apply, ctx.params, weight_bits=8, act_bits=8, batches=batches, where=ctx.where)
  return Result(q.packed, ctx.embed(q.packed, q.apply))


def w8a8_ptq_masked(ctx: Context) -> Result:
  batches = list(ctx.calibration)
  q = quantization.ptq(ctx.apply, ctx.params, weight_bits=8, act_bits=8, batches=batches, where=ctx.where, token_mask=1)
  return Result(q.packed, ctx.embed(q.packed, q.apply))


def w8a8_dynamic(ctx: Context) -> Result:
  q = quantization.ptq(
    ctx.apply, ctx.params, weight_bits=8, act_bits=8, act_symmetric=True, act_per_token=True, where=ctx.where
  )
  return Result(q.packed, ctx.embed(q.packed, q.apply), notes="dynamic per-token activations")


def weight_only(ctx: Context, bits: int, group_size: int | None, convention: str = "narrow") -> Result:
  q = quantization.ptq(
    ctx.apply,
    ctx.params,
    weight_bits=bits,
    per_channel=group_size is None,
    group_size=group_size,
    where=ctx.where,
    convention=convention,
  )
  return Result(q.packed, ctx.embed(q.packed, q.apply))


METHODS = (
  Method("w8a8", functools.partial(w8a8, served=False), order=10, description="W8A8, real-token ranges", quick=True),
  Method("w8a8_served", functools.partial(w8a8, served=True), order=11, description="W8A8 served, int8 matmuls"),
  Method("w8a8_ptq", w8a8_ptq, order=12, description="quantization.ptq W8A8 (padding calibrated)"),
  Method("w8a8_ptq_masked", w8a8_ptq_masked, order=12, description="quantization.ptq W8A8, token_mask=1"),
  Method("w8a8_dynamic", w8a8_dynamic, order=17, description="W8A8, dynamic per-token activations (O1)"),
  Method("int8", functools.partial(weight_only, bits=8, group_size=None), order=13, description="int8 weight-only"),
  Method("int4_g128", functools.partial(weight_only, bits=4, group_size=128), order=20, description="int4 g128 RTN"),
  Method(
    "int4_g64", functools.partial(weight_only, bits=4, group_size=64), order=21, description="int4 g64 RTN", quick=True
  ),
  Method(
    "int4_g128_pytorch",
    functools.partial(weight_only, bits=4, group_size=128, convention="pytorch"),
    order=22,
    description="int4 g128 RTN, 16-level grid (torch/Qwix)",
  ),
  Method(
    "int4_g64_pytorch",
    functools.partial(weight_only, bits=4, group_size=64, convention="pytorch"),
    order=22,
    description="int4 g64 RTN, 16-level grid (torch/Qwix)",
  ),
)
