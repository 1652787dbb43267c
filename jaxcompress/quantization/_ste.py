"""Straight-through estimators: the custom gradients of every quantizer, written once.

A quantizer's forward value ``y`` is piecewise constant in its input, so each method
defines the gradient it trains with instead. All of them have one shape: the gradient
reaching each input is the output gradient ``g`` times a *local derivative* computed in
the forward pass, zeroed where a mask is False, and summed back to the input's shape
(an input broadcast against ``x``, such as a per-tensor step, gets the sum over the
elements that share it). :func:`surrogate` is that rule; :func:`straight_through` and
:func:`clipped` are its common cases.
"""

from __future__ import annotations

import functools
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _rule(x, params, y, local_x, local_params, scales):
  del x, params, local_x, local_params, scales
  return y


def _rule_fwd(x, params, y, local_x, local_params, scales):
  del scales
  return y, (x, params, y, local_x, local_params)


def _rule_bwd(scales, res, g):
  x, params, y, local_x, local_params = res
  dx = _apply(local_x, g).astype(jnp.result_type(x))
  dparams = []
  for p, local, s in zip(params, local_params, scales):
    d = sum_to(_apply(local, g), jnp.shape(p))
    dparams.append((d if s is None else d * s).astype(jnp.result_type(p)))
  zeros = lambda tree: jax.tree.map(_no_gradient, tree)
  return dx, tuple(dparams), zeros(y), zeros(local_x), zeros(local_params)


_rule.defvjp(_rule_fwd, _rule_bwd)


def surrogate(
  y: jax.Array,
  x: jax.Array,
  dx: Local | None = None,
  params: tuple[jax.Array, ...] = (),
  dparams: tuple[Local, ...] = (),
) -> jax.Array:
  """Returns ``y`` with the gradients ``dx`` for ``x`` and ``dparams`` for ``params``.

  Forward: ``y`` (computed by the caller from ``x`` and ``params``). Backward, with ``g =
  dL/dy``: ``dL/dx = where(dx.mask, g * dx.factor, 0)`` and, for each learned parameter
  ``p_i`` (a step, clip or scale broadcast against ``x``), ``dL/dp_i =
  sum_to(where(mask_i, g * factor_i, 0), p_i.shape) * scale_i``, each cast to its input's
  dtype. ``y`` and the local derivatives are taken under ``stop_gradient``: no gradient
  reaches the statistics they were computed from except through these rules.

  Args:
    y: the forward value, ``x``'s shape.
    x: the quantizer's input.
    dx: the local derivative for ``x``; ``None`` passes ``g`` straight through.
    params: the learned inputs, each broadcastable to ``x``.
    dparams: one :class:`Local` per entry of ``params``.

  Returns:
    ``y``.

  Raises:
    ValueError: if ``params`` and ``dparams`` differ in length.

  References:
    Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients Through
    Stochastic Neurons", https://arxiv.org/abs/1308.3432.
  """
  if len(params) != len(dparams):
    raise ValueError(f"got {len(params)} params but {len(dparams)} local derivatives")
  scales = tuple(local.scale for local in dparams)
  strip = lambda local: jax.lax.stop_gradient((local.mask, local.factor))
  local_x = Local(*strip(dx or Local()))
  local_params = tuple(Local(*strip(local)) for local in dparams)
  return _rule(x, tuple(params), jax.lax.stop_gradient(y), local_x, local_params, scales)


def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
  """``y`` forward, the identity gradient ``dL/dx = dL/dy`` backward (none to ``y``).

  Args:
    x: the quantizer's input.
    y: its quantized value, ``x``'s shape.

  Returns:
    ``y``.

  References:
    Bengio, Léonard & Courville 2013, https://arxiv.org/abs/1308.3432.
  """
  return surrogate(y, x)


def clipped(x: jax.Array, y: jax.Array, inside: jax.Array) -> jax.Array:
  """``y`` forward; backward, the clipped straight-through gradient ``where(inside, g, 0)``.

  Args:
    x: the quantizer's input.
    y: its quantized value, ``x``'s shape.
    inside: ``bool``, broadcastable to ``x``: where the gradient passes (inside the range).

  Returns:
    ``y``.

  References:
    Bengio, Léonard & Courville 2013, https://arxiv.org/abs/1308.3432; Hubara et al.
    2016, "Binarized Neural Networks", https://arxiv.org/abs/1602.02830 (hard-tanh STE).
  """
  return surrogate(y, x, Local(mask=inside))
