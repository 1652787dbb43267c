"""Ternary weights: TWN (fixed threshold, optimal scale) and TTQ (learned scales).

Numerics (:func:`twn_threshold`, :func:`twn_scale`, :func:`twn_quantize`,
:func:`ttq_quantize`) act on one array; :func:`twn` and :func:`ttq` walk the tree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _reparam, _ste, uniform
from jaxcompress.quantization.granularity import Granularity, from_args


def twn_threshold(w: jax.Array, factor: float = 0.7, granularity: Granularity | None = None) -> jax.Array:
  """TWN's threshold ``delta = factor * mean |w|`` (Li & Liu 2016, Eq. 9, factor 0.7).

  Args:
    w: float array.
    factor: the factor of ``mean|w|``, > 0.
    granularity: which weights share a threshold; ``None``: the whole tensor.

  Returns:
    ``delta`` with ``keepdims`` over the axes that share it (the mean taken without
    overflow: :meth:`~jaxcompress.quantization.Granularity.mean`).
  """
  return factor * (granularity or Granularity()).mean(jnp.abs(w))


def twn_scale(w: jax.Array, delta: jax.Array, granularity: Granularity | None = None) -> jax.Array:
  """TWN's scale ``alpha = mean of |w| over |w| > delta`` (Eq. 5); 0 when none is above
  (without overflow: :meth:`~jaxcompress.quantization.Granularity.mean`).

  Args:
    w: float array.
    delta: the threshold from :func:`twn_threshold` (same ``granularity``).
    granularity: which weights share a scale; ``None``: the whole tensor.

  Returns:
    ``alpha`` with ``keepdims`` over the axes that share it.
  """
  return (granularity or Granularity()).mean(jnp.abs(w), where=jnp.abs(w) > delta)


def ternary_codes(w: jax.Array, delta: jax.Array) -> jax.Array:
  """``+1`` where ``w > delta``, ``-1`` where ``w < -delta``, ``0`` elsewhere (``int32``)."""
  return jnp.where(w > delta, 1, jnp.where(w < -delta, -1, 0)).astype(jnp.int32)


def twn_quantize(w: jax.Array, factor: float = 0.7, granularity: Granularity | None = None) -> jax.Array:
  """TWN ternarization ``alpha * t(w)`` with a straight-through gradient.

  Gradient: ``dL/dw = dL/dy`` (identity through the whole quantizer, threshold and
  scale included).

  Args:
    w: float array.
    factor: the threshold factor (:func:`twn_threshold`).
    granularity: which weights share a threshold and scale; ``None``: the whole tensor.

  Returns:
    ``w``'s shape and dtype.

  References:
    Li, Zhang & Liu 2016, "Ternary Weight Networks", https://arxiv.org/abs/1605.04711.
  """
  delta, alpha = _twn_params(w, factor, granularity)
  return _ste.straight_through(w, alpha * ternary_codes(w, delta).astype(w.dtype))


def _twn_params(w, factor, granularity):
  """``(delta, alpha)``, computed in float32 for half types; ``alpha`` in ``w``'s dtype."""
  x = uniform.upcast(w)
  delta = twn_threshold(x, factor, granularity)
  return delta, twn_scale(x, delta, granularity).astype(w.dtype)


def _check_factor(name, value):
  return validate.check_float(name, value, low=0.0, low_open=True)


