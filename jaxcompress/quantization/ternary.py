"""Ternary weights: TWN (fixed threshold, optimal scale) and TTQ (learned scales).

Numerics (:func:`twn_threshold`, :func:`twn_scale`, :func:`twn_quantize`,
:func:`ttq_quantize`) act on one array; :func:`twn` and :func:`ttq` walk the tree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core.base import Compressor
from jaxcompress.quantization import _reparam


def _reduce_axes(w: jax.Array, channel_axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(a for a in range(w.ndim) if a not in {c % w.ndim for c in channel_axes})


def twn_threshold(w: jax.Array, factor: float = 0.7, channel_axes: tuple[int, ...] = ()) -> jax.Array:
  """TWN's threshold ``delta = factor * mean |w|`` (Li & Liu 2016, Eq. 9, factor 0.7).

  Returns ``delta`` with ``keepdims`` over the reduced axes (all but ``channel_axes``).
  """
  return factor * jnp.mean(jnp.abs(w), axis=_reduce_axes(w, channel_axes), keepdims=True)


def twn_scale(w: jax.Array, delta: jax.Array, channel_axes: tuple[int, ...] = ()) -> jax.Array:
  """TWN's scale ``alpha = mean of |w| over |w| > delta`` (Eq. 5); 0 when none is above."""
  axes = _reduce_axes(w, channel_axes)
  above = jnp.abs(w) > delta
  total = jnp.sum(jnp.where(above, jnp.abs(w), 0), axis=axes, keepdims=True)
  count = jnp.sum(above, axis=axes, keepdims=True)
  return total / jnp.maximum(count, 1).astype(w.dtype)


def ternary_codes(w: jax.Array, delta: jax.Array) -> jax.Array:
  """``+1`` where ``w > delta``, ``-1`` where ``w < -delta``, ``0`` elsewhere (``int32``)."""
  return jnp.where(w > delta, 1, jnp.where(w < -delta, -1, 0)).astype(jnp.int32)


@jax.custom_vjp
def _ste(w: jax.Array, q: jax.Array) -> jax.Array:
  del w
  return q


_ste.defvjp(lambda w, q: (q, None), lambda _, g: (g, jnp.zeros_like(g)))


def twn_quantize(w: jax.Array, factor: float = 0.7, channel_axes: tuple[int, ...] = ()) -> jax.Array:
  """TWN ternarization ``alpha * t(w)`` with a straight-through gradient.

  Gradient: ``dL/dw = dL/dy`` (identity through the whole quantizer, threshold and
  scale included).
  """
  delta = twn_threshold(w, factor, channel_axes)
  alpha = twn_scale(w, delta, channel_axes)
  q = alpha * ternary_codes(w, delta).astype(w.dtype)
  return _ste(w, jax.lax.stop_gradient(q))


class TernaryState(NamedTuple):
  """State of :func:`twn` and :func:`ttq`.

  Attributes:
    count: ``int32`` step counter.
    leaves: per-leaf state (:class:`~jaxcompress.core.leafwise.Selected` for TWN,
      :class:`TTQLeaf` for TTQ) at ternarized leaves, ``None`` elsewhere.
  """

  count: jax.Array
  leaves: Any


