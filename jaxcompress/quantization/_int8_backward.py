"""The int8 backward pass of an integer matmul: both gradient products as int8 dots.

For ``y = x @ w`` (``x`` of shape ``(..., k)``, ``w`` of shape ``(k, n)``) whose forward ran
on int8 codes, ``x = a_scale · (a_codes + shift)`` and ``w = w_codes · w_scale`` (one scale
per output feature, or one for the tensor), the two backward products reuse those codes
(no re-quantization) and quantize only the incoming gradient ``g`` (shape ``(..., n)``), to
int8 with stochastic rounding, so that both run as ``int8 × int8 → int32``:

- input gradient ``dx = g @ wᵀ = (g · w_scale) @ w_codesᵀ``: the weight's per-output
  scale lies along this product's contracted axis, so it is folded into ``g`` first; that
  product is then quantized with one scale per row (each example's ``max |·|``, the
  scale varying along ``dx``'s free row axis), ``dx = s_row · (q_row @ w_codesᵀ)``;
- weight gradient ``dw = xᵀ @ g``: ``g`` is quantized with one scale per column (each
  output feature's ``max |·|`` over the batch, along ``dw``'s free column axis), ``dw =
  a_scale · s_col · (a_codesᵀ @ q_col + shift · Σ_rows q_col)``.

Each scale is ``max |·| / 127`` over the contracted axis, as AQT calibrates the gradient
operand of its ``dlhs``/``drhs`` dots (per-channel over the contraction, Abdolrashidi et
al. 2021) and Qwix shifts the residual's scale into the gradient; stochastic rounding
``floor(v + u)``, ``u ~ U[0, 1)``, keeps each quantized gradient unbiased (Gupta et al.
2015). The two quantizations of ``g`` use independent noise (the two 16-bit halves of one
32-bit draw per element, :func:`uniform_pair`). The int32 sums are exact
while ``127 · 255 · rows < 2^31`` (rows below 66,000; more rows: split the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.quantization import uniform

_Q = 127  # int8 narrow range


def uniform_pair(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Two independent uniform noises on ``[0, 1)`` from one 32-bit draw per element.

  Each is the midpoint ``(h + 0.5) / 2^16`` of one 16-bit half ``h`` of the bits, so its
  mean is exactly 1/2 and stochastic rounding with it is unbiased for any value on a
  ``2^-16`` grid of a level (a float32 code near 127 resolves only ``2^-17`` anyway); it
  halves the random-number work of two full-precision draws.

  Args:
    key: a PRNG key.
    shape: the noises' shape.

  Returns:
    Two float32 arrays of ``shape``.
  """
  bits = jax.random.bits(key, shape, jnp.uint32)
  lo, hi = (bits & 0xFFFF).astype(jnp.float32), (bits >> 16).astype(jnp.float32)
  return (lo + 0.5) * 2.0**-16, (hi + 0.5) * 2.0**-16


def stochastic_codes(x: jax.Array, axis: int, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric int8 codes of ``x`` with stochastic rounding, one scale per slice along ``axis``.

  Args:
    x: float array.
    axis: the axis each scale's ``max |x|`` runs over (the contracted axis of the product
      the codes feed).
    noise: uniform noise on ``[0, 1)`` of ``x``'s shape (:func:`uniform_pair`).

  Returns:
    ``(codes, scale)``: ``int8`` codes ``clip(floor(x / scale + noise), -127, 127)`` (so
    ``E[codes · scale] = x``) and the float32 ``scale = max(max |x| / 127, tiny)``
    (keepdims along ``axis``).
  """
  x = x.astype(jnp.float32)
  scale = uniform.symmetric_params(jnp.max(jnp.abs(x), axis=axis, keepdims=True), _Q)
  codes = jnp.clip(jnp.floor(uniform.times_reciprocal(x, scale) + noise), -_Q, _Q).astype(jnp.int8)
  return codes, scale


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
  return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=jnp.int32)


def _transposed(a: jax.Array) -> jax.Array:
  """``a.T`` of a 2-D array, materialized row-major. XLA's CPU backend runs an int8 dot
  through its fast int8 kernels only on row-major operands; a transpose it may fold into the
  dot's layout instead turns the dot into a slow int32 one (4x slower than float32 at the
  weight gradient's shapes), so the transposed codes pass through a flat barrier."""
  rows = a.shape[1]
  return jax.lax.optimization_barrier(jnp.transpose(a).reshape(-1)).reshape(rows, -1)


def int8_matmul_grads(
  g: jax.Array,
  a_codes: jax.Array,
  shift: jax.Array | None,
  a_scale: jax.Array,
  w_codes: jax.Array,
  w_scale: jax.Array,
  key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """``(dx, dw)`` of ``y = x @ w`` from the forward's int8 codes and an int8 gradient (module docstring).

  Args:
    g: float gradient of ``y``, shape ``(..., n)``.
    a_codes: ``int8`` activation codes, shape ``(..., k)``.
    shift: ``int32`` scalar the codes are offset by (``x = a_scale · (a_codes + shift)``),
      or ``None`` (symmetric codes).
    a_scale: float scalar activation scale.
    w_codes: ``int8`` weight codes, shape ``(k, n)``.
    w_scale: float weight scale, a scalar or one per output feature (any shape of ``n``
      elements).
    key: a PRNG key (one draw, :func:`uniform_pair`, for the two gradients' noise).

  Returns:
    ``(dx, dw)`` in float32, of the shapes of ``a_codes`` and ``w_codes``.
  """
  k, n = w_codes.shape
  g2 = g.reshape(-1, n).astype(jnp.float32)
  a2 = a_codes.reshape(-1, k)
  w_scale = jnp.broadcast_to(jnp.reshape(w_scale, (-1,)).astype(jnp.float32), (n,))
  u_dx, u_dw = uniform_pair(key, g2.shape)
  q_row, s_row = stochastic_codes(g2 * w_scale, 1, u_dx)
  dx = _dot(q_row, w_codes, (1, 1)).astype(jnp.float32) * s_row
  q_col, s_col = stochastic_codes(g2, 0, u_dw)
  acc = _dot(_transposed(a2), q_col, (1, 0))
  if shift is not None:
    acc = acc + shift * jnp.sum(q_col, axis=0, dtype=jnp.int32)
  dw = acc.astype(jnp.float32) * (jnp.reshape(a_scale, ()).astype(jnp.float32) * s_col)
  return dx.reshape(a_codes.shape), dw
