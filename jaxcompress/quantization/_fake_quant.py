"""Fake quantization of weights: train with quantized weights, keep float masters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _ste, uniform
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization.granularity import from_args


def weight_spec(
  bits: int, *, symmetric: bool = True, per_channel: bool = False, axis: int = -1, group_size: int | None = None,
  group_axis: int = 0, convention: str = "narrow",
) -> QuantSpec:  # fmt: skip
  """Builds and validates the :class:`QuantSpec` of a weight quantizer.

  Args:
    bits: bits per weight: 2..16 symmetric, 1..16 affine.
    symmetric: symmetric (no zero point) or affine.
    per_channel, axis, group_size, group_axis: which weights share a scale
      (:func:`~jaxcompress.quantization.granularity.from_args`).
    convention: ``'narrow'`` or ``'pytorch'`` (:class:`QuantSpec`).

  Returns:
    The :class:`QuantSpec`.

  Raises:
    ValueError: on bits outside 2..16 (symmetric) or 1..16 (affine), an unknown
      ``convention``, as :func:`~jaxcompress.quantization.granularity.from_args`.
  """
  granularity = from_args(per_channel=per_channel, axis=axis, group_size=group_size, group_axis=group_axis)
  return QuantSpec(
    bits=validate.check_bits("bits", bits, low=2 if symmetric else 1),
    symmetric=symmetric,
    granularity=granularity,
    convention=convention,
  )


def fake_quant(
  bits: int = 8,
  *,
  symmetric: bool = True,
  per_channel: bool = False,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
  convention: str = "narrow",
  where: select.Where = None,
) -> Compressor:
  """Uniform quantization of weights with a straight-through gradient.

  ``apply`` returns each selected weight quantized and dequantized,
  ``(clip(round(w / scale) + zero_point, qmin, qmax) - zero_point) · scale``, with the
  scale (and zero point) computed from the weight's current range: symmetric
  ``scale = max|w| / (2^(b-1) - 1)``, or affine over ``[min(w, 0), max(w, 0)]`` onto
  ``[0, 2^b - 1]``; per tensor, per channel along ``axis``, or per group of
  ``group_size`` elements along ``group_axis`` (per output channel). The float weights
  stay the trainable master copy; the gradient passes straight through inside the
  range (see :func:`~jaxcompress.quantization.uniform.fake_quant`). ``pack`` stores
  each selected leaf as a :class:`~jaxcompress.export.QArray` whose codes are
  bit-packed below 8 bits (after pruning in a ``chain``, the chain stores only the
  surviving codes: :meth:`~jaxcompress.export.QArray.prune`). Half-precision weights get
  their scales and ranges in float32 (stored so in the ``QArray``) and the result cast
  back, saturated: weights at the dtype's largest finite value stay finite.

  Args:
    bits: bits per weight: 2..16 symmetric, 1..16 affine.
    symmetric: symmetric (no zero point) or affine.
    per_channel: one scale per slice along ``axis``.
    axis: the channel axis; -1 is the output features of Flax Dense ``(in, out)`` and
      Conv ``(h, w, in, out)`` kernels.
    group_size: if given, one scale per ``group_size`` consecutive weights along
      ``group_axis`` and per channel along ``axis``; must divide that axis.
    group_axis: the axis cut into groups (0: a Dense kernel's contraction axis).
    convention: ``'narrow'`` (default: the symmetric narrow range above) or
      ``'pytorch'``: torch's ``MinMaxObserver`` qparams (symmetric ``scale = max|w| /
      ((qmax - qmin) / 2)`` on the full signed range, so the largest weight is clipped by
      half a step and gets no gradient, as in torch); see
      :class:`~jaxcompress.quantization.QuantSpec`.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: on bad ``bits`` or ``convention``; at ``init``, if ``where`` selects nothing, a selected
      leaf is integer, empty or non-finite, ``axis``/``group_axis`` is out of range or
      ``group_size`` does not divide the axis (the message names the leaf).

  References:
    Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", https://arxiv.org/abs/1712.05877.

  Example:
    >>> import jax.numpy as jnp
    >>> c = fake_quant(2)
    >>> params, state = c.init({'w': jnp.array([[0.2, -1.0], [0.6, 0.9]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.0, -1.0], [1.0, 1.0]]
  """
  spec = weight_spec(
    bits,
    symmetric=symmetric,
    per_channel=per_channel,
    axis=axis,
    group_size=group_size,
    group_axis=group_axis,
    convention=convention,
  )
  clips = spec.convention == "pytorch"  # torch's symmetric scale clips the largest weight

  def init_leaf(path, p):
    spec.granularity.check(tuple(p.shape), f"leaf {path!r}")
    return leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    return params, leafwise.LeafwiseState.start(leafwise.init_selected(params, where, init_leaf))

  def quantize_leaf(p, _):
    # The range is the weight's own, so nothing is clipped: the straight-through gradient is
    # the identity, and the backward pass need not recompute the in-range mask.
    x = uniform.upcast(p)  # half types: scales and ranges in float32, the result cast back
    scale, zero_point = jax.lax.stop_gradient(spec.params(x))
    if clips:  # the clipped straight-through gradient
      return uniform.saturate(spec.fake_quant(x, scale, zero_point), p.dtype)
    return _ste.straight_through(p, uniform.saturate(spec.fake_quant(x, scale, zero_point), p.dtype))

  def apply(params, state):
    return leafwise.map_selected(quantize_leaf, params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(p, _):
    dense = jnp.asarray(p)
    x = uniform.upcast(dense)
    scale, zero_point = spec.params(x)
    # Weights that are exactly zero (a pruned model's) stay absent when that is smaller.
    return export.prune(spec.pack(x, scale, zero_point, dtype=dense.dtype), np.asarray(dense) != 0)

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack)
