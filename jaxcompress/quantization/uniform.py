"""Uniform quantization numerics: ranges, scales, fake quantization and its gradients.

The quantizer is the standard affine one,

  q = clip(round(x / scale) + zero_point, qmin, qmax),   x̂ = (q - zero_point) · scale,

with round half to even and ``x / scale`` computed as ``x · (1 / scale)``, which is what
PyTorch's ``fake_quantize_per_tensor_affine`` does, so the values agree exactly.
Symmetric quantization is the case ``zero_point = 0`` on the narrow signed range
``[-(2^(b-1) - 1), 2^(b-1) - 1]``, which keeps zero exact and the grid symmetric.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress.export._bitpack import code_range
from jaxcompress.quantization import _ste
from jaxcompress.quantization.granularity import Granularity


def quant_range(bits: int, *, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
  """The integer code range ``(qmin, qmax)`` of ``bits``-bit codes: the one definition
  every quantizer uses (symmetric, affine, LSQ, PACT, ternary).

  Args:
    bits: 1..16.
    signed: two's-complement range ``[-2^(b-1), 2^(b-1) - 1]``, else ``[0, 2^b - 1]``.
    narrow: drop the most negative signed code, making the range symmetric.

  Returns:
    ``(qmin, qmax)`` as Python ints; the storage range is
    :func:`jaxcompress.export.code_range` (``narrow=False``).

  Example:
    >>> quant_range(4), quant_range(4, narrow=True), quant_range(4, signed=False)
    ((-8, 7), (-7, 7), (0, 15))
  """
  lo, hi = code_range(bits, signed)
  return lo + int(signed and narrow), hi


def qmax(bits: int) -> int:
  """Largest code of symmetric narrow-range ``bits``-bit quantization: ``2**(bits-1) - 1``.

  Args:
    bits: 2..16.

  Returns:
    ``quant_range(bits, narrow=True)[1]``.
  """
  return quant_range(bits, narrow=True)[1]


def scale_floor(dtype: jnp.dtype) -> float:
  """The smallest scale used: the dtype's smallest normal number.

  A constant-zero tensor or channel would otherwise get ``scale = 0`` and NaN codes.
  """
  return float(jnp.finfo(dtype).tiny)


def floor_positive(x: jax.Array) -> jax.Array:
  """``max(x, tiny)``: keeps a learned step or clip a positive normal number.

  Args:
    x: float array.

  Returns:
    ``x`` floored by :func:`scale_floor` of its dtype.
  """
  return jnp.maximum(x, scale_floor(jnp.result_type(x)))


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype quantizers compute statistics and scales in: ``float32`` for floating types
  narrower than 32 bits (``float16``'s range overflows ``max - min`` and ``sum(x)`` at
  ordinary sizes), else ``dtype`` itself."""
  dtype = jnp.dtype(dtype)
  return jnp.dtype(jnp.float32) if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4 else dtype


def upcast(x: jax.Array) -> jax.Array:
  """``x`` in :func:`compute_dtype` of its dtype (differentiable; a no-op for ``float32``)."""
  x = jnp.asarray(x)
  return x.astype(compute_dtype(x.dtype))


