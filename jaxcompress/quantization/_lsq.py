"""Learned Step size Quantization (LSQ) of weights and activations.

Numerics: :func:`lsq_quantize` (with the paper's gradients) and :func:`lsq_init_step`;
:func:`lsq` quantizes weights as a compressor whose trainable tree carries the steps,
:func:`lsq_activations` quantizes activations through :mod:`jaxcompress.graph`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _activations as activations
from jaxcompress.quantization import _reparam, _ste, uniform
from jaxcompress.quantization.granularity import Granularity, from_args


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
  """LSQ's code range ``(Q_N, Q_P)``: ``(2^(b-1), 2^(b-1) - 1)`` signed, ``(0, 2^b - 1)`` unsigned.

  Args:
    bits: 1..16.
    signed: two's-complement codes (weights) or unsigned (post-ReLU activations).

  Returns:
    ``(-qmin, qmax)`` of :func:`~jaxcompress.quantization.uniform.quant_range`.
  """
  qmin, qmax = uniform.quant_range(bits, signed=signed)
  return -qmin, qmax


def _codes(v, s, qn, qp):
  return jnp.round(jnp.clip(uniform.divide(v, s), -qn, qp))


def lsq_quantize(v: jax.Array, s: jax.Array, qn: int, qp: int, grad_scale: float) -> jax.Array:
  """``round(clip(v / s, -Q_N, Q_P)) * s`` with LSQ's gradients (Esser et al. 2020, Eqs. 3-5).

  Gradients, with ``g = dL/dv_hat`` and ``x = v / s``:

  - ``dL/dv = g`` where ``-Q_N < x < Q_P``, else 0 (straight-through inside the range);
  - ``dL/ds = grad_scale * sum(g * d)`` over the elements sharing ``s``, with
    ``d = round(x) - x`` inside the range, ``-Q_N`` where ``x <= -Q_N`` and ``Q_P``
    where ``x >= Q_P``.

  Args:
    v: float array.
    s: the step, positive, broadcastable to ``v``.
    qn, qp: ``Q_N`` and ``Q_P`` (:func:`lsq_range`).
    grad_scale: ``1 / sqrt(N * Q_P)`` in the paper (``N`` weights of the layer, or
      features per example for activations).

  Returns:
    ``v``'s shape and dtype.

  References:
    Esser, McKinstry, Bablani, Appuswamy & Modha 2020, "Learned Step Size
    Quantization", https://arxiv.org/abs/1902.08153.
  """
  return _ste.surrogate(functools.partial(_lsq_rule, qn, qp, grad_scale), v, s)


def _lsq_rule(qn, qp, grad_scale, v, s):
  x = uniform.divide(v, s)
  low, high = x <= -qn, x >= qp
  inside = ~(low | high)
  d = jnp.where(inside, jnp.round(x) - x, jnp.where(low, -float(qn), float(qp)))
  y = uniform.saturate(_codes(v, s, qn, qp) * s)  # -Q_N * s can round past the largest finite value
  return y, _ste.Local(mask=inside), (_ste.Local(factor=d, scale=grad_scale),)


def lsq_init_step(v: jax.Array, qp: int, granularity: Granularity | None = None) -> jax.Array:
  """The paper's initial step ``2 * mean|v| / sqrt(Q_P)``, floored at the dtype's tiny and
  capped at its largest finite value (the mean is taken in float32 for half types, without
  overflow: :meth:`~jaxcompress.quantization.Granularity.mean`).

  Args:
    v: float array (the weights, or example activations).
    qp: ``Q_P`` (:func:`lsq_range`).
    granularity: which elements share a step (the mean is taken over each block);
      ``None``: one step for the whole array.

  Returns:
    A positive array of ``v``'s dtype: shape ``()`` per tensor, else keepdims on
    ``granularity.blocked(v)``.

  References:
    Esser, McKinstry, Bablani, Appuswamy & Modha 2020, "Learned Step Size
    Quantization", https://arxiv.org/abs/1902.08153.
  """
  g = granularity or Granularity()
  mean = g.mean(jnp.abs(uniform.upcast(v)))  # float32 for half types, without overflow
  if g.channel_axis is None and g.group_axis is None:
    mean = mean.reshape(())
  return uniform.floor_positive(uniform.saturate(2 * mean / math.sqrt(qp), jnp.result_type(v)))


def _check_bits(bits: int, signed: bool) -> int:
  return validate.check_bits("bits", bits, low=2 if signed else 1)


class LSQParams(NamedTuple):
  """A quantized weight in the trainable tree of :func:`lsq`.

  Attributes:
    weight: the float weights.
    step: the learned step ``s``: shape ``()`` per tensor; per channel or group, keepdims
      on the weight's blocked view (:meth:`~jaxcompress.quantization.Granularity.blocked`),
      e.g. ``(1, out)`` for a Dense kernel with ``per_channel=True``.
  """

  weight: jax.Array
  step: jax.Array


def lsq(
  bits: int = 4,
  *,
  init_step: float | None = None,
  per_channel: bool = False,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
  where: select.Where = None,
) -> Compressor:
  """LSQ weight quantization: signed ``bits``-bit codes with a learned step per tensor,
  per channel or per group.

  ``init`` replaces each selected leaf of the trainable tree by :class:`LSQParams`
  ``(weight, step)``, each step starting at ``init_step`` or the paper's
  ``2 * mean|w| / sqrt(Q_P)`` over the weights that share it; ``apply`` maps it to
  ``round(clip(w / s, -Q_N, Q_P)) * s`` with ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1``.
  Per tensor (the paper), per slice along ``axis`` with ``per_channel``, or per group of
  ``group_size`` weights along ``group_axis`` (per channel). Gradients: the paper's
  (:func:`lsq_quantize`) with gradient scale ``g = 1 / sqrt(N * Q_P)``, ``N`` the number
  of weights sharing the step (the leaf's size per tensor, ``size / shape[axis]`` per
  channel, ``group_size`` per group). ``update`` keeps each step positive (floored at the
  dtype's smallest normal number). ``pack`` stores a :class:`~jaxcompress.export.QArray`
  of signed ``bits``-bit codes with the steps as scales, exactly.

  Args:
    bits: bits per weight, 2..16.
    init_step: the initial step, > 0, or ``None`` for the paper's initialization.
    per_channel: one step per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    group_size: if given, one step per ``group_size`` consecutive weights along
      ``group_axis`` (and per channel along ``axis``); must divide that axis.
    group_axis: the axis cut into groups (0: a Dense kernel's contraction axis).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`; its trainable tree holds
    :class:`LSQParams` at the selected leaves.

  Raises:
    ValueError: if ``bits`` is outside 2..16 or ``init_step <= 0``, as
      :func:`~jaxcompress.quantization.granularity.from_args`; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis``/``group_axis`` is
      out of range or ``group_size`` does not divide the axis (naming the leaf).

  References:
    Esser, McKinstry, Bablani, Appuswamy & Modha 2020, "Learned Step Size
    Quantization", https://arxiv.org/abs/1902.08153.

  Example:
    >>> import jax.numpy as jnp
    >>> c = lsq(2, init_step=0.5)  # codes -2, -1, 0, 1
    >>> params, state = c.init({'w': jnp.array([[0.7, -0.2], [-3.0, 0.3]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.5, -0.0], [-1.0, 0.5]]
    >>> lsq(2, per_channel=True).init({'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])})[0]['w'].step.tolist()
    [[4.0, 6.0]]
  """
  bits = _check_bits(bits, signed=True)
  if init_step is not None:
    init_step = validate.check_float("init_step", init_step, low=0.0, low_open=True)
  granularity = from_args(per_channel=per_channel, axis=axis, group_size=group_size, group_axis=group_axis)
  qn, qp = lsq_range(bits, signed=True)

  def step_shape(w):
    return jnp.shape(lsq_init_step(jnp.zeros(w.shape, w.dtype), qp, granularity))

  def init_leaf(path, w):
    granularity.check(tuple(w.shape), f"leaf {path!r}")
    if init_step is None:
      step = lsq_init_step(w, qp, granularity)
    else:
      step = jnp.full(step_shape(w), init_step, w.dtype)
    return LSQParams(weight=w, step=step), leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(node, _):
    w, step = node.weight, node.step
    shared = w.size // max(int(np.prod(jnp.shape(step))), 1)  # N: the weights sharing one step
    quantize = lambda b, s: lsq_quantize(b, s, qn, qp, 1.0 / math.sqrt(shared * qp))
    return granularity.apply(quantize, w, step)

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, leafwise.Selected, LSQParams)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    keep_positive = lambda node, _: node._replace(step=uniform.floor_positive(node.step))
    return _reparam.map_nodes(keep_positive, params, state.leaves, leafwise.Selected, LSQParams), state.advance()

  def pack_leaf(node, _):
    w, step = jnp.asarray(node.weight), jnp.asarray(node.step)
    codes = np.asarray(granularity.apply(lambda b, s: _codes(b, s, qn, qp), w, step)).astype(np.int32)
    return export.QArray(
      codes=export.store_codes(codes, bits, signed=True),
      scale=np.asarray(step),
      zero_point=None,
      bits=bits,
      dtype=str(w.dtype),
      group_axis=None if granularity.group_size is None else granularity.group_axis,
      group_size=granularity.group_size,
    )

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, leafwise.Selected, LSQParams)

  return Compressor(init, apply, update, pack)


def lsq_activations(
  apply_fn: Callable[..., Any],
  bits: int = 4,
  *,
  inputs: Sequence[Any],
  signed: bool = False,
  init_step: float | None = None,
  where: select.Where = None,
) -> Compressor:
  """LSQ for activations: the input of each selected matmul/convolution gets a learned step.

  A model-side compressor (:mod:`jaxcompress.quantization._activations`): the steps are
  trainable (``extra`` of its :class:`~jaxcompress.Joint` tree) and its ``rewrite``
  quantizes the activations. The activation feeding site ``p`` becomes
  ``round(clip(x / s_p, -Q_N, Q_P)) * s_p``, unsigned by default (``Q_N = 0``,
  ``Q_P = 2^b - 1``, for post-ReLU activations), with the paper's gradients
  (:func:`lsq_quantize`) and gradient scale ``1 / sqrt(N_F * Q_P)``, ``N_F`` the
  activation's elements per example. ``init`` sets each step to ``init_step`` or to
  ``2 * mean|x| / sqrt(Q_P)`` over the example activations; ``update`` keeps the steps
  positive (floored at the dtype's smallest normal number).

  Args:
    apply_fn: ``apply_fn(params, *inputs)``, batch first.
    bits: bits per activation, 1..16 unsigned, 2..16 signed.
    inputs: example positional inputs of ``apply_fn`` (one batch), to find the sites and
      initialize the steps.
    signed: signed codes (for activations that can be negative, such as the inputs).
    init_step: the initial step, > 0, or ``None`` for the data-driven initialization.
    where: which sites, by weight path (default: all).

  Returns:
    A :class:`~jaxcompress.Compressor` whose learned nodes are ``{'step': float[]}``.

  Raises:
    ValueError: if ``bits`` is out of range or ``init_step <= 0``; at ``init``, as
      :func:`~jaxcompress.quantization.site_quantizer`.

  References:
    Esser, McKinstry, Bablani, Appuswamy & Modha 2020, "Learned Step Size
    Quantization", https://arxiv.org/abs/1902.08153.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = lsq_activations(model, 2, inputs=(jnp.ones((1, 3)),), init_step=0.5)  # codes 0..3
    >>> tree, state = c.init({'w': jnp.ones((3, 1))})
    >>> tree.extra
    {'w': {'step': Array(0.5, dtype=float32)}}
    >>> c.rewrite(model, tree, state)(c.apply(tree, state), jnp.array([[0.3, 0.9, 7.0]])).tolist()  # 0.5 + 1.0 + 1.5
    [[3.0]]
  """
  bits = _check_bits(bits, signed)
  if init_step is not None:
    init_step = validate.check_float("init_step", init_step, low=0.0, low_open=True)
  qn, qp = lsq_range(bits, signed)

  def init_node(site, x):
    if not signed and bool(jnp.any(x < 0)):
      warnings.warn(
        f"lsq_activations: the activation feeding site {site.key!r} is negative on the example inputs "
        f"(min {float(jnp.min(x)):.3g}) and unsigned codes clip it to 0; pass signed=True for such sites "
        "(for example the model's input) or leave them out with where=",
        stacklevel=4,
      )
    return {"step": lsq_init_step(x, qp) if init_step is None else jnp.asarray(init_step, x.dtype)}

  def quantize(x, node, site):
    step = node["step"].astype(x.dtype)
    return lsq_quantize(x, step, qn, qp, 1.0 / math.sqrt(activations.features_per_example(site) * qp))

  def update(act_params):
    return jax.tree.map(uniform.floor_positive, act_params)

  return activations.site_quantizer(
    apply_fn, inputs=inputs, init_node=init_node, quantize=quantize, update=update, where=where
  )
