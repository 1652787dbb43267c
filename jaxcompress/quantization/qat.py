"""Quantization-aware training of weights and activations at every matmul and conv.

:func:`qat` rewrites a model (through :mod:`jaxcompress.graph`) so each selected site
quantizes its weight (symmetric, per output channel or per tensor) and its activation
(symmetric per tensor, dynamic or at calibrated ranges) and then either

- ``integer=True``: runs the op on the codes, ``int8 × int8 → int32``, and rescales
  once (weights of 2..8 bits use int8 containers, so W4A8 and W2A8 also run as int8
  dots), or
- ``integer=False``: fake-quantizes both operands and runs the op in float.

Both have the same straight-through gradients: the backward pass differentiates the op
at the dequantized operands and passes the gradient through the rounding, zeroing it
where an operand was clipped. The forward outputs agree up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core import select, validate
from jaxcompress.core.base import Compressor
from jaxcompress.quantization import calibration, uniform
from jaxcompress.quantization.activation_quant import activation_scale
from jaxcompress.quantization.fake_quant import fake_quant
from jaxcompress.quantization.spec import QuantSpec


def _weight_scale(site: graph.Site, w: jax.Array, bits: int, per_channel: bool) -> jax.Array:
  """Symmetric scale of the weight operand: per output feature, or per tensor."""
  axes = tuple(a for a in range(w.ndim) if not per_channel or a not in site.feature_axes)
  return uniform.symmetric_params(jnp.max(jnp.abs(w), axis=axes, keepdims=True), uniform.qmax(bits))


def _codes(x: jax.Array, scale: jax.Array, q: int) -> tuple[jax.Array, jax.Array]:
  """int8 codes and the straight-through mask (inside the end codes' rounding bins)."""
  v = x * (1.0 / scale)
  return jnp.clip(jnp.round(v), -q, q).astype(jnp.int8), jnp.abs(v) <= q + 0.5


def _out_layout(site: graph.Site, w_scale: jax.Array) -> jax.Array:
  """A per-output-feature weight scale laid out on the op's output."""
  if w_scale.size == 1:
    return w_scale.reshape(())
  from jaxcompress.quantization.serve import _output_scale

  out = _output_scale(site, w_scale)
  assert out is not None
  return out


def site_rule(
  weight_bits: int,
  act_spec: QuantSpec,
  *,
  per_channel: bool = True,
  integer: bool = True,
  act_ranges: dict | None = None,
) -> graph.Rule:
  """The rewrite rule of :func:`qat` (see the module docstring)."""
  qw, qa = uniform.qmax(weight_bits), act_spec.qrange[1]

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    w_scale = jax.lax.stop_gradient(_weight_scale(site, weight, weight_bits, per_channel))
    a_scale, _ = activation_scale(act_spec, site, activation, act_ranges)
    a_scale = jax.lax.stop_gradient(jnp.reshape(a_scale, ()))

    @jax.custom_vjp
    def op(a, w):
      return forward(a, w)[0]

    def forward(a, w):
      a_codes, a_in = _codes(a, a_scale, qa)
      w_codes, w_in = _codes(w, w_scale, qw)
      if integer:
        acc = site.compute(a_codes, w_codes, preferred_element_type=jnp.int32)
        out = (acc.astype(jnp.float32) * (a_scale * _out_layout(site, w_scale))).astype(a.dtype)
      else:
        a_q = a_codes.astype(a.dtype) * a_scale
        w_q = w_codes.astype(w.dtype) * w_scale
        out = site.compute(a_q, w_q)
      return out, (a_codes, a_in, w_codes, w_in)

    def backward(res, g):
      a_codes, a_in, w_codes, w_in = res
      a_q = a_codes.astype(g.dtype) * a_scale
      w_q = w_codes.astype(g.dtype) * w_scale.astype(g.dtype)
      _, pullback = jax.vjp(site.compute, a_q, w_q)
      da, dw = pullback(g)
      return jnp.where(a_in, da, 0).astype(activation.dtype), jnp.where(w_in, dw, 0).astype(weight.dtype)

    op.defvjp(forward, backward)
    return op(activation, weight)

  return rule


class QAT(NamedTuple):
  """The result of :func:`qat`.

  Attributes:
    apply: ``apply(params, *inputs)``: the model with quantized weights and activations
      at every selected site; differentiable in ``params`` (straight-through).
    compressor: for ``jaxcompress.train``: its ``apply`` leaves the params alone (the
      weights are quantized inside ``apply`` above, at the op), its ``pack`` stores the
      selected weights as :class:`~jaxcompress.export.QArray` with the same scales.
  """

  apply: Callable[..., Any]
  compressor: Compressor


def qat(
  apply_fn: Callable[..., Any],
  *,
  weight_bits: int = 8,
  act_bits: int = 8,
  per_channel: bool = True,
  integer: bool = True,
  act_ranges: dict | None = None,
  where: select.Where = None,
) -> QAT:
  """Quantization-aware training with weights and activations quantized at each op.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the float model.
    weight_bits: 2..8 with ``integer`` (int8 containers), 2..16 otherwise.
    act_bits: 2..8 with ``integer``, 2..16 otherwise; symmetric per tensor.
    per_channel: weight scales per output feature (else per tensor).
    integer: run the forward op as ``int8 × int8 → int32`` (see the module docstring).
    act_ranges: calibrated ``{site.key: (xmin, xmax)}``; ``None`` uses each batch's range.
    where: which sites, by weight path (default: every site).

  Returns:
    A :class:`QAT` with the quantized ``apply`` and the packing compressor.

  Raises:
    ValueError: on bit-widths out of range.

  References:
    Jacob et al. 2018, https://arxiv.org/abs/1712.05877 (integer-arithmetic inference).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> q = qat(lambda p, x: x @ p['w'], weight_bits=4)
    >>> params = {'w': jnp.array([[0.7, -0.2], [0.1, 0.4]])}
    >>> [round(v, 3) for v in q.apply(params, jnp.ones((1, 2)))[0].tolist()]
    [0.8, 0.229]
  """
  if act_ranges is not None:
    calibration.check_ranges(act_ranges)
  high = 8 if integer else 16
  validate.check_bits("weight_bits", weight_bits, low=2, high=high)
  validate.check_bits("act_bits", act_bits, low=2, high=high)
  rule = site_rule(weight_bits, QuantSpec(act_bits), per_channel=per_channel, integer=integer, act_ranges=act_ranges)
  c = fake_quant(weight_bits, per_channel=per_channel, where=where)
  packer = Compressor(c.init, lambda params, state: params, c.update, c.pack)
  return QAT(graph.rewrite(apply_fn, rule, where=where), packer)
