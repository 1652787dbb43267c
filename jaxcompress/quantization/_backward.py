"""Quantized backward pass: low-bit error signals inside each site's gradient.

Training in low precision quantizes not only weights and activations but also the
gradient flowing back into each matmul (the error signal). Here the incoming gradient of
a site is quantized per tensor with stochastic rounding, which keeps it unbiased, before
both backward products (the activation gradient and the weight gradient) are formed;
optionally the weight gradient is quantized too.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core import validate
from jaxcompress.quantization import uniform


def stochastic_quantize(x: jax.Array, bits: int, key: jax.Array) -> jax.Array:
  """Symmetric per-tensor quantization with stochastic rounding, dequantized.

  Each value rounds up with probability equal to its distance from the lower code, so
  ``E[result] = x`` (unbiased); the scale is ``max|x| / (2^(b-1) - 1)``.

  Args:
    x: float array.
    bits: 2..16.
    key: a PRNG key.

  Returns:
    The quantized ``x`` as floats on the grid.
  """
  q = uniform.qmax(bits)
  scale = uniform.symmetric_params(jnp.max(jnp.abs(x)), q)
  v = x / scale
  noise = jax.random.uniform(key, x.shape, x.dtype)
  return jnp.clip(jnp.floor(v + noise), -q, q) * scale


def quantized_backward(
  rule: graph.Rule, key: jax.Array, *, error_bits: int = 8, weight_grad_bits: int | None = None
) -> graph.Rule:
  """Wraps a rewrite rule so its backward pass uses a quantized error signal.

  The forward pass is ``rule``'s. In the backward pass the gradient arriving at the
  site's output is replaced by :func:`stochastic_quantize` of it at ``error_bits``
  before it is pulled back through ``rule`` (so both the activation gradient and the
  weight gradient are products with the quantized error); with ``weight_grad_bits`` the
  weight gradient is then quantized too. Each site draws its own noise from ``key``
  folded with a hash of the site's key, so pass a fresh ``key`` every step.

  Args:
    rule: the forward rule, for example
      :func:`~jaxcompress.quantization.activation_rule`'s.
    key: a PRNG key for the stochastic rounding.
    error_bits: bits of the error signal, 2..16.
    weight_grad_bits: bits of the weight gradient, or ``None`` to keep it in float.

  Returns:
    A rule for :func:`jaxcompress.graph.rewrite`.

  Raises:
    ValueError: on bit-widths outside 2..16.

  References:
    Zhou et al. 2016, "DoReFa-Net", https://arxiv.org/abs/1606.06160 (quantized
    gradients); Gupta et al. 2015, "Deep Learning with Limited Numerical Precision",
    https://arxiv.org/abs/1502.02551 (stochastic rounding).
  """
  validate.check_bits("error_bits", error_bits, low=2)
  if weight_grad_bits is not None:
    validate.check_bits("weight_grad_bits", weight_grad_bits, low=2)

  def new_rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    site_key = jax.random.fold_in(key, zlib.crc32(site.key.encode()) & 0x7FFFFFFF)

    @jax.custom_vjp
    def f(a, w):
      return rule(site, a, w)

    def fwd(a, w):
      out, pullback = jax.vjp(lambda a, w: rule(site, a, w), a, w)
      return out, pullback

    def bwd(pullback, g):
      k_err, k_w = jax.random.split(site_key)
      da, dw = pullback(stochastic_quantize(g, error_bits, k_err))
      if weight_grad_bits is not None:
        dw = stochastic_quantize(dw, weight_grad_bits, k_w)
      return da, dw

    f.defvjp(fwd, bwd)
    return f(activation, weight)

  return new_rule
