"""Gradient compression for data-parallel training: QSGD, TernGrad, 1-bit sign with error
feedback.

Each is an optax ``GradientTransformation`` that replaces the cross-device mean of the
gradients: every device encodes its gradient to low-bit codes (plus one float scale per
tensor), the codes are exchanged with ``all_gather`` over ``axis_name`` (so only the
compressed bytes cross devices), and every device decodes and averages them. Use it
first in an ``optax.chain`` inside ``jax.pmap`` or ``shard_map``, with
``jaxcompress.train.make_step(..., axis_name=..., reduce_gradients=False)`` so the
step does not also average the float gradients. Randomness comes from a key kept in
the state, split every step and folded with the device index.

Finite extremes stay finite: norms and means are taken without overflow (scaled by the
power of two at the largest magnitude where the plain sum overflows), half-precision
gradients are encoded in float32, and the averaged result is saturated to the gradient
dtype's finite range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core import validate
from jaxcompress.quantization import uniform


class CompressionState(NamedTuple):
  """State of a gradient compressor.

  Attributes:
    key: PRNG key for stochastic rounding.
    error: error-feedback residual per leaf (sign compression), else ``None``.
  """

  key: jax.Array
  error: Any


class Codec(NamedTuple):
  """How one tensor is encoded: ``encode(g, key) -> (codes, scale)``, ``decode(codes, scale, shape)``,
  and the bits per element the codes take on the wire."""

  encode: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
  decode: Callable[[jax.Array, jax.Array, tuple[int, ...]], jax.Array]
  bits: int


def _pack(codes: jax.Array, bits: int) -> jax.Array:
  """Packs unsigned codes below ``2**bits`` (bits in 1, 2, 4, 8) into bytes."""
  per_byte = 8 // bits
  flat = codes.reshape(-1).astype(jnp.uint8)
  flat = jnp.pad(flat, (0, (-flat.size) % per_byte)).reshape(-1, per_byte)
  shifts = jnp.arange(per_byte, dtype=jnp.uint8) * bits
  return jnp.sum(flat << shifts, axis=1, dtype=jnp.uint8)


def _unpack(data: jax.Array, bits: int, size: int) -> jax.Array:
  per_byte = 8 // bits
  shifts = jnp.arange(per_byte, dtype=jnp.uint8) * bits
  mask = jnp.uint8((1 << bits) - 1)
  return ((data[..., None] >> shifts) & mask).reshape(*data.shape[:-1], -1)[..., :size]


def _norm(g: jax.Array) -> jax.Array:
  """``‖g‖₂`` without overflow: where the plain norm overflows (an entry of 2e19 in
  float32), ``g`` is scaled by the power of two at ``max|g|`` first (exact); a norm
  beyond the largest float32 saturates there."""
  plain = jnp.linalg.norm(g.reshape(-1))
  _, e = jnp.frexp(jnp.max(jnp.abs(g)))
  scaled = jnp.ldexp(jnp.linalg.norm(jnp.ldexp(g, -e).reshape(-1)), e)
  return jnp.where(jnp.isfinite(plain), plain, uniform.saturate(scaled))


def _mean(x: jax.Array, axis: int) -> jax.Array:
  """``mean(x, axis)`` without overflow (the mean of values near the largest float32)."""
  plain = jnp.mean(x, axis=axis)
  _, e = jnp.frexp(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
  scaled = jnp.ldexp(jnp.mean(jnp.ldexp(x, -e), axis=axis), jnp.squeeze(e, axis))
  return jnp.where(jnp.isfinite(plain), plain, scaled)


def qsgd_codec(levels: int) -> Codec:
  """QSGD with ``levels`` quantization levels per sign (Alistarh et al. 2017).

  ``code = sign(g) · ξ`` with ``ξ = floor(|g| / ‖g‖₂ · s + u)``, ``u ~ U[0, 1)``, so
  ``E[decode] = g``; ``decode = ‖g‖₂ · code / s``. Codes travel as int8.
  """

  def encode(g, key):
    g = g.astype(jnp.float32)  # a float16 norm overflows; bf16 levels would be biased
    norm = _norm(g)
    safe = jnp.where(norm > 0, norm, 1.0)
    level = jnp.floor(jnp.abs(g) / safe * levels + jax.random.uniform(key, g.shape, jnp.float32))
    return (jnp.sign(g) * level).astype(jnp.int8), norm

  def decode(codes, norm, shape):
    return (codes.astype(jnp.float32) * (norm / levels)[..., None]).reshape(shape)

  return Codec(encode, decode, 8)


def terngrad_codec() -> Codec:
  """TernGrad (Wen et al. 2017): ``s · sign(g) · b`` with ``s = max|g|`` and
  ``b ~ Bernoulli(|g| / s)``; unbiased. Codes travel at 2 bits."""

  def encode(g, key):
    g = g.astype(jnp.float32)
    s = jnp.max(jnp.abs(g))
    keep = jax.random.uniform(key, g.shape, jnp.float32) * jnp.where(s > 0, s, 1.0) < jnp.abs(g)
    codes = (jnp.sign(g) * keep).astype(jnp.int32) + 1  # {-1, 0, 1} -> {0, 1, 2}
    return _pack(codes, 2), s

  def decode(data, s, shape):
    size = 1
    for d in shape:
      size *= d
    codes = _unpack(data, 2, size).astype(jnp.float32) - 1.0
    return (codes * s[..., None]).reshape(shape)

  return Codec(encode, decode, 2)


def sign_codec() -> Codec:
  """1-bit sign compression: ``(‖g‖₁ / n) · sign(g)`` (Seide et al. 2014; scaled as in
  Karimireddy et al. 2019). Biased alone; use with error feedback. 1 bit per element."""

  def encode(g, key):
    del key
    return _pack((g >= 0).astype(jnp.int32), 1), _mean(jnp.abs(g.astype(jnp.float32)).reshape(-1), 0)

  def decode(data, scale, shape):
    size = 1
    for d in shape:
      size *= d
    signs = _unpack(data, 1, size).astype(jnp.float32) * 2.0 - 1.0
    return (signs * scale[..., None]).reshape(shape)

  return Codec(encode, decode, 1)


def compressed_mean(
  codec: Codec, *, axis_name: str, seed: int = 0, error_feedback: bool = False
) -> optax.GradientTransformation:
  """Averages gradients across devices through a compressing codec.

  Args:
    codec: :func:`qsgd_codec`, :func:`terngrad_codec` or :func:`sign_codec`.
    axis_name: the ``pmap`` / ``shard_map`` axis of the data-parallel devices.
    seed: seed of the PRNG key kept in the state.
    error_feedback: add each device's last compression error to its next gradient
      (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD",
      https://arxiv.org/abs/1901.09847).

  Returns:
    An optax transformation whose ``update`` returns the mean over devices of the
    decoded gradients (identical on every device).
  """
  validate.check_int("seed", seed)

  def init(params):
    error = jax.tree.map(jnp.zeros_like, params) if error_feedback else None
    return CompressionState(key=jax.random.key(seed), error=error)

  def update(updates, state, params=None):
    del params
    grads = updates
    key, step_key = jax.random.split(state.key)
    device_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
    leaves, treedef = jax.tree.flatten(grads)
    errors = treedef.flatten_up_to(state.error) if error_feedback else [None] * len(leaves)
    keys = jax.random.split(device_key, max(len(leaves), 1))
    means, new_errors = [], []
    for g, e, k in zip(leaves, errors, keys):
      # float32 for half types, saturated: g + e and the decoded mean can pass the largest value
      corrected = g if e is None else uniform.saturate(uniform.upcast(g) + uniform.upcast(e))
      codes, scale = codec.encode(corrected, k)
      mine = codec.decode(codes, scale, g.shape)
      new_errors.append(None if e is None else uniform.saturate(corrected - mine, e.dtype))
      all_codes = jax.lax.all_gather(codes, axis_name)  # only the codes cross devices
      all_scales = jax.lax.all_gather(scale, axis_name)
      decoded = jax.vmap(lambda c, s, shape=g.shape: codec.decode(c, s, shape))(all_codes, all_scales)
      means.append(uniform.saturate(_mean(decoded, 0), g.dtype))
    error = treedef.unflatten(new_errors) if error_feedback else None
    return treedef.unflatten(means), CompressionState(key=key, error=error)

  return optax.GradientTransformation(init, update)


def qsgd(levels: int = 16, *, axis_name: str, seed: int = 0) -> optax.GradientTransformation:
  """QSGD gradient averaging across devices.

  Args:
    levels: ``s``, quantization levels per sign, 1..127 (codes travel as int8).
    axis_name: the data-parallel axis.
    seed: PRNG seed.

  Raises:
    ValueError: if ``levels`` is outside 1..127.

  References:
    Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization
    and Encoding", https://arxiv.org/abs/1610.02132.
  """
  validate.check_int("levels", levels, low=1, high=127)
  return compressed_mean(qsgd_codec(levels), axis_name=axis_name, seed=seed)


def terngrad(*, axis_name: str, seed: int = 0) -> optax.GradientTransformation:
  """TernGrad gradient averaging across devices (2 bits per element on the wire).

  References:
    Wen et al. 2017, "TernGrad: Ternary Gradients to Reduce Communication in Distributed
    Deep Learning", https://arxiv.org/abs/1705.07878.
  """
  return compressed_mean(terngrad_codec(), axis_name=axis_name, seed=seed)


def sign_error_feedback(*, axis_name: str) -> optax.GradientTransformation:
  """1-bit sign compression with error feedback (1 bit per element on the wire).

  References:
    Seide et al. 2014, "1-Bit Stochastic Gradient Descent and its Application to
    Data-Parallel Distributed Training of Speech DNNs"; Karimireddy et al. 2019,
    https://arxiv.org/abs/1901.09847.
  """
  return compressed_mean(sign_codec(), axis_name=axis_name, error_feedback=True)


def bytes_sent(params: Any, codec: Codec | None) -> int:
  """Bytes one device sends per step: its codes plus one float32 scale per tensor, or
  ``4 · n`` for uncompressed float32 gradients (``codec=None``)."""
  sizes = [x.size for x in jax.tree.leaves(params)]
  if codec is None:
    return 4 * sum(sizes)
  return sum(-(-n * codec.bits // 8) + 4 for n in sizes)