def saturate(x: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
  """``x`` clipped to the finite range of ``dtype`` (default: its own) and cast to it.

  A dequantized value ``code * scale`` can round past the largest finite number when the
  weights reach it (``127 * (max / 127)``); saturating keeps it finite. NaN stays NaN.

  Args:
    x: float array.
    dtype: the floating dtype to cast to; ``None``: ``x``'s.

  Returns:
    ``x`` in ``dtype``, with ``|x| <= finfo(dtype).max``.
  """
  x = jnp.asarray(x)
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  limit = float(jnp.finfo(dtype).max)
  return jnp.clip(x, -limit, limit).astype(dtype)


def divide(x: jax.Array, s: jax.Array) -> jax.Array:
  """``x / s`` for a positive divisor ``s`` up to the dtype's largest finite value.

  XLA computes a division by a broadcast divisor as a product with its reciprocal, and
  the reciprocal of a divisor above ``1 / tiny`` is subnormal, which the CPU flushes to
  zero (``max / max`` would give 0). Both operands are scaled by the power of two at
  ``s`` first (``ldexp``, exact), so the result has the same bits as ``x / s`` wherever
  that is right.

  Args:
    x: float array.
    s: positive float array broadcastable to ``x``.

  Returns:
    ``x / s``, broadcast.
  """
  _, e = jnp.frexp(s)
  return jnp.ldexp(x, -e) / jnp.ldexp(s, -e)


def affine_params(xmin: jax.Array, xmax: jax.Array, qmin: int, qmax: int) -> tuple[jax.Array, jax.Array]:
  """Scale and zero point mapping ``[xmin, xmax]`` (widened to include 0) onto ``[qmin, qmax]``.

  ``scale = (xmax - xmin) / (qmax - qmin)`` and ``zero_point = qmin - round(xmin / scale)``
  clipped to the code range, so zero is exactly representable. A range wider than the
  dtype's largest finite number (``xmax - xmin`` overflows) is halved before the division.

  Returns:
    ``(scale, zero_point)``: float and ``int32`` arrays of ``xmin``'s shape.
  """
  xmin, xmax = jnp.minimum(xmin, 0.0), jnp.maximum(xmax, 0.0)
  span = xmax - xmin  # overflows for ranges wider than the dtype's largest number: halve first
  span_scale = jnp.where(jnp.isfinite(span), span / (qmax - qmin), (xmax * 0.5 - xmin * 0.5) / ((qmax - qmin) * 0.5))
  dtype = jnp.result_type(xmin)
  # 1-bit codes over the whole finite range would need a scale above the largest number
  scale = jnp.clip(span_scale, scale_floor(dtype), float(jnp.finfo(dtype).max))
  zero_point = jnp.clip(qmin - jnp.round(divide(xmin, scale)), qmin, qmax).astype(jnp.int32)
  return scale, zero_point


def observer_params(
  xmin: jax.Array, xmax: jax.Array, qmin: int, qmax: int, *, symmetric: bool
) -> tuple[jax.Array, jax.Array | None]:
  """``(scale, zero_point)`` as PyTorch's ``MinMaxObserver.calculate_qparams`` computes them.

  The range is widened to include 0. Symmetric: ``scale = max(-xmin, xmax) / ((qmax -
  qmin) / 2)`` and no zero point (torch's is 0 for signed codes); affine: ``scale = (xmax
  - xmin) / (qmax - qmin)`` and ``zero_point = clip(qmin - round(xmin / scale), qmin,
  qmax)``. Scales are floored at float32's machine epsilon (torch's observer ``eps``).

  Args:
    xmin, xmax: float arrays of one shape (per tensor: scalars; per channel: keepdims).
    qmin, qmax: the code range (``[-128, 127]`` for torch's ``qint8``).
    symmetric: ``per_*_symmetric`` or ``per_*_affine``.

  Returns:
    ``(scale, zero_point)``: float, and ``int32`` or ``None`` when symmetric.

  References:
    PyTorch, ``torch/ao/quantization/observer.py``, ``_calculate_qparams``.
  """
  xmin, xmax = jnp.minimum(xmin, 0.0), jnp.maximum(xmax, 0.0)
  eps = float(jnp.finfo(jnp.float32).eps)
  # XLA-CPU turns a division by a broadcast number into a product with its reciprocal (1 ulp
  # off torch's quotient); the barrier keeps the divisor an array, so the division is exact.
  over = lambda a, d: a / jax.lax.optimization_barrier(jnp.full_like(a, d))
  if symmetric:
    amax = jnp.maximum(-xmin, xmax)
    return jnp.maximum(over(amax, (qmax - qmin) / 2), eps), None
  span = xmax - xmin
  span_scale = jnp.where(
    jnp.isfinite(span), over(span, qmax - qmin), over(xmax * 0.5 - xmin * 0.5, (qmax - qmin) * 0.5)
  )
  scale = jnp.clip(span_scale, eps, float(jnp.finfo(jnp.result_type(xmin)).max))
  zero_point = jnp.clip(qmin - jnp.round(xmin / scale), qmin, qmax).astype(jnp.int32)
  return scale, zero_point


def symmetric_params(amax: jax.Array, qmax: int) -> jax.Array:
  """Scale mapping ``amax`` onto code ``qmax``: ``max(amax / qmax, tiny)``."""
  return jnp.maximum(amax / qmax, scale_floor(jnp.result_type(amax)))


def symmetric_scale(x: jax.Array, bits: int, granularity: Granularity | None = None) -> jax.Array:
  """Symmetric scale ``max|x| / qmax`` per block of ``granularity`` (keepdims).

  Args:
    x: float array.
    bits: 2..16.
    granularity: which elements share a scale; ``None``: one scale for the tensor.

  Returns:
    A float array broadcastable to ``granularity.blocked(x)``, floored by
    :func:`scale_floor`.
  """
  return symmetric_params((granularity or Granularity()).absmax(x), qmax(bits))


def _bounds(bits: int | None, qmin: int | None, qmax_: int | None) -> tuple[int, int]:
  if qmin is not None and qmax_ is not None:
    return qmin, qmax_
  if bits is None:
    raise ValueError("give either bits (symmetric narrow range) or both qmin and qmax")
  return -qmax(bits), qmax(bits)


def quantize(
  x: jax.Array,
  scale: jax.Array,
  bits: int | None = None,
  *,
  zero_point: jax.Array | None = None,
  qmin: int | None = None,
  qmax: int | None = None,
) -> jax.Array:
  """Integer codes ``clip(round(x · (1/scale)) + zero_point, qmin, qmax)`` as ``int32``.

  Args:
    x: float array.
    scale: positive, broadcastable to ``x``.
    bits: the symmetric narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]``, unless ``qmin`` and
      ``qmax`` are given.
    zero_point: integer, broadcastable to ``x``; ``None`` is 0.
    qmin, qmax: the code range.
  """
  lo, hi = _bounds(bits, qmin, qmax)
  q = jnp.round(times_reciprocal(x, scale))
  if zero_point is not None:
    q = q + zero_point
  return jnp.clip(q, lo, hi).astype(jnp.int32)


def dequantize(codes: jax.Array, scale: jax.Array, zero_point: jax.Array | None = None) -> jax.Array:
  """``(codes - zero_point) · scale``, saturated to the scale dtype's finite range."""
  codes = codes if zero_point is None else codes - zero_point
  return saturate(codes.astype(jnp.result_type(scale)) * scale)


def times_reciprocal(x: jax.Array, scale: jax.Array) -> jax.Array:
  """``x · (1 / scale)``, PyTorch's ``x / scale`` in fake quantization, for any positive finite scale.

  The reciprocal of a scale above ``2^126`` is subnormal, which XLA-CPU flushes to zero
  (weights at ``±3e38`` give such scales at low bit-widths); there both factors are scaled
  by ``2^64`` first, exactly. Elsewhere the bits equal ``x * (1 / scale)``.

  Args:
    x: float array.
    scale: positive float array broadcastable to ``x``.

  Returns:
    The product, broadcast.
  """
  scale = jnp.asarray(scale)
  big = scale > 2.0**100
  shift = jnp.where(big, jnp.asarray(2.0**-64, scale.dtype), jnp.asarray(1.0, scale.dtype))
  return (x * shift) * (1.0 / (scale * shift))


def _grid(x, scale, zero_point, qmin, qmax_):
  v = jnp.round(times_reciprocal(x, scale)) + zero_point
  q = jnp.clip(v, qmin, qmax_)
  return saturate((q - zero_point) * scale), q, v


def _fake_quant_rule(x, scale, zero_point, bounds):
  y, _, v = _grid(x, scale, zero_point, bounds[0], bounds[1])
  # PyTorch's rule: the gradient passes where the rounded code lies in the range (a tie at
  # qmax + 0.5 rounds to even, so outside when qmax is odd).
  inside = (v >= bounds[0]) & (v <= bounds[1])
  return y, _ste.Local(mask=inside), (None, None, None)


def fake_quant(
  x: jax.Array,
  scale: jax.Array,
  bits: int | None = None,
  *,
  zero_point: jax.Array | None = None,
  qmin: int | None = None,
  qmax: int | None = None,
) -> jax.Array:
  """Quantize then dequantize, with the clipped straight-through gradient.

  Forward: ``(clip(round(x · (1/scale)) + zero_point, qmin, qmax) - zero_point) · scale``.
  Gradient: ``dL/dx = dL/dy`` where the unclipped code ``round(x · (1/scale)) +
  zero_point`` lies in ``[qmin, qmax]`` and 0 elsewhere, PyTorch's rule for
  ``fake_quantize_per_tensor_affine`` (golden values in the tests, ties at ``qmax + 0.5``
  included); no gradient reaches ``scale`` or ``zero_point`` (they are statistics here;
  see :func:`fake_quant_learnable` for learned ones).

  Args:
    x: float array.
    scale: positive float, broadcastable to ``x``.
    bits: the symmetric narrow range of ``bits`` (when ``qmin``/``qmax`` are not given).
    zero_point: integer-valued, broadcastable to ``x``; ``None`` is 0.
    qmin, qmax: the code range.

  Returns:
    An array of ``x``'s shape and dtype on the quantization grid.

  References:
    Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients Through
    Stochastic Neurons", https://arxiv.org/abs/1308.3432.
  """
  lo, hi = _bounds(bits, qmin, qmax)
  scale = jnp.asarray(scale, x.dtype)
  zp = jnp.zeros((), x.dtype) if zero_point is None else jnp.asarray(zero_point, x.dtype)
  return _ste.surrogate(_fake_quant_rule, x, scale, zp, jnp.asarray([lo, hi], x.dtype))


def _learnable_rule(x, scale, zero_point, bounds, q):
  y = saturate((q - zero_point) * scale)  # q: the codes, computed once in the forward pass
  v = jnp.round(times_reciprocal(x, scale)) + zero_point
  inside = ~((v < bounds[0]) | (v > bounds[1]))
  # d x̂ / d scale: (q - z) - x / s inside (round passes straight through), (qmin|qmax - z) outside.
  d_scale = jnp.where(inside, (q - zero_point) - times_reciprocal(x, scale), q - zero_point)
  d_zero = jnp.where(inside, 0.0, -scale)
  return y, _ste.Local(mask=inside), (_ste.Local(factor=d_scale), _ste.Local(factor=d_zero), None, None)


def fake_quant_learnable(x: jax.Array, scale: jax.Array, zero_point: jax.Array, *, qmin: int, qmax: int) -> jax.Array:
  """Fake quantization with gradients for ``x``, ``scale`` and ``zero_point``.

  The forward pass equals :func:`fake_quant`. With ``v = round(x / scale) + zero_point``:

  - ``dL/dx = dL/dy`` where ``qmin <= v <= qmax``, else 0;
  - ``dL/dscale = Σ dL/dy · ((q - zero_point) - x / scale)`` inside the range and
    ``Σ dL/dy · (qmin|qmax - zero_point)`` below/above it;
  - ``dL/dzero_point = Σ dL/dy · (-scale)`` outside the range, 0 inside;

  summed over the elements that share a scale. These are the gradients of PyTorch's
  ``_fake_quantize_learnable_per_tensor_affine`` (without LSQ's gradient scaling).

  Args:
    x: float array.
    scale: positive float array broadcastable to ``x`` (shape ``()`` or keepdims).
    zero_point: float array of ``scale``'s shape (kept float so it can be learned; it is
      rounded in the forward pass).
    qmin, qmax: the code range.

  Returns:
    The fake-quantized ``x``.

  References:
    Esser et al. 2020, "Learned Step Size Quantization", https://arxiv.org/abs/1902.08153.
  """
  zp = jnp.round(jnp.asarray(zero_point, x.dtype))
  zp = zero_point + jax.lax.stop_gradient(zp - zero_point)  # round forward, identity backward
  scale, bounds = jnp.asarray(scale, x.dtype), jnp.asarray([qmin, qmax], x.dtype)
  q = jax.lax.stop_gradient(_grid(x, scale, zp, bounds[0], bounds[1])[1])
  return _ste.surrogate(_learnable_rule, x, scale, zp, bounds, q)


def cast_float8(x: jax.Array, dtype: jnp.dtype = jnp.float8_e4m3fn) -> jax.Array:
  """Casts to a float8 type after clipping to its finite range.

  A plain ``astype`` turns values beyond the largest finite float8 into NaN
  (``e4m3fn`` has no infinity) or infinity (``e5m2``); clipping first saturates them.

  Args:
    x: float array.
    dtype: ``jnp.float8_e4m3fn`` (default) or ``jnp.float8_e5m2``.

  Returns:
    ``x`` in ``dtype``, saturated, with NaN inputs kept NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> cast_float8(jnp.array([1e6, -1e6, 0.1])).astype(jnp.float32).tolist()
    [448.0, -448.0, 0.1015625]
  """
  limit = float(jnp.finfo(dtype).max)
  return jnp.clip(x, -limit, limit).astype(dtype)