def twn(
  threshold_factor: float = 0.7, *, per_channel: bool = False, axis: int = -1, where: select.Where = None
) -> Compressor:
  """Ternary Weight Networks: ``w ≈ alpha * t``, ``t in {-1, 0, +1}``.

  ``delta = threshold_factor * mean|w|``; ``t = sign(w)`` where ``|w| > delta``, else 0;
  ``alpha`` = the mean of ``|w|`` over the weights above ``delta`` (the paper's
  approximate solution of the L2-optimal ternary fit). Per tensor, or per slice along
  ``axis`` with ``per_channel``. The float weights stay the trainable master copy.
  Gradient: straight-through, ``dL/dw = dL/dw_t``. ``pack`` stores a
  :class:`~jaxcompress.export.QArray` with 2-bit signed codes and the scale ``alpha``.

  Args:
    threshold_factor: the factor of ``mean|w|`` giving the threshold, > 0 (the paper's
      0.7).
    per_channel: one threshold and scale per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`TernaryState`.

  Raises:
    ValueError: if ``threshold_factor <= 0``; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis`` is out of range.

  References:
    Li, Zhang & Liu 2016, "Ternary Weight Networks", https://arxiv.org/abs/1605.04711.

  Example:
    >>> import jax.numpy as jnp
    >>> c = twn()
    >>> params, state = c.init({'w': jnp.array([[1.0, -3.0], [0.5, 0.1]])})
    >>> c.apply(params, state)['w'].tolist()  # delta = 0.805, alpha = 2
    [[2.0, -2.0], [0.0, 0.0]]
  """
  factor = validate.check_float("threshold_factor", threshold_factor, low=0.0, low_open=True)
  axis = validate.check_int("axis", axis)
  channel_axes = (axis,) if per_channel else ()

  def init_leaf(path, p):
    if per_channel and not -p.ndim <= axis < p.ndim:
      raise ValueError(f"axis={axis} is out of range for leaf {path!r} of shape {tuple(p.shape)}")
    return leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    leaves = leafwise.init_selected(params, where, init_leaf)
    return params, TernaryState(count=jnp.asarray(0, jnp.int32), leaves=leaves)

  def apply(params, state):
    return leafwise.map_selected(lambda w, _: twn_quantize(w, factor, channel_axes), params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state._replace(count=state.count + 1)

  def pack_leaf(p, _):
    w = jnp.asarray(export.materialize(p))
    delta = twn_threshold(w, factor, channel_axes)
    scale = np.asarray(twn_scale(w, delta, channel_axes))
    codes = np.asarray(ternary_codes(w, delta))
    return export.QArray(
      codes=export.store_codes(codes, 2, signed=True), scale=scale, zero_point=None, bits=2, dtype=str(w.dtype)
    )

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack)


@jax.custom_vjp
def ttq_quantize(w: jax.Array, positive: jax.Array, negative: jax.Array, delta: jax.Array) -> jax.Array:
  """TTQ ternarization: ``positive`` where ``w > delta``, ``-negative`` where ``w < -delta``.

  Gradients (Zhu et al. 2017, Eqs. 7-8), with ``g = dL/dy``:
  ``dL/dpositive = sum of g over w > delta``; ``dL/dnegative = -sum of g over w < -delta``
  (the chain rule for the value ``-negative``; the paper prints Eq. 7 without the
  sign); ``dL/dw = positive * g`` above ``delta``, ``g`` inside ``[-delta, delta]``,
  ``negative * g`` below ``-delta`` (scaled straight-through). No gradient to ``delta``.

  Args:
    w: float latent weights.
    positive, negative: the learned scales, broadcastable to ``w``.
    delta: the threshold, broadcastable to ``w``.

  Returns:
    The ternary tensor, ``w``'s shape and dtype.
  """
  return _ttq(w, positive, negative, delta)


