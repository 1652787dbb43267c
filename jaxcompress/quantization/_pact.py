"""PACT: parameterized clipping with a learned clip ``alpha``, for activations and weights.

Numerics: :func:`pact_quantize` (unsigned, activations) and
:func:`pact_quantize_symmetric` (signed, weights), each with the paper's gradient for
``alpha``; :func:`pact_activations` and :func:`pact` build the activation quantizer and
the weight compressor.
"""

from __future__ import annotations

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
from jaxcompress.quantization.granularity import from_args


def _unsigned(x, alpha, levels):
  scale = alpha / levels
  codes = jnp.clip(jnp.round(uniform.divide(jnp.clip(x, 0, alpha), scale)), 0, levels)
  return uniform.saturate(codes * scale)  # code * scale can round past max


def _pact_rule(x, alpha, levels):
  clip = _ste.Local(mask=x >= alpha)  # Eq. 3: the clipped elements' gradients
  return _unsigned(x, alpha, levels), _ste.Local(mask=(x >= 0) & (x < alpha)), (clip, None)


def pact_quantize(x: jax.Array, alpha: jax.Array, bits: int) -> jax.Array:
  """PACT: ``y = clip(x, 0, alpha)``, quantized to ``2^b - 1`` steps of ``alpha / (2^b - 1)``.

  Gradients (Choi et al. 2018, Eqs. 1-3, straight-through for the rounding):
  ``dL/dx = g`` where ``0 <= x < alpha``, else 0; ``dL/dalpha = sum of g over x >= alpha``.

  Args:
    x: float array.
    alpha: the clip, positive, broadcastable to ``x``.
    bits: 1..16.

  Returns:
    ``x``'s shape and dtype.
  """
  levels = uniform.quant_range(bits, signed=False)[1]
  alpha = _clip_floor(jnp.asarray(alpha, x.dtype), levels)
  return _ste.surrogate(_pact_rule, x, alpha, jnp.asarray(levels, x.dtype))


def _symmetric(w, alpha, levels):
  scale = alpha / levels
  return uniform.saturate(_symmetric_codes(w, alpha, levels) * scale)  # code * scale can round past max


def _symmetric_codes(w, alpha, levels):
  # clipped: alpha / levels rounds in low precision (bfloat16), so alpha / step can exceed levels
  return jnp.clip(jnp.round(uniform.divide(jnp.clip(w, -alpha, alpha), alpha / levels)), -levels, levels)


def _pact_symmetric_rule(w, alpha, levels):
  clip = _ste.Local(mask=jnp.abs(w) >= alpha, factor=jnp.sign(w))
  return _symmetric(w, alpha, levels), _ste.Local(mask=jnp.abs(w) < alpha), (clip, None)


def pact_quantize_symmetric(w: jax.Array, alpha: jax.Array, bits: int) -> jax.Array:
  """PACT's clipping made symmetric for weights: ``clip(w, -alpha, alpha)`` on the signed
  grid of ``2^(b-1) - 1`` steps of ``alpha / (2^(b-1) - 1)`` each side.

  Gradients (straight-through for the rounding): ``dL/dw = g`` where ``|w| < alpha``,
  else 0; ``dL/dalpha = sum of g * sign(w) over |w| >= alpha`` (PACT's ``x >= alpha``
  rule applied to each side).

  Args:
    w: float array.
    alpha: the clip, positive, broadcastable to ``w``.
    bits: 2..16.

  Returns:
    ``w``'s shape and dtype.
  """
  levels = uniform.qmax(bits)
  alpha = _clip_floor(jnp.asarray(alpha, w.dtype), levels)
  return _ste.surrogate(_pact_symmetric_rule, w, alpha, jnp.asarray(levels, w.dtype))


def _check_decay(name, value):
  return validate.check_float(name, value, low=0.0)


def _clip_floor(alpha: jax.Array, levels: int) -> jax.Array:
  """``alpha`` floored so that the step ``alpha / levels`` stays a normal number: an
  all-zero layer or an optimizer step that drives ``alpha`` to or below 0 gives exact
  zeros, never 0 / 0."""
  return jnp.maximum(alpha, levels * jnp.finfo(alpha.dtype).tiny)


