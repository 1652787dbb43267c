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
  """How one tensor is encoded.

  Attributes:
    encode: ``encode(g, key, shared) -> (codes, scale)``; ``shared`` is the scale all
      devices agreed on (``None`` unless ``share`` is set).
    decode: ``decode(codes, scale, shape) -> g``.
    bits: bits per element the codes take on the wire.
    scales: ``scales(n) -> int``: float32 scales sent per tensor of ``n`` elements.
    share: ``share(g) -> scale`` of one device, which :func:`compressed_mean` reduces with
      ``pmax`` over the devices before encoding (TernGrad's scaler sharing), or ``None``.
  """

  encode: Callable[..., tuple[jax.Array, jax.Array]]
  decode: Callable[[jax.Array, jax.Array, tuple[int, ...]], jax.Array]
  bits: int
  scales: Callable[[int], int] = lambda n: 1
  share: Callable[[jax.Array], jax.Array] | None = None


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


def _size(shape: tuple[int, ...]) -> int:
  size = 1
  for d in shape:
    size *= d
  return size


def qsgd_codec(levels: int, bucket_size: int | None = 512) -> Codec:
  """QSGD with ``levels`` quantization levels per sign (Alistarh et al. 2017).

  The flattened gradient is cut into buckets of ``bucket_size`` consecutive entries (the
  paper's ``d = 512``; the last one zero-padded), each with its own norm: ``code =
  sign(g) · ξ`` with ``ξ = floor(|g| / ‖bucket‖₂ · s + u)``, ``u ~ U[0, 1)``, so
  ``E[decode] = g``; ``decode = ‖bucket‖₂ · code / s``. Codes travel as int8, plus one
  float32 norm per bucket. ``bucket_size=None`` is one bucket per tensor (whose variance
  grows with the tensor's size: Alistarh et al., Lemma 3.1).
  """
  if bucket_size is not None:
    bucket_size = validate.check_int("bucket_size", bucket_size, low=1)

  def buckets(n):
    return 1 if bucket_size is None else -(-n // bucket_size)

  def encode(g, key, shared=None):
    del shared
    g = g.astype(jnp.float32).reshape(-1)  # a float16 norm overflows; bf16 levels would be biased
    d = g.size if bucket_size is None else bucket_size
    rows = jnp.pad(g, (0, buckets(g.size) * d - g.size)).reshape(-1, d)
    norm = jax.vmap(_norm)(rows)
    safe = jnp.where(norm > 0, norm, 1.0)[:, None]
    level = jnp.floor(jnp.abs(rows) / safe * levels + jax.random.uniform(key, rows.shape, jnp.float32))
    return (jnp.sign(rows) * level).astype(jnp.int8).reshape(-1), norm

  def decode(codes, norm, shape):
    rows = codes.astype(jnp.float32).reshape(norm.shape[-1], -1) * (norm / levels)[:, None]
    return rows.reshape(-1)[: _size(shape)].reshape(shape)

  return Codec(encode, decode, 8, scales=buckets)


def terngrad_codec(clip: float | None = 2.5, *, share_scale: bool = True) -> Codec:
  """TernGrad (Wen et al. 2017): ``s · sign(g) · b`` with ``b ~ Bernoulli(|g| / s)``.

  As in the paper (§3.3, §4): each tensor's gradient is first clipped to ``±clip · σ``
  (``σ`` its standard deviation; ``clip=None`` skips it, and only then is the codec
  unbiased), and ``s = max|g|`` is shared by all devices (the ``pmax`` of theirs, taken
  by :func:`compressed_mean`; ``share_scale=False`` keeps each device's own). Codes
  travel at 2 bits.
  """
  if clip is not None:
    clip = validate.check_float("clip", clip, low=0.0, low_open=True)

  def clipped(g):
    g = g.astype(jnp.float32)
    if clip is None:
      return g
    sigma = jnp.std(g)
    sigma = jnp.where(jnp.isfinite(sigma), sigma, jnp.max(jnp.abs(g)))  # std overflows near the float32 max
    return jnp.clip(g, -clip * sigma, clip * sigma)

  def encode(g, key, shared=None):
    g = clipped(g)
    s = jnp.max(jnp.abs(g)) if shared is None else shared
    keep = jax.random.uniform(key, g.shape, jnp.float32) * jnp.where(s > 0, s, 1.0) < jnp.abs(g)
    codes = (jnp.sign(g) * keep).astype(jnp.int32) + 1  # {-1, 0, 1} -> {0, 1, 2}
    return _pack(codes, 2), s

  def decode(data, s, shape):
    codes = _unpack(data, 2, _size(shape)).astype(jnp.float32) - 1.0
    return (codes * s[..., None]).reshape(shape)

  share = (lambda g: jnp.max(jnp.abs(clipped(g)))) if share_scale else None
  return Codec(encode, decode, 2, share=share)


def sign_codec() -> Codec:
  """1-bit sign compression: ``(‖g‖₁ / n) · sign(g)`` (Seide et al. 2014; scaled as in
  Karimireddy et al. 2019). Biased alone; use with error feedback. 1 bit per element."""

  def encode(g, key, shared=None):
    del key, shared
    return _pack((g >= 0).astype(jnp.int32), 1), _mean(jnp.abs(g.astype(jnp.float32)).reshape(-1), 0)

  def decode(data, scale, shape):
    signs = _unpack(data, 1, _size(shape)).astype(jnp.float32) * 2.0 - 1.0
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
      shared = None if codec.share is None else jax.lax.pmax(codec.share(corrected), axis_name)
      codes, scale = codec.encode(corrected, k, shared)
      mine = codec.decode(codes, scale, g.shape)
      new_errors.append(None if e is None else uniform.saturate(corrected - mine, e.dtype))
      all_codes = jax.lax.all_gather(codes, axis_name)  # only the codes cross devices
      all_scales = jax.lax.all_gather(scale, axis_name)
      decoded = jax.vmap(lambda c, s, shape=g.shape: codec.decode(c, s, shape))(all_codes, all_scales)
      means.append(uniform.saturate(_mean(decoded, 0), g.dtype))
    error = treedef.unflatten(new_errors) if error_feedback else None
    return treedef.unflatten(means), CompressionState(key=key, error=error)

  return optax.GradientTransformation(init, update)


def qsgd(
  levels: int = 16, *, axis_name: str, bucket_size: int | None = 512, seed: int = 0
) -> optax.GradientTransformation:
  """QSGD gradient averaging across devices (:func:`qsgd_codec`).

  Args:
    levels: ``s``, quantization levels per sign, 1..127 (codes travel as int8).
    axis_name: the data-parallel axis.
    bucket_size: entries per bucket with its own norm (the paper's 512), or ``None`` for
      one norm per tensor.
    seed: PRNG seed.

  Raises:
    ValueError: if ``levels`` is outside 1..127 or ``bucket_size`` is below 1.

  References:
    Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization
    and Encoding", https://arxiv.org/abs/1610.02132.
  """
  validate.check_int("levels", levels, low=1, high=127)
  return compressed_mean(qsgd_codec(levels, bucket_size), axis_name=axis_name, seed=seed)


def terngrad(
  *, axis_name: str, clip: float | None = 2.5, share_scale: bool = True, seed: int = 0
) -> optax.GradientTransformation:
  """TernGrad gradient averaging across devices (2 bits per element on the wire).

  Args:
    axis_name: the data-parallel axis.
    clip: clip each gradient tensor to ``±clip · σ`` first (the paper's ``c = 2.5``), or
      ``None``.
    share_scale: one scaler ``s`` for all devices (the ``pmax`` of theirs, as the paper
      does), else each device's own.
    seed: PRNG seed.

  Raises:
    ValueError: if ``clip`` is not positive.

  References:
    Wen et al. 2017, "TernGrad: Ternary Gradients to Reduce Communication in Distributed
    Deep Learning", https://arxiv.org/abs/1705.07878.
  """
  return compressed_mean(terngrad_codec(clip, share_scale=share_scale), axis_name=axis_name, seed=seed)


def sign_error_feedback(*, axis_name: str) -> optax.GradientTransformation:
  """1-bit sign compression with error feedback (1 bit per element on the wire).

  References:
    Seide et al. 2014, "1-Bit Stochastic Gradient Descent and its Application to
    Data-Parallel Distributed Training of Speech DNNs"; Karimireddy et al. 2019,
    https://arxiv.org/abs/1901.09847.
  """
  return compressed_mean(sign_codec(), axis_name=axis_name, error_feedback=True)


def bytes_sent(params: Any, codec: Codec | None) -> int:
  """Bytes one device sends per step: its codes plus its float32 scales (one per tensor,
  or one per QSGD bucket), or ``4 · n`` for uncompressed float32 gradients
  (``codec=None``)."""
  sizes = [x.size for x in jax.tree.leaves(params)]
  if codec is None:
    return 4 * sum(sizes)
  return sum(-(-n * codec.bits // 8) + 4 * codec.scales(n) for n in sizes)
