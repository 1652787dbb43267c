"""Power-of-two (logarithmic) weight quantization: ``w ≈ ±2^e`` or 0.

Numerics (:func:`max_exponent`, :func:`pot_codebook`, :func:`pot_indices`) act on one
array; :func:`power_of_two` walks the tree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _ste
from jaxcompress.quantization.granularity import Granularity, from_args


def _round_exponent(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """For ``a > 0``: ``(e, r)`` with ``2^e <= a < 2^(e+1)`` and ``r`` the exponent of the
  nearer of ``2^e`` and ``2^(e+1)`` (ties, ``a = 1.5 * 2^e``, go up). Exact: read from
  the float's mantissa and exponent."""
  mantissa, exponent = jnp.frexp(a)  # a = mantissa * 2^exponent, mantissa in [0.5, 1)
  e = exponent.astype(jnp.int32) - 1
  return e, e + (mantissa >= 0.75).astype(jnp.int32)


def max_exponent(w: jax.Array, granularity: Granularity | None = None) -> jax.Array:
  """INQ's largest exponent ``n1 = floor(log2(4/3 * max|w|))``: the exponent that
  ``max|w|`` rounds to (Zhou et al. 2017, Eq. 2), computed exactly from the float's bits.

  Args:
    w: float array.
    granularity: which weights share ``n1`` (per output channel: ``per_channel(axis)``);
      ``None``: the whole tensor.

  Returns:
    ``int32``: a scalar per tensor, else keepdims over the shared axes; 0 where the
    weights sharing it are all zero; at most the dtype's largest exponent (weights near
    the largest finite value round to its largest power of two, never to infinity).
  """
  if granularity is None or granularity.channel_axis is None:
    s = jnp.max(jnp.abs(w))
  else:
    s = granularity.absmax(w)
  _, r = _round_exponent(jnp.where(s > 0, s, jnp.ones_like(s)))
  return jnp.minimum(r, jnp.finfo(w.dtype).maxexp - 1)  # 2^r must be finite: max|w| near the dtype's max


def pot_codebook(emax: jax.Array, levels: int, dtype: Any) -> jax.Array:
  """The ``2 * levels + 1`` values ``[-2^emax, ..., -2^emin, 0, 2^emin, ..., 2^emax]``,
  ``emin = emax - levels + 1``, ascending (``ldexp``, so exact).

  Args:
    emax: ``int32``, a scalar or ``[c]`` (one codebook row per channel).
    levels: the number of exponents.
    dtype: the codebook's dtype.

  Returns:
    ``[2 * levels + 1]``, or ``[c, 2 * levels + 1]`` for ``emax`` of shape ``[c]``.
  """
  emax = jnp.asarray(emax)
  exps = emax[..., None] - jnp.arange(levels, dtype=jnp.int32)  # emax, ..., emin
  pos = jnp.ldexp(jnp.ones(exps.shape, dtype), exps)
  zero = jnp.zeros((*emax.shape, 1), dtype)
  return jnp.concatenate([-pos, zero, pos[..., ::-1]], axis=-1)


def pot_indices(w: jax.Array, emax: jax.Array, levels: int) -> jax.Array:
  """Index into :func:`pot_codebook` of the value nearest to each weight.

  Magnitudes round to the nearest of ``{0} ∪ {2^e : emin <= e <= emax}`` (INQ's rule:
  ``2^e`` for ``0.75 * 2^e <= |w| < 1.5 * 2^e``, ``2^emin`` down to ``0.5 * 2^emin``,
  0 below, ``2^emax`` above), decided exactly on the exponent and mantissa bits.

  Returns:
    ``int32`` indices in ``[0, 2 * levels]`` (``levels`` is zero), ``w``'s shape.
  """
  a = jnp.abs(w)
  positive = a > 0
  e, r = _round_exponent(jnp.where(positive, a, jnp.ones_like(a)))
  emin = emax - levels + 1
  nonzero = positive & (e >= emin - 1)
  k = emax - jnp.clip(r, emin, emax)  # 0 for 2^emax, levels - 1 for 2^emin
  magnitude_index = jnp.where(nonzero, levels - k, 0)  # 1..levels for 2^emin..2^emax, 0 for zero
  return jnp.where(w < 0, levels - magnitude_index, levels + magnitude_index).astype(jnp.int32)