def pact_activations(
  apply_fn: Callable[..., Any],
  bits: int = 4,
  *,
  inputs: Sequence[Any],
  init_alpha: float | None = None,
  alpha_decay: validate.ScalarOrSchedule = 0.0,
  where: select.Where = None,
) -> Compressor:
  """PACT for activations: the input of each selected matmul/convolution is clipped to a
  learned ``[0, alpha]`` and quantized to ``bits`` unsigned bits.

  A model-side compressor (:mod:`jaxcompress.quantization._activations`): the clips are
  trainable (``extra`` of its :class:`~jaxcompress.Joint` tree). Gradients:
  :func:`pact_quantize`. ``init`` sets each ``alpha`` to ``init_alpha`` (the paper uses
  10) or to the largest example activation feeding the site; ``update`` keeps ``alpha``
  positive (floored at the dtype's smallest normal number). The paper's L2
  regularization of ``alpha`` enters the loss through the ``penalty`` seam:
  ``alpha_decay * sum(alpha^2)`` (the paper uses the weights' decay rate, which depends
  on the training recipe, so the default is 0: no term).

  Args:
    apply_fn: ``apply_fn(params, *inputs)``, batch first.
    bits: bits per activation, 1..16.
    inputs: example positional inputs of ``apply_fn`` (one batch).
    init_alpha: the initial clip, > 0, or ``None`` to start at the example maximum.
    alpha_decay: the L2 coefficient on the clips, >= 0, or a schedule ``step -> value``
      (optax schedules fit) evaluated at the state's step count.
    where: which sites, by weight path (default: all).

  Returns:
    A :class:`~jaxcompress.Compressor` whose learned nodes are ``{'alpha': float[]}``.

  Raises:
    ValueError: if ``bits`` is outside 1..16, ``init_alpha <= 0`` or ``alpha_decay < 0`` (a schedule: at step 0);
      at ``init``, as :func:`~jaxcompress.quantization.site_quantizer`.

  References:
    Choi, Wang, Venkataramani, Chuang, Srinivasan & Gopalakrishnan 2018, "PACT:
    Parameterized Clipping Activation for Quantized Neural Networks",
    https://arxiv.org/abs/1805.06085.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = pact_activations(model, 2, inputs=(jnp.ones((1, 3)),), init_alpha=3.0)  # levels 0..3
    >>> tree, state = c.init({'w': jnp.ones((3, 1))})
    >>> c.rewrite(model, tree, state)(c.apply(tree, state), jnp.array([[-1.0, 1.4, 9.0]])).tolist()  # 0 + 1 + 3
    [[4.0]]
  """
  bits = validate.check_bits("bits", bits)
  if init_alpha is not None:
    init_alpha = validate.check_float("init_alpha", init_alpha, low=0.0, low_open=True)
  decay = validate.as_schedule("alpha_decay", alpha_decay, _check_decay)

  def init_node(site, x):
    del site
    alpha = uniform.floor_positive(jnp.max(x)) if init_alpha is None else jnp.asarray(init_alpha, x.dtype)
    return {"alpha": alpha}

  def quantize(x, node, site):
    del site
    return pact_quantize(x, node["alpha"], bits)

  def update(act_params):
    return jax.tree.map(uniform.floor_positive, act_params)

  def penalty(act_params, count):
    if not callable(alpha_decay) and not alpha_decay:
      return None
    return decay(count) * sum(jnp.sum(a**2) for a in jax.tree.leaves(act_params))

  return activations.site_quantizer(
    apply_fn, inputs=inputs, init_node=init_node, quantize=quantize, update=update, penalty=penalty, where=where
  )


class PACTParams(NamedTuple):
  """A quantized weight in the trainable tree of :func:`pact`.

  Attributes:
    weight: the float weights.
    alpha: the learned clip: shape ``()`` per tensor; per channel or group, keepdims on
      the weight's blocked view (e.g. ``(1, out)`` for a Dense kernel with
      ``per_channel=True``).
  """

  weight: jax.Array
  alpha: jax.Array


