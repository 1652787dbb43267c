"""Value-aware quantization (Park, Yoo & Vajda 2018): a few large values at high
precision, the rest at low bits.

Numerics (:func:`outlier_mask`, :func:`value_aware_parts`, :func:`value_aware_quantize`)
act on one array; :func:`value_aware` walks the tree. The training-memory side (activations
stored value-aware-quantized for the backward pass only) is
:func:`~jaxcompress.quantization.value_aware_backward` in ``_backward.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning._criteria import keep_top, num_pruned
from jaxcompress.quantization import _ste, uniform

OUTLIER_DTYPES = ("float32", "float16")


def outlier_mask(w: jax.Array, outlier_fraction: float) -> jax.Array:
  """The ``round(outlier_fraction * size)`` largest ``|w|`` (ties: the earlier element),
  ``bool[w.shape]``."""
  return keep_top(jnp.abs(uniform.upcast(w)), num_pruned(outlier_fraction, w.size))


def value_aware_parts(
  w: jax.Array, bits: int, outlier_fraction: float, outlier_dtype: str = "float32"
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """``(mask, codes, scale, big)``: the outliers' mask, the small values' symmetric codes
  (``int32``, 0 at the outliers), their ``float32`` scale ``max|small| / (2^(b-1) - 1)``
  and the outliers' values in ``outlier_dtype`` (saturated to its finite range)."""
  mask = outlier_mask(w, outlier_fraction)
  x = uniform.upcast(w).astype(jnp.float32)
  small = jnp.where(mask, jnp.zeros_like(x), x)
  scale = uniform.symmetric_params(jnp.max(jnp.abs(small)), uniform.qmax(bits))
  codes = jnp.where(mask, 0, uniform.quantize(small, scale, bits))
  limit = float(jnp.finfo(outlier_dtype).max)
  big = jnp.clip(x, -limit, limit).astype(outlier_dtype)
  return mask, codes, scale, big


def _view(mask, codes, scale, big, dtype):
  """The dense view exactly as :class:`~jaxcompress.export.OutlierArray` materializes it."""
  limit = float(jnp.finfo(dtype).max)
  small = jnp.clip(codes.astype(jnp.float32) * scale, -limit, limit).astype(dtype)
  return jnp.where(mask, big.astype(dtype), small)


def value_aware_quantize(
  w: jax.Array, bits: int = 4, outlier_fraction: float = 0.01, outlier_dtype: str = "float32"
) -> jax.Array:
  """Value-aware quantization of one array, with a straight-through gradient.

  The ``outlier_fraction`` largest-magnitude values keep their value (in
  ``outlier_dtype``); the others are quantized symmetrically at ``bits`` bits over their
  own range (the largest small value maps onto the top code, so none clips).

  Returns:
    ``w``'s shape and dtype; ``dL/dw = dL/dy``.
  """
  return _ste.straight_through(w, _view(*value_aware_parts(w, bits, outlier_fraction, outlier_dtype), w.dtype))


def _check_fraction(name: str, value: Any) -> float:
  return validate.check_float(name, value, low=0.0, high=1.0, high_open=True)


def value_aware(
  bits: int = 4,
  outlier_fraction: float = 0.01,
  *,
  outlier_dtype: str = "float32",
  where: select.Where = None,
) -> Compressor:
  """Value-aware weight quantization: large weights in high precision, the rest at low bits.

  Per leaf, the ``outlier_fraction`` of weights with the largest magnitude (re-selected at
  every step from the current weights) stay at high precision (``outlier_dtype``); the
  rest are quantized uniformly and symmetrically at ``bits`` bits with the scale
  ``max|rest| / (2^(b-1) - 1)``: the outliers no longer stretch the grid, which is the
  method's point. Park et al. quantize the small values linearly over their own range;
  the symmetric narrow-range grid (the library's) is the choice made here. Gradient:
  straight-through. ``pack`` stores an :class:`~jaxcompress.export.OutlierArray`: a
  :class:`~jaxcompress.export.QArray` of ``bits``-bit codes (the zero code at the
  outliers) plus a :class:`~jaxcompress.export.SparseArray` of the outliers' values.

  Args:
    bits: bits of the small values, 2..16 (the paper's 4 for weights).
    outlier_fraction: the fraction kept at high precision, in ``[0, 1)`` (the paper:
      1-3%).
    outlier_dtype: ``'float32'`` or ``'float16'``.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: if ``bits`` is outside 2..16, ``outlier_fraction`` outside ``[0, 1)``
      or ``outlier_dtype`` unknown; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Park, Yoo & Vajda 2018, "Value-aware Quantization for Training and Inference of
    Neural Networks", ECCV, https://arxiv.org/abs/1804.07802.

  Example:
    >>> import jax.numpy as jnp
    >>> c = value_aware(2, 0.25)  # one outlier of four; the rest on {-0.5, 0, 0.5}
    >>> params, state = c.init({'w': jnp.array([[10.0, -0.5], [0.2, 0.4]])})
    >>> c.apply(params, state)['w'].tolist()
    [[10.0, -0.5], [0.0, 0.5]]
  """
  bits = validate.check_bits("bits", bits, low=2)
  outlier_fraction = _check_fraction("outlier_fraction", outlier_fraction)
  outlier_dtype = validate.check_choice("outlier_dtype", outlier_dtype, OUTLIER_DTYPES)

  def init(params, *, masks=None):
    del masks
    return params, leafwise.LeafwiseState.start(leafwise.init_selected(params, where, lambda _, p: leafwise.Selected()))

  def apply(params, state):
    return leafwise.map_selected(
      lambda w, _: value_aware_quantize(w, bits, outlier_fraction, outlier_dtype), params, state.leaves
    )

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(p, _):
    w = jnp.asarray(export.materialize(p))
    mask, codes, scale, big = (np.asarray(x) for x in value_aware_parts(w, bits, outlier_fraction, outlier_dtype))
    base = export.QArray(
      codes=export.store_codes(codes, bits, signed=True), scale=scale, zero_point=None, bits=bits, dtype=str(w.dtype)
    )
    return export.OutlierArray(base=base, outliers=export.from_mask(big, mask))

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack)
