"""LR-Nets (Shayer, Levi & Fetaya 2018): ternary weights as learned categorical
distributions, trained through the local reparameterization trick.

Numerics (one array): :func:`ternary_probabilities` (the paper's sigmoid
parameterization), :func:`ternary_moments` (mean and variance of each weight) and
:func:`ternary_init_logits` (the distribution fitted to a trained float weight);
:func:`lr_nets` is the compressor: ``apply`` gives the mean weights, ``rewrite`` samples
each pre-activation from the Gaussian the weight distribution implies.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import path_str
from jaxcompress.graph._trace import Site
from jaxcompress.quantization import _reparam, uniform


def ternary_probabilities(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The paper's ternary parameterization: ``P(w = 0) = sigmoid(a)`` and
  ``P(w = 1 | w != 0) = sigmoid(b)``.

  Args:
    a, b: float arrays of one shape (the logits).

  Returns:
    ``(P(w = -1), P(w = 0), P(w = 1))``, each of that shape, summing to 1.

  References:
    Shayer, Levi & Fetaya 2018, "Learning Discrete Weights Using the Local
    Reparameterization Trick", §3.1, https://arxiv.org/abs/1710.07739.
  """
  p0 = jax.nn.sigmoid(a)
  nonzero = jax.nn.sigmoid(-a)  # 1 - p0 without cancellation
  return nonzero * jax.nn.sigmoid(-b), p0, nonzero * jax.nn.sigmoid(b)