def pact(
  bits: int = 4,
  *,
  init_alpha: float | None = None,
  alpha_decay: validate.ScalarOrSchedule = 0.0,
  per_channel: bool = False,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
  where: select.Where = None,
) -> Compressor:
  """Weights quantized with a learned symmetric clip ``alpha`` (PACT for weights), per
  tensor, per channel or per group.

  ``init`` replaces each selected leaf of the trainable tree by :class:`PACTParams`
  ``(weight, alpha)``, ``alpha`` starting at ``init_alpha`` or ``max|w|`` over the
  weights that share it (the whole tensor; each slice along ``axis`` with
  ``per_channel``; each group of ``group_size`` weights along ``group_axis``); ``apply``
  returns :func:`pact_quantize_symmetric` (codes ``-(2^(b-1)-1) .. 2^(b-1)-1``, step
  ``alpha / (2^(b-1)-1)``), whose gradients train the weights (straight-through inside
  the clip) and ``alpha`` (the summed gradients of the clipped weights, signed).
  ``update`` keeps ``alpha`` positive. ``pack`` stores a
  :class:`~jaxcompress.export.QArray` of signed ``bits``-bit codes. The paper clips
  activations and quantizes weights with DoReFa; this is its clipping rule carried to
  weights. ``alpha_decay * sum(alpha^2)`` enters the loss through the ``penalty`` seam
  (the paper's L2 on the clip; default 0: no term).

  Args:
    bits: bits per weight, 2..16.
    init_alpha: the initial clip, > 0, or ``None`` for ``max|w|``.
    alpha_decay: the L2 coefficient on the clips, >= 0, or a schedule ``step -> value``
      (optax schedules fit) evaluated at the state's step count.
    per_channel: one clip per slice along ``axis``.
    axis: the channel axis (-1: Flax's output features).
    group_size: if given, one clip per ``group_size`` consecutive weights along
      ``group_axis`` (and per channel along ``axis``); must divide that axis.
    group_axis: the axis cut into groups (0: a Dense kernel's contraction axis).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`; its trainable tree holds
    :class:`PACTParams` at the selected leaves.

  Raises:
    ValueError: if ``bits`` is outside 2..16, ``init_alpha <= 0`` or ``alpha_decay < 0`` (a schedule: at step 0),
      as :func:`~jaxcompress.quantization.granularity.from_args`; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis``/``group_axis`` is out
      of range or ``group_size`` does not divide the axis.

  References:
    Choi, Wang, Venkataramani, Chuang, Srinivasan & Gopalakrishnan 2018, "PACT:
    Parameterized Clipping Activation for Quantized Neural Networks",
    https://arxiv.org/abs/1805.06085.

  Example:
    >>> import jax.numpy as jnp
    >>> c = pact(2, init_alpha=0.5)  # values -0.5, 0, 0.5
    >>> params, state = c.init({'w': jnp.array([[0.3, -0.1], [-2.0, 0.2]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.5, -0.0], [-0.5, 0.0]]
  """
  bits = validate.check_bits("bits", bits, low=2)
  if init_alpha is not None:
    init_alpha = validate.check_float("init_alpha", init_alpha, low=0.0, low_open=True)
  decay = validate.as_schedule("alpha_decay", alpha_decay, _check_decay)
  levels = uniform.qmax(bits)
  granularity = from_args(per_channel=per_channel, axis=axis, group_size=group_size, group_axis=group_axis)
  per_tensor = granularity.channel_axis is None

  def init_leaf(path, w):
    granularity.check(tuple(w.shape), f"leaf {path!r}")
    amax = jnp.max(jnp.abs(w)) if per_tensor else granularity.absmax(w)
    alpha = uniform.floor_positive(amax) if init_alpha is None else jnp.full(amax.shape, init_alpha, w.dtype)
    return PACTParams(weight=w, alpha=alpha), leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def apply(params, state):
    return _reparam.map_nodes(
      lambda node, _: granularity.apply(lambda b, a: pact_quantize_symmetric(b, a, bits), node.weight, node.alpha),
      params,
      state.leaves,
      leafwise.Selected,
      PACTParams,
    )

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    keep_positive = lambda node, _: node._replace(alpha=_clip_floor(node.alpha, levels))
    return _reparam.map_nodes(keep_positive, params, state.leaves, leafwise.Selected, PACTParams), state.advance()

  def pack_leaf(node, _):
    w = jnp.asarray(node.weight)
    alpha, n = _clip_floor(jnp.asarray(node.alpha, w.dtype), levels), jnp.asarray(levels, w.dtype)
    codes = np.asarray(granularity.apply(lambda b, a: _symmetric_codes(b, a, n), w, alpha)).astype(np.int32)
    return export.QArray(
      codes=export.store_codes(codes, bits, signed=True),
      scale=np.asarray(alpha / n),
      zero_point=None,
      bits=bits,
      dtype=str(w.dtype),
      group_axis=None if granularity.group_size is None else granularity.group_axis,
      group_size=granularity.group_size,
    )

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, leafwise.Selected, PACTParams)

  def penalty(params, state):
    if not callable(alpha_decay) and not alpha_decay:
      return None
    alphas: list[jax.Array] = []
    _reparam.map_nodes(
      lambda node, _: alphas.append(node.alpha) or node, params, state.leaves, leafwise.Selected, PACTParams
    )
    return decay(state.count) * sum(jnp.sum(a**2) for a in alphas)

  return Compressor(init, apply, update, pack, penalty=penalty)
