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


def value_aware_backward(rule: graph.Rule, *, bits: int = 4, outlier_fraction: float = 0.01) -> graph.Rule:
  """Wraps a rewrite rule so each site keeps its activation value-aware-quantized for
  the backward pass only (Park, Yoo & Vajda 2018, "quantized back-propagation").

  The forward pass is ``rule``'s, on the full-precision activation. What the site saves
  for its backward pass is the activation compressed: the ``round(outlier_fraction *
  size)`` largest magnitudes as values and flat positions (``lax.top_k``), the rest as
  symmetric ``bits``-bit codes in ``int8`` with one ``float32`` scale (``max|rest| /
  (2^(b-1) - 1)``). The backward pass rebuilds the activation from these and pulls the
  gradient back through ``rule`` at it (recomputing the site's forward there), so the
  weight gradient is a product with the quantized activation while the activation
  gradient is exact. Codes are stored one per byte (not bit-packed), so a 4-bit
  activation saves 4x against float32, not 8x: ``experiments/bench_value_aware.py``
  measures the compiled step's temporary memory.

  Args:
    rule: the forward rule (``lambda site, a, w: site.compute(a, w)`` for the plain op).
    bits: bits of the small activations, 2..8.
    outlier_fraction: the fraction of each activation kept at full precision, ``[0, 1)``.

  Returns:
    A rule for :func:`jaxcompress.graph.rewrite`.

  Raises:
    ValueError: on ``bits`` outside 2..8 or ``outlier_fraction`` outside ``[0, 1)``.

  References:
    Park, Yoo & Vajda 2018, "Value-aware Quantization for Training and Inference of
    Neural Networks", ECCV, https://arxiv.org/abs/1804.07802.
  """
  validate.check_bits("bits", bits, low=2, high=8)
  fraction = validate.check_float("outlier_fraction", outlier_fraction, low=0.0, high=1.0, high_open=True)
  q = uniform.qmax(bits)

  def new_rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    shape, dtype = activation.shape, activation.dtype
    k = round(fraction * activation.size)

    @jax.custom_vjp
    def f(a, w):
      return rule(site, a, w)

    def fwd(a, w):
      flat = uniform.upcast(a).astype(jnp.float32).reshape(-1)
      if k:
        # the k largest magnitudes by radix select (linear, no sort's temporaries)
        _, index = jax.lax.top_k(jnp.abs(flat), k)
        big = flat[index]
        flat = flat.at[index].set(0.0)
      else:
        index, big = jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.float32)
      scale = uniform.symmetric_params(jnp.max(jnp.abs(flat)), q)
      codes = uniform.quantize(flat, scale, bits).astype(jnp.int8)
      return rule(site, a, w), (codes, scale, index, big.astype(dtype), w)

    def bwd(saved, g):
      codes, scale, index, big, w = saved
      a = (codes.astype(jnp.float32) * scale).at[index].set(big.astype(jnp.float32))
      a = uniform.saturate(a, dtype).astype(dtype).reshape(shape)
      _, pullback = jax.vjp(lambda a, w: rule(site, a, w), a, w)
      return pullback(g)

    f.defvjp(fwd, bwd)
    return f(activation, weight)

  return new_rule