def _ttq(w, positive, negative, delta):
  zero = jnp.zeros((), w.dtype)
  return jnp.where(w > delta, positive, jnp.where(w < -delta, -negative, zero)).astype(w.dtype)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums ``x`` down to a shape it was broadcast from (same rank or a scalar)."""
  if not shape:
    return jnp.sum(x)
  axes = tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1)
  return jnp.sum(x, axis=axes, keepdims=True)


def _ttq_fwd(w, positive, negative, delta):
  return _ttq(w, positive, negative, delta), (w, positive, negative, delta)


def _ttq_bwd(res, g):
  w, positive, negative, delta = res
  above, below = w > delta, w < -delta
  zero = jnp.zeros_like(g)
  dpos = _sum_to(jnp.where(above, g, zero), jnp.shape(positive)).astype(jnp.result_type(positive))
  dneg = _sum_to(jnp.where(below, -g, zero), jnp.shape(negative)).astype(jnp.result_type(negative))
  dw = jnp.where(above, positive * g, jnp.where(below, negative * g, g)).astype(w.dtype)
  return dw, dpos, dneg, jnp.zeros_like(delta)


ttq_quantize.defvjp(_ttq_fwd, _ttq_bwd)


class TTQParams(NamedTuple):
  """A ternarized leaf in the trainable tree of :func:`ttq`.

  Attributes:
    weight: the float latent weights (the model leaf's shape).
    positive: the learned positive scale ``W_p``, shape ``()``.
    negative: the learned negative scale ``W_n``, shape ``()`` (the value is ``-W_n``).
  """

  weight: jax.Array
  positive: jax.Array
  negative: jax.Array


class TTQLeaf(NamedTuple):
  """Per-leaf state of :func:`ttq` (nothing beyond "this leaf is ternarized")."""


def ttq(threshold_factor: float = 0.05, *, init_scale: float | None = None, where: select.Where = None) -> Compressor:
  """Trained Ternary Quantization: ternary weights with learned positive and negative scales.

  ``init`` replaces each selected leaf of the trainable tree by :class:`TTQParams`
  ``(weight, positive, negative)``; ``apply`` maps it back to the model's leaf
  ``W_p`` where ``w > delta``, ``-W_n`` where ``w < -delta``, 0 elsewhere, with
  ``delta = threshold_factor * max|w|`` (the paper's ``t``, recomputed from the latent
  weights each step). The scales start at ``init_scale`` or, by default, at the mean
  of ``|w|`` over the weights above / below the threshold. Gradients as in the paper
  (see :func:`ttq_quantize`): each scale gets the sum of the gradients of its weights,
  the latent weights a straight-through gradient scaled by ``W_p``/``1``/``W_n``.
  ``pack`` stores a :class:`~jaxcompress.export.CodebookArray` with the codebook
  ``[-W_n, 0, W_p]`` and 2-bit indices.

  Args:
    threshold_factor: ``t``, the fraction of ``max|w|`` giving the threshold, > 0 (the
      paper's 0.05).
    init_scale: the initial ``W_p`` and ``W_n``, > 0, or ``None`` to derive them from
      the weights.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`TernaryState`; its trainable tree
    holds :class:`TTQParams` at the selected leaves.

  Raises:
    ValueError: if ``threshold_factor <= 0`` or ``init_scale <= 0``; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Zhu, Han, Mao & Dally 2017, "Trained Ternary Quantization",
    https://arxiv.org/abs/1612.01064.

  Example:
    >>> import jax.numpy as jnp
    >>> c = ttq(0.3)
    >>> params, state = c.init({'w': jnp.array([[1.0, -3.0], [0.5, 0.1]])})
    >>> params['w'].positive.tolist(), params['w'].negative.tolist()
    (1.0, 3.0)
    >>> c.apply(params, state)['w'].tolist()  # delta = 0.9
    [[1.0, -3.0], [0.0, 0.0]]
  """
  factor = validate.check_float("threshold_factor", threshold_factor, low=0.0, low_open=True)
  if init_scale is not None:
    init_scale = validate.check_float("init_scale", init_scale, low=0.0, low_open=True)

  def threshold(w):
    return factor * jnp.max(jnp.abs(w))

  def init_leaf(path, w):
    del path
    if init_scale is not None:
      pos = neg = jnp.asarray(init_scale, w.dtype)
    else:
      delta = threshold(w)
      above, below = w > delta, w < -delta
      pos = jnp.sum(jnp.where(above, w, 0)) / jnp.maximum(jnp.sum(above), 1).astype(w.dtype)
      neg = jnp.sum(jnp.where(below, -w, 0)) / jnp.maximum(jnp.sum(below), 1).astype(w.dtype)
    return TTQParams(weight=w, positive=pos, negative=neg), TTQLeaf()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, TernaryState(count=jnp.asarray(0, jnp.int32), leaves=leaves)

  def dense(node):
    w = node.weight
    return ttq_quantize(w, node.positive, node.negative, jax.lax.stop_gradient(threshold(w)))

  def apply(params, state):
    return _reparam.map_nodes(lambda node, _: dense(node), params, state.leaves, TTQLeaf, TTQParams)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state._replace(count=state.count + 1)

  def pack_leaf(node):
    w = jnp.asarray(node.weight)
    delta = threshold(w)
    indices = np.asarray(ternary_codes(w, delta)) + 1  # -1, 0, 1 -> 0, 1, 2
    pos, neg = jnp.asarray(node.positive, w.dtype), jnp.asarray(node.negative, w.dtype)
    codebook = np.asarray(jnp.stack([-neg, jnp.zeros((), w.dtype), pos]))
    return export.from_assignments(codebook, indices)

  def pack(params, state):
    return _reparam.map_nodes(lambda node, _: pack_leaf(node), params, state.leaves, TTQLeaf, TTQParams)

  return Compressor(init, apply, update, pack)