def ternary_moments(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of a ternary weight in ``{-1, 0, 1}`` with logits ``(a, b)``:
  ``E[w] = P(1) - P(-1)``, ``Var[w] = P(1) + P(-1) - E[w]^2`` (``>= 0``).

  Args:
    a, b: float arrays of one shape.

  Returns:
    ``(mean, variance)`` of that shape.
  """
  pm, _, pp = ternary_probabilities(a, b)
  mean = pp - pm
  return mean, jnp.maximum(pp + pm - mean * mean, 0)


def ternary_init_logits(w: jax.Array, p_min: float = 0.05, p_max: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """The paper's initialization from a trained float weight ``w`` in ``[-1, 1]``:
  ``P(w = 0) = p_max - (p_max - p_min) |w|`` and ``P(w = 1 | w != 0) = (1 + w / (1 -
  P(w = 0))) / 2``, both clipped to ``[p_min, p_max]``, so ``E[w]`` is ``w`` wherever the
  clips do not bind.

  Args:
    w: float array in ``[-1, 1]`` (larger magnitudes are clipped).
    p_min, p_max: the probability bounds, ``0 < p_min < p_max < 1``.

  Returns:
    ``(a, b)``, the logits.
  """
  w = jnp.clip(w, -1, 1)
  p0 = jnp.clip(p_max - (p_max - p_min) * jnp.abs(w), p_min, p_max)
  p1 = jnp.clip(0.5 * (1 + w / (1 - p0)), p_min, p_max)
  logit = lambda p: jnp.log(p) - jnp.log1p(-p)
  return logit(p0), logit(p1)


class LRParams(NamedTuple):
  """A ternary weight distribution in the trainable tree of :func:`lr_nets`.

  Attributes:
    a: ``P(w = 0) = sigmoid(a)``, the weight's shape.
    b: ``P(w = 1 | w != 0) = sigmoid(b)``, the weight's shape.
  """

  a: jax.Array
  b: jax.Array


class LRLeaf(NamedTuple):
  """Per-leaf state of :func:`lr_nets`.

  Attributes:
    scale: the fixed per-layer scale ``s`` (the values are ``s * {-1, 0, 1}``).
    key: raw ``uint32`` PRNG key data of this leaf.
  """

  scale: jax.Array
  key: Any


def _twn_scale(w: jax.Array) -> jax.Array:
  """TWN's scale: the mean of ``|w|`` over ``|w| > 0.7 mean|w|`` (Li et al. 2016)."""
  m = jnp.abs(uniform.upcast(w))
  keep = m > 0.7 * jnp.mean(m)
  s = jnp.sum(jnp.where(keep, m, 0)) / jnp.maximum(jnp.sum(keep), 1)
  return uniform.floor_positive(s).astype(w.dtype)


def _mode(node: LRParams) -> jax.Array:
  pm, p0, pp = ternary_probabilities(node.a, node.b)
  return jnp.argmax(jnp.stack([pm, p0, pp]), axis=0).astype(jnp.int32)  # 0, 1, 2 = -1, 0, +1; ties: the first


def lr_nets(
  *,
  total_steps: int,
  logit_decay: validate.ScalarOrSchedule = 1e-6,
  p_min: float = 0.05,
  p_max: float = 0.95,
  seed: int = 0,
  where: select.Where = None,
) -> Compressor:
  """LR-Nets: ternary weights ``s * {-1, 0, 1}`` with a learned categorical per weight,
  trained through the local reparameterization trick.

  ``init`` fits each selected weight's distribution to the trained float weight
  (:func:`ternary_init_logits` of ``w / s``, the paper's initialization) and replaces it
  by :class:`LRParams` ``(a, b)``. ``s`` is a fixed per-layer scale (TWN's, the mean
  ``|w|`` above ``0.7 mean|w|``): the paper's networks follow every layer with
  BatchNorm, which makes the scale immaterial; these need one. While the step count is
  below ``total_steps``, ``apply`` gives the mean weights ``s E[w]`` and ``rewrite``
  replaces each selected matmul/convolution ``y = x * W`` by a sample of the Gaussian
  the weight distribution implies: ``y = x * (s E[w]) + sqrt((x^2) * (s^2 Var[w])) *
  eps``, ``eps ~ N(0, 1)`` per output, with the key ``fold_in(leaf key, count)`` (under
  ``pmap`` every device draws the same pattern for its own shard). The logits train by
  its gradient. From step ``total_steps`` on, ``apply`` gives the most probable values
  (the deployed network) and ``rewrite`` runs the op as it is. The paper's regularizer,
  L2 on the distribution parameters, enters through the ``penalty`` seam:
  ``logit_decay * sum(a^2 + b^2)``; its probability-decay variant is not implemented.
  ``pack`` stores the most probable values as a
  :class:`~jaxcompress.export.CodebookArray` ``[-s, 0, s]`` with 2-bit indices.

  Args:
    total_steps: training steps (>= 1): sampling before it, the most probable values
      from it on.
    logit_decay: the L2 coefficient on the logits, >= 0, or a schedule ``step -> value``.
    p_min, p_max: the probability bounds of the initialization, ``0 < p_min < p_max < 1``.
    seed: seeds the per-leaf keys.
    where: which leaves (default: floating leaves with ``ndim >= 2``); each must reach
      its matmul or convolution as stored (no transpose or reshape between).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`LRLeaf`.

  Raises:
    ValueError: for ``total_steps < 1``, ``logit_decay < 0``, bounds outside ``0 <
      p_min < p_max < 1``; at ``init``, as :func:`jaxcompress.core.leafwise.init_selected`;
      in ``rewrite``, if a selected weight reaches its op reshaped.

  References:
    Shayer, Levi & Fetaya 2018, "Learning Discrete Weights Using the Local
    Reparameterization Trick", https://arxiv.org/abs/1710.07739.

  Example:
    >>> import jax.numpy as jnp
    >>> c = lr_nets(total_steps=1)
    >>> params, state = c.init({'w': jnp.array([[0.9, -0.05], [-1.0, 0.1]])})
    >>> s = state.leaves['w'].scale  # TWN's: mean(0.9, 1.0)
    >>> (c.apply(params, state._replace(count=1))['w'] / s).tolist()  # deployed: the most probable of -1, 0, 1
    [[1.0, 0.0], [-1.0, 0.0]]
  """
  total_steps = validate.check_int("total_steps", total_steps, low=1)
  decay = validate.as_schedule("logit_decay", logit_decay, lambda n, v: validate.check_float(n, v, low=0.0))
  p_min = validate.check_float("p_min", p_min, low=0.0, low_open=True)
  p_max = validate.check_float("p_max", p_max, high=1.0, high_open=True)
  if not p_min < p_max:
    raise ValueError(f"p_min must be below p_max, got p_min={p_min}, p_max={p_max}")
  seed = validate.check_int("seed", seed)
  root = jax.random.key(seed)

  def init(params, *, masks=None):
    del masks
    counter = [0]

    def init_leaf(path, w):
      del path
      s = _twn_scale(w)
      a, b = ternary_init_logits(uniform.divide(uniform.upcast(w), s.astype(uniform.upcast(w).dtype)), p_min, p_max)
      key = jax.random.key_data(jax.random.fold_in(root, counter[0]))
      counter[0] += 1
      return LRParams(a.astype(w.dtype), b.astype(w.dtype)), LRLeaf(s, key)

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def view(node, leaf, training):
    mean = ternary_moments(node.a, node.b)[0] * leaf.scale
    codebook = jnp.stack([-leaf.scale, jnp.zeros_like(leaf.scale), leaf.scale])
    return jnp.where(training, mean, codebook[_mode(node)]).astype(node.a.dtype)

  def apply(params, state):
    training = state.count < total_steps
    return _reparam.map_nodes(lambda n, leaf: view(n, leaf, training), params, state.leaves, LRLeaf, LRParams)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(node, leaf):
    s = np.asarray(leaf.scale)
    codebook = np.stack([-s, np.zeros_like(s), s]).astype(np.asarray(node.a).dtype)
    return export.from_assignments(codebook, np.asarray(_mode(node)))

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, LRLeaf, LRParams)

  def penalty(params, state):
    if not callable(logit_decay) and not logit_decay:
      return None
    terms: list[jax.Array] = []
    _reparam.map_nodes(lambda n, _: terms.append(jnp.sum(n.a**2) + jnp.sum(n.b**2)) or n, params, state.leaves, LRLeaf)
    return decay(state.count) * sum(terms)

  def nodes_by_path(params, state):
    is_state = lambda x: x is None or isinstance(x, LRLeaf)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state.leaves, is_leaf=is_state)
    nodes = treedef.flatten_up_to(params)
    return {path_str(kp): (n, s) for (kp, s), n in zip(flat, nodes) if s is not None}

  def rewrite(fn, params, state):
    selected = nodes_by_path(params, state)
    training = state.count < total_steps

    def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      node, leaf = selected[site.path]
      if weight.shape != node.a.shape:
        raise ValueError(
          f"lr_nets: the weight {site.path!r} reaches its op with shape {weight.shape}, stored {node.a.shape}: "
          "the local reparameterization needs it as stored"
        )
      mean = site.compute(activation, weight)
      var_w = (ternary_moments(node.a, node.b)[1] * leaf.scale * leaf.scale).astype(weight.dtype)
      var = site.compute(activation * activation, var_w)
      key = jax.random.fold_in(jax.random.wrap_key_data(leaf.key), state.count)
      key = jax.random.fold_in(key, zlib.crc32(site.key.encode()) & 0x7FFFFFFF)  # a weight used twice draws twice
      eps = jax.random.normal(key, mean.shape, mean.dtype)
      noise = jnp.sqrt(jnp.maximum(var, jnp.finfo(mean.dtype).tiny)) * eps
      return (mean + jnp.where(training, noise, jnp.zeros_like(noise))).astype(mean.dtype)

    return graph.rewrite(fn, rule, where=lambda path, site: path in selected)

  return Compressor(init, apply, update, pack, penalty=penalty, rewrite=rewrite)