def twn(
  threshold_factor: validate.ScalarOrSchedule = 0.7,
  *,
  per_channel: bool = False,
  axis: int = -1,
  where: select.Where = None,
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
      0.7), or a schedule ``step -> factor`` (optax schedules fit), evaluated at the
      state's step count (``update`` advances it; ``pack`` uses the current step).
    per_channel: one threshold and scale per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: if ``threshold_factor <= 0`` (a schedule: at step 0); at ``init``, as
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
  factor = validate.as_schedule("threshold_factor", threshold_factor, _check_factor)
  granularity = from_args(per_channel=per_channel, axis=axis)

  def init_leaf(path, p):
    granularity.check(tuple(p.shape), f"leaf {path!r}")
    return leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    return params, leafwise.LeafwiseState.start(leafwise.init_selected(params, where, init_leaf))

  def apply(params, state):
    t = factor(state.count)
    return leafwise.map_selected(lambda w, _: twn_quantize(w, t, granularity), params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(p, _, t):
    w = jnp.asarray(export.materialize(p))
    delta, alpha = _twn_params(w, t, granularity)
    scale = np.asarray(alpha)
    codes = np.asarray(ternary_codes(w, delta))
    return export.QArray(
      codes=export.store_codes(codes, 2, signed=True), scale=scale, zero_point=None, bits=2, dtype=str(w.dtype)
    )

  def pack(params, state):
    t = factor(state.count)
    return leafwise.map_selected(lambda p, leaf: pack_leaf(p, leaf, t), params, state.leaves)

  return Compressor(init, apply, update, pack)


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

  References:
    Zhu, Han, Mao & Dally 2017, "Trained Ternary Quantization",
    https://arxiv.org/abs/1612.01064.
  """
  return _ste.surrogate(_ttq_rule, w, positive, negative, delta)


def _ttq_rule(w, positive, negative, delta):
  zero = jnp.zeros((), w.dtype)
  above, below = w > delta, w < -delta
  y = jnp.where(above, positive, jnp.where(below, -negative, zero)).astype(w.dtype)
  dw = _ste.Local(factor=jnp.where(above, positive, jnp.where(below, negative, jnp.ones((), w.dtype))))
  dpos, dneg = _ste.Local(mask=above), _ste.Local(mask=below, factor=-jnp.ones((), w.dtype))
  return y, dw, (dpos, dneg, None)


class TTQParams(NamedTuple):
  """A ternarized leaf in the trainable tree of :func:`ttq`.

  Attributes:
    weight: the float latent weights (the model leaf's shape).
    positive: the learned positive scale ``W_p``: shape ``()``, or with ``per_channel``
      keepdims (size 1 on every axis but the channel axis, e.g. ``(1, out)``).
    negative: the learned negative scale ``W_n``, shaped like ``positive`` (the value is
      ``-W_n``).
  """

  weight: jax.Array
  positive: jax.Array
  negative: jax.Array


def ttq_threshold(w: jax.Array, factor: float = 0.05, granularity: Granularity | None = None) -> jax.Array:
  """TTQ's threshold ``delta = factor * max|w|`` (Zhu et al. 2017, Eq. 5's ``t``).

  Args:
    w: float array.
    factor: ``t``, > 0.
    granularity: which weights share a threshold (per output channel:
      ``per_channel(axis)``); ``None``: the whole tensor.

  Returns:
    ``delta``: shape ``()`` per tensor, else keepdims over the shared axes.

  References:
    Zhu, Han, Mao & Dally 2017, "Trained Ternary Quantization",
    https://arxiv.org/abs/1612.01064.
  """
  if granularity is None or granularity.channel_axis is None:
    return factor * jnp.max(jnp.abs(w))
  return factor * granularity.absmax(w)


def ttq(
  threshold_factor: validate.ScalarOrSchedule = 0.05,
  *,
  init_scale: float | None = None,
  per_channel: bool = False,
  axis: int = -1,
  where: select.Where = None,
) -> Compressor:
  """Trained Ternary Quantization: ternary weights with learned positive and negative scales.

  ``init`` replaces each selected leaf of the trainable tree by :class:`TTQParams`
  ``(weight, positive, negative)``; ``apply`` maps it back to the model's leaf
  ``W_p`` where ``w > delta``, ``-W_n`` where ``w < -delta``, 0 elsewhere, with
  ``delta = threshold_factor * max|w|`` (the paper's ``t``, recomputed from the latent
  weights each step). Per tensor (the paper), or with ``per_channel`` one ``W_p``,
  ``W_n`` and ``delta = t * max|w|`` per slice along ``axis`` (each slice is quantized
  as the per-tensor method would quantize it alone). The scales start at
  ``init_scale`` or, by default, at the mean of ``|w|`` over the weights above / below
  the threshold (of their channel). Gradients as in the paper (see
  :func:`ttq_quantize`): each scale gets the sum of the gradients of its weights, the
  latent weights a straight-through gradient scaled by ``W_p``/``1``/``W_n``. ``pack``
  stores a :class:`~jaxcompress.export.CodebookArray` with the codebook
  ``[-W_n, 0, W_p]`` (one row per channel with ``per_channel``) and 2-bit indices.

  Args:
    threshold_factor: ``t``, the fraction of ``max|w|`` giving the threshold, > 0 (the
      paper's 0.05), or a schedule ``step -> t`` (optax schedules fit), evaluated at the
      state's step count (``init`` at step 0; ``update`` advances it; ``pack`` uses the
      current step).
    init_scale: the initial ``W_p`` and ``W_n``, > 0, or ``None`` to derive them from
      the weights.
    per_channel: one ``W_p``, ``W_n`` and threshold per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`; its trainable tree
    holds :class:`TTQParams` at the selected leaves.

  Raises:
    ValueError: if ``threshold_factor <= 0`` (a schedule: at step 0) or ``init_scale <= 0``, as
      :func:`~jaxcompress.quantization.granularity.from_args`; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis`` is out of range.

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
  factor = validate.as_schedule("threshold_factor", threshold_factor, _check_factor)
  if init_scale is not None:
    init_scale = validate.check_float("init_scale", init_scale, low=0.0, low_open=True)
  granularity = from_args(per_channel=per_channel, axis=axis)

  def threshold(w, count):
    return ttq_threshold(w, factor(count), granularity)

  def mean_where(x, keep):  # without overflow, in float32 for half types
    mean = granularity.mean(uniform.upcast(x), where=keep).astype(x.dtype)
    return mean if per_channel else mean.reshape(())

  def init_leaf(path, w):
    granularity.check(tuple(w.shape), f"leaf {path!r}")
    delta = threshold(w, jnp.asarray(0, jnp.int32))
    if init_scale is not None:
      pos = neg = jnp.full(jnp.shape(delta), init_scale, w.dtype)
    else:
      pos, neg = mean_where(w, w > delta), mean_where(-w, w < -delta)
    return TTQParams(weight=w, positive=pos, negative=neg), leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(node, count):
    w = node.weight
    return ttq_quantize(w, node.positive, node.negative, jax.lax.stop_gradient(threshold(w, count)))

  def apply(params, state):
    dense_leaf = lambda node, _: dense(node, state.count)
    return _reparam.map_nodes(dense_leaf, params, state.leaves, leafwise.Selected, TTQParams)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(node, count):
    w = jnp.asarray(node.weight)
    delta = threshold(w, count)
    indices = np.asarray(ternary_codes(w, delta)) + 1  # -1, 0, 1 -> 0, 1, 2
    pos, neg = jnp.asarray(node.positive, w.dtype), jnp.asarray(node.negative, w.dtype)
    if not per_channel:
      return export.from_assignments(np.asarray(jnp.stack([-neg, jnp.zeros((), w.dtype), pos])), indices)
    rows = lambda v: jnp.moveaxis(v, axis, 0).reshape(-1)
    codebook = jnp.stack([-rows(neg), jnp.zeros_like(rows(pos)), rows(pos)], axis=1)
    return export.from_assignments(np.asarray(codebook), indices, axis=axis)

  def pack(params, state):
    pack_node = lambda node, _: pack_leaf(node, state.count)
    return _reparam.map_nodes(pack_node, params, state.leaves, leafwise.Selected, TTQParams)

  return Compressor(init, apply, update, pack)
