"""Straight-through estimators: the custom gradients of every quantizer, written once.

A quantizer's forward value ``y`` is piecewise constant in its input, so each method
defines the gradient it trains with instead. All of them have one shape: the gradient
reaching each input is the output gradient ``g`` times a *local derivative* computed in
the forward pass, zeroed where a mask is False, and summed back to the input's shape
(an input broadcast against ``x``, such as a per-tensor step, gets the sum over the
elements that share it). :func:`surrogate` runs a quantizer's *rule* (its forward
value and local derivatives) under that one ``custom_vjp``; :func:`straight_through` is
its simplest case.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Local(NamedTuple):
  """The local derivative of a quantizer's output with respect to one of its inputs.

  The gradient is ``where(mask, g * factor, 0)``, summed to the input's shape and then
  multiplied by ``scale``.

  Attributes:
    mask: ``bool`` array broadcastable to ``y``: where the gradient passes; ``None``
      everywhere.
    factor: float array broadcastable to ``y``: what ``g`` is multiplied by; ``None`` is 1.
    scale: a static float applied after the sum (LSQ's gradient scale); ``None`` is 1.
  """

  mask: jax.Array | None = None
  factor: jax.Array | None = None
  scale: float | None = None


def sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums a broadcast result back to ``shape`` (the reverse of broadcasting).

  Args:
    x: an array that ``shape`` broadcasts to.
    shape: the shape to sum back to (lower rank, or keepdims with 1s).

  Returns:
    An array of ``shape`` and ``x``'s dtype.
  """
  lead = x.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
  return jnp.sum(x, axis=axes).reshape(shape) if axes else x.reshape(shape)


def _apply(local: Local, g: jax.Array) -> jax.Array:
  t = g if local.factor is None else g * local.factor
  return t if local.mask is None else jnp.where(local.mask, t, jnp.zeros_like(t))


def _no_gradient(t: Any) -> Any:
  dtype = jnp.result_type(t)
  if jnp.issubdtype(dtype, jnp.inexact):
    return jnp.zeros_like(t)
  return np.zeros(jnp.shape(t), dtype=jax.dtypes.float0)


Rule = Callable[..., tuple[jax.Array, Local, tuple["Local | None", ...]]]
"""``rule(x, *params) -> (y, dx, dparams)``: the forward value and the local derivatives."""


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _surrogate(rule, x, *params):
  return rule(x, *params)[0]


def _surrogate_fwd(rule, x, *params):
  return rule(x, *params)[0], (x, params)


def _surrogate_bwd(rule, res, g):
  x, params = res
  _, dx, dparams = rule(x, *params)  # recomputed from the inputs, as a hand-written backward pass would
  grads = [_apply(dx, g).astype(jnp.result_type(x))]
  for p, local in zip(params, dparams, strict=True):
    if local is None:
      grads.append(_no_gradient(p))
      continue
    d = sum_to(_apply(local, g), jnp.shape(p))
    grads.append((d if local.scale is None else d * local.scale).astype(jnp.result_type(p)))
  return tuple(grads)


_surrogate.defvjp(_surrogate_fwd, _surrogate_bwd)


def surrogate(rule: Rule, x: jax.Array, *params: jax.Array) -> jax.Array:
  """``y`` of ``rule(x, *params)``, differentiated by the local derivatives the rule gives.

  Forward: ``y``. Backward, with ``g = dL/dy``: ``dL/dx = where(dx.mask, g * dx.factor,
  0)`` and, for each input ``p_i`` (a learned step, clip or scale broadcast against
  ``x``), ``dL/dp_i = sum_to(where(mask_i, g * factor_i, 0), p_i.shape) * scale_i``, each
  cast to its input's dtype; an input whose entry of ``dparams`` is ``None`` (a
  threshold, the code bounds, a mask) gets no gradient. The local derivatives are
  computed from the saved inputs in the backward pass.

  Args:
    rule: a static function ``rule(x, *params) -> (y, dx, dparams)`` with ``dx`` a
      :class:`Local` and ``dparams`` one :class:`Local` or ``None`` per param; every
      array it uses must be among its arguments.
    x: the quantizer's input.
    *params: its other array inputs, each broadcastable to ``x``.

  Returns:
    ``y``.

  References:
    Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients Through
    Stochastic Neurons", https://arxiv.org/abs/1308.3432.
  """
  return _surrogate(rule, x, *params)


def _identity_rule(x, y):
  return y, Local(), (None,)


def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
  """``y`` forward, the identity gradient ``dL/dx = dL/dy`` backward (none to ``y``).

  Args:
    x: the quantizer's input.
    y: its quantized value, ``x``'s shape (taken under ``stop_gradient``).

  Returns:
    ``y``.

  References:
    Bengio, Léonard & Courville 2013, https://arxiv.org/abs/1308.3432.
  """
  return surrogate(_identity_rule, x, jax.lax.stop_gradient(y))
