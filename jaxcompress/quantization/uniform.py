"""Symmetric uniform quantization numerics, with a straight-through gradient."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def qmax(bits: int) -> int:
  """Largest code of symmetric narrow-range ``bits``-bit quantization: ``2**(bits-1) - 1``.

  Codes lie in ``[-qmax, qmax]`` so that zero is exact and the range is symmetric.
  """
  return (1 << (bits - 1)) - 1


def symmetric_scale(x: jax.Array, bits: int, channel_axes: Sequence[int] = ()) -> jax.Array:
  """Scale mapping ``max |x|`` to the largest code: ``scale = max|x| / qmax``.

  Args:
    x: float array.
    bits: 2..16.
    channel_axes: axes that keep their own scale (per-channel); the maximum is taken
      over all other axes. Empty for per-tensor.

  Returns:
    A float array broadcastable to ``x`` (``keepdims`` over the reduced axes), floored
    at the smallest normal number of ``x``'s dtype so that constant-zero tensors and
    channels give finite, exact zeros instead of NaN.
  """
  axes = tuple(a for a in range(x.ndim) if a not in {c % x.ndim for c in channel_axes})
  amax = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  return jnp.maximum(amax / qmax(bits), jnp.finfo(x.dtype).tiny)


def quantize(x: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  """Codes ``clip(round(x / scale), -qmax, qmax)`` as ``int32`` (round half to even)."""
  q = qmax(bits)
  return jnp.clip(jnp.round(x / scale), -q, q).astype(jnp.int32)


@jax.custom_vjp
def _fake_quant(x: jax.Array, scale: jax.Array, bits_array: jax.Array) -> jax.Array:
  q = bits_array  # qmax, carried as an array so custom_vjp sees only arrays
  return jnp.clip(jnp.round(x / scale), -q, q) * scale


def _fake_quant_fwd(x, scale, q):
  # In range means inside the rounding bins of the end codes; comparing in code units
  # keeps the largest weight (x / scale == qmax up to rounding) inside.
  inside = jnp.abs(x / scale) <= q + 0.5
  return _fake_quant(x, scale, q), (inside, scale, q)


def _fake_quant_bwd(res, g):
  inside, scale, q = res
  return g * inside.astype(g.dtype), jnp.zeros_like(scale), jnp.zeros_like(q)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(x: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  """Quantize then dequantize: ``clip(round(x / scale), -qmax, qmax) * scale``.

  Gradient: straight-through, ``dL/dx = dL/dy`` where ``|x / scale| <= qmax + 1/2``
  (the rounding bins of the codes) and 0 outside (the clipped STE); no gradient flows
  to ``scale``.

  Args:
    x: float array.
    scale: float array broadcastable to ``x``, positive.
    bits: 2..16.

  Returns:
    An array of ``x``'s shape and dtype on the quantization grid.

  References:
    Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients Through
    Stochastic Neurons", https://arxiv.org/abs/1308.3432 (straight-through estimator).
  """
  q = jnp.asarray(qmax(bits), x.dtype)
  return _fake_quant(x, jnp.asarray(scale, x.dtype), q)