def _codebook_and_indices(w, levels, granularity):
  """``(codebook, indices, axis)`` as a :class:`~jaxcompress.export.CodebookArray` holds
  them: one codebook row per slice along the channel axis, or one codebook."""
  emax = max_exponent(w, granularity)
  indices = pot_indices(w, emax, levels)
  if granularity is None or granularity.channel_axis is None:
    return pot_codebook(emax, levels, w.dtype), indices, None
  axis = granularity.channel_axis % w.ndim
  return pot_codebook(jnp.moveaxis(emax, axis, 0).reshape(-1), levels, w.dtype), indices, axis


def _lookup(codebook, indices, axis):
  if axis is None:
    return codebook[indices]
  return codebook[jax.lax.broadcasted_iota(jnp.int32, indices.shape, axis), indices]


def pot_quantize(w: jax.Array, levels: int, granularity: Granularity | None = None) -> jax.Array:
  """Rounds ``w`` to the nearest of ``0, ±2^emin, ..., ±2^emax`` (``emax`` from
  :func:`max_exponent`, per tensor or per block of ``granularity``), with a
  straight-through gradient ``dL/dw = dL/dy``.

  Args:
    w: float array.
    levels: the number of exponents, >= 1.
    granularity: which weights share ``emax``; ``None``: the whole tensor.

  Returns:
    ``w``'s shape and dtype.

  References:
    Zhou, Yao, Guo, Xu & Chen 2017, "Incremental Network Quantization",
    https://arxiv.org/abs/1702.03044.
  """
  return _ste.straight_through(w, _lookup(*_codebook_and_indices(w, levels, granularity)))


def power_of_two(
  levels: int = 7, *, per_channel: bool = False, axis: int = -1, where: select.Where = None
) -> Compressor:
  """Logarithmic quantization: each weight becomes 0 or ``±2^e`` with ``levels`` exponents.

  Per tensor (INQ), or per slice along ``axis`` with ``per_channel``,
  ``emax = floor(log2(4/3 * max|w|))`` (so ``max|w|`` rounds to ``2^emax``)
  and the exponents are ``emax - levels + 1 .. emax``, as in INQ; each weight rounds to
  the nearest value (:func:`pot_indices`). Multiplying by such a weight is a shift.
  ``2 * levels + 1`` values fit ``ceil(log2(2 * levels + 1))`` bits: ``levels =
  2**(bits-1) - 1`` fills ``bits`` bits (7 for 4 bits). Gradient: straight-through,
  ``dL/dw = dL/dw_q``; the float weights stay the trainable master copy. ``pack``
  stores a :class:`~jaxcompress.export.CodebookArray` of the ``2 * levels + 1`` values
  (one row per channel with ``per_channel``).
  (INQ's incremental partition-and-freeze schedule is not part of this compressor.)

  Args:
    levels: the number of exponents, 1..64.
    per_channel: one ``emax`` per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: if ``levels`` is not an integer in 1..64, as
      :func:`~jaxcompress.quantization.granularity.from_args`; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis`` is out of range.

  References:
    Zhou, Yao, Guo, Xu & Chen 2017, "Incremental Network Quantization: Towards
    Lossless CNNs with Low-Precision Weights", https://arxiv.org/abs/1702.03044;
    Miyashita, Lee & Murmann 2016, "Convolutional Neural Networks using Logarithmic
    Data Representation", https://arxiv.org/abs/1603.01025.

  Example:
    >>> import jax.numpy as jnp
    >>> c = power_of_two(3)  # values 0, ±0.25, ±0.5, ±1 here
    >>> params, state = c.init({'w': jnp.array([[1.2, -0.3], [0.1, 0.4]])})
    >>> c.apply(params, state)['w'].tolist()
    [[1.0, -0.25], [0.0, 0.5]]
  """
  levels = validate.check_int("levels", levels, low=1, high=64)
  granularity = from_args(per_channel=per_channel, axis=axis)

  def init_leaf(path, p):
    granularity.check(tuple(p.shape), f"leaf {path!r}")
    return leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    return params, leafwise.LeafwiseState.start(leafwise.init_selected(params, where, init_leaf))

  def apply(params, state):
    return leafwise.map_selected(lambda w, _: pot_quantize(w, levels, granularity), params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(p, _):
    codebook, indices, leaf_axis = _codebook_and_indices(jnp.asarray(export.materialize(p)), levels, granularity)
    return export.from_assignments(np.asarray(codebook), np.asarray(indices), axis=leaf_axis)

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack)
