"""The compressed step as an optax ``GradientTransformation``, for loops the user writes.

:func:`masked_optimizer` wraps an optax transformation so that one ``tx.update`` is
everything :func:`~jaxcompress.train.make_step` does after the gradients: the masks of
``Compressor.masks`` / ``frozen`` keep the optimizer off pruned and frozen coordinates
(gradients, moments and updates zeroed there, so neither momentum nor weight decay
revives a weight), the compressor's ``update`` projects the params and advances its state
(kept inside the optimizer state, :class:`MaskedState`), and ``restart`` restarts the
inner optimizer. So ``flax.training.train_state.TrainState(tx=masked_optimizer(...))``
and its ``apply_gradients`` run a compressed step, whatever the compressor does to the
trainable tree (a codebook for k-means, ``(weight, step)`` for LSQ, smaller arrays for
channel pruning).

Mutable collections (BatchNorm statistics) that a compressor must see, as
:func:`~jaxcompress.pruning.channel_prune` must, live in the compressed tree beside the
params: ``hold`` keeps them off the optimizer, and :func:`update_mutable` writes the
values the model computed back into the trainable tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core import select
from jaxcompress.core._base import Compressor, Joint, split
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.train._masks import hold_masks, mask_tree, reset_pruned
from jaxcompress.train._step import _all_finite, _reads

HOLD = r"batch_stats/.*"
"""The default ``hold``: Flax Linen's BatchNorm statistics collection."""


class MaskedState(NamedTuple):
  """State of :func:`masked_optimizer`.

  Attributes:
    inner: the wrapped optax transformation's state.
    cstate: the compressor's state (read it with :func:`compressor_state`).
  """

  inner: optax.OptState
  cstate: Any


def _model_nodes(params: PyTree, cstate: Any, compressor: Compressor) -> tuple[Any, list[tuple[str, Any]], list[Any]]:
  """The model tree's structure, its ``(path, shape)`` leaves, and the trainable node under each."""
  model = jax.eval_shape(compressor.apply, params, cstate)
  model_def = jax.tree.structure(model)
  tree, _ = split(params)
  return model_def, leaves_with_paths(model), model_def.flatten_up_to(tree)


def held_masks(params: PyTree, cstate: Any, compressor: Compressor, hold: select.Where) -> PyTree | None:
  """All-False masks on every trainable array under a model leaf that ``hold`` selects.

  Args:
    params: the trainable tree.
    cstate: the compressor's state.
    compressor: the compressor.
    hold: model leaves kept off the optimizer, by model path (a regex, ``(path, leaf) ->
      bool`` or ``None`` for none); a restructured node is held whole (channel pruning's
      smaller statistics).

  Returns:
    Masks mirroring ``params`` (``None`` at leaves not held), or ``None`` if none is held.
  """
  if hold is None:
    return None
  pred = select.as_predicate(hold)
  model_def, flat, nodes = _model_nodes(params, cstate, compressor)
  out, any_held = [], False
  for (path, leaf), node in zip(flat, nodes):
    held = bool(pred(path, leaf))  # pyrefly: ignore[unnecessary-type-conversion]
    any_held |= held
    out.append(jax.tree.map(lambda x, h=held: jnp.zeros(jnp.shape(x), bool) if h else None, node))
  if not any_held:
    return None
  carried = model_def.unflatten(out)
  _, extra = split(params)
  return carried if extra is None else Joint(carried, jax.tree.map(lambda _: None, extra))


def _and(a: PyTree | None, b: PyTree | None) -> PyTree | None:
  if a is None or b is None:
    return b if a is None else a

  def one(x, y):
    return y if x is None else (x if y is None else jnp.logical_and(x, y))

  return jax.tree.map(one, a, b, is_leaf=lambda x: x is None)


def step_masks(params: PyTree, cstate: Any, compressor: Compressor, hold: select.Where = None) -> PyTree | None:
  """The coordinates the optimizer may move, as masks mirroring the trainable tree.

  ``compressor.masks`` (kept) and not ``compressor.frozen``, carried onto ``params`` by
  ``compressor.pull_masks`` (by shape, :func:`~jaxcompress.train.trainable_masks`, unless
  the compressor restructures), and False everywhere under ``hold``.

  Returns:
    ``bool`` masks mirroring ``params`` (``None`` at free leaves), or ``None`` when
    every coordinate is free.
  """
  model_masks = hold_masks(compressor.masks(cstate), compressor.frozen(cstate))
  masks = None if model_masks is None else compressor.pull_masks(params, cstate, model_masks)
  return _and(masks, held_masks(params, cstate, compressor, hold))


def masked_update(
  tx: optax.GradientTransformation,
  compressor: Compressor,
  grads: PyTree,
  opt_state: optax.OptState,
  params: PyTree,
  cstate: Any,
  *,
  hold: select.Where = None,
) -> tuple[PyTree, optax.OptState, Any]:
  """One compressed optimizer step on the trainable tree, as ``make_step`` takes it.

  Masks (:func:`step_masks`) zero the moments, gradients and updates of pruned, frozen
  and held coordinates; ``tx`` updates; the compressor's ``update`` projects the params
  (skipped, params and state kept, when it reads gradients that are not all finite);
  where ``compressor.restart`` is True the inner state is ``tx.init(params)``.

  Args:
    tx: the optax transformation.
    compressor: the compressor.
    grads: gradients of the loss, a tree like ``params``.
    opt_state: ``tx``'s state on ``params``.
    params: the trainable tree.
    cstate: the compressor's state.
    hold: model leaves kept off the optimizer (see :func:`held_masks`).

  Returns:
    ``(params, opt_state, cstate)`` after the step.
  """
  masks = step_masks(params, cstate, compressor, hold)
  grads_in = grads
  if masks is not None:
    opt_state = reset_pruned(tx, opt_state, masks)
    grads_in = mask_tree(grads, masks)
  updates, opt_state = tx.update(grads_in, opt_state, params)
  if masks is not None:
    updates = mask_tree(updates, masks)
  new = optax.apply_updates(params, updates)

  def update(p, s, g):
    return compressor.update(p, s, grads=g)

  if not _reads(lambda g: update(new, cstate, g), grads):
    new, cstate = update(new, cstate, grads)
  else:  # scores and masks computed from NaN would be lost for good
    new, cstate = jax.lax.cond(_all_finite(grads), update, lambda p, s, g: (p, s), new, cstate, grads)
  restart = compressor.restart(cstate)
  if restart is not None:
    fresh = tx.init(new)
    opt_state = jax.tree.map(lambda f, o: jnp.where(restart, f, o), fresh, opt_state)
  return new, opt_state, cstate


def _delta(old: jax.Array, new: jax.Array) -> jax.Array:
  """An update ``u`` with ``old + u == new`` exactly wherever one rounding step can reach it."""
  u = new - old
  return jnp.where(old + u == new, u, u + (new - (old + u)))


def masked_optimizer(
  tx: optax.GradientTransformation, compressor: Compressor, cstate: Any, *, hold: select.Where = HOLD
) -> optax.GradientTransformation:
  """An optax transformation that runs a compressor's training step (see the module docstring).

  ``init(params)`` takes the *trainable* tree (``compressor.init``'s first output) and
  keeps ``cstate`` in :class:`MaskedState`; ``update(grads, state, params)`` (``params``
  is required) runs :func:`masked_update` and returns the updates that take ``params``
  to the projected params: ``optax.apply_updates`` lands on them exactly where the
  projection zeroes a coordinate or leaves it (pruning, frozen weights) and wherever
  ``new - old`` is exact, otherwise within one rounding of ``new``.

  Args:
    tx: the optax transformation to wrap (``optax.adamw(...)``, a chain, ...).
    compressor: the compressor.
    cstate: its state from ``compressor.init``.
    hold: model leaves kept off the optimizer by model path (default
      ``r'batch_stats/.*'``, Flax Linen's BatchNorm statistics): no gradient, no moment,
      no update, no weight decay. ``None`` holds nothing.

  Returns:
    An ``optax.GradientTransformation``; read the compressor's state with
    :func:`compressor_state`.

  Raises:
    ValueError: from ``update`` without ``params``; a bad ``hold`` raises at once.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxcompress import pruning
    >>> c = pruning.magnitude(0.5)
    >>> params, cstate = c.init({'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])})
    >>> tx = masked_optimizer(optax.sgd(0.1, momentum=0.9), c, cstate)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
    >>> optax.apply_updates(params, updates)['w'].tolist()
    [[0.0, 0.0], [2.9000000953674316, 3.9000000953674316]]
  """
  if hold is not None:
    select.as_predicate(hold)

  def init(params):
    return MaskedState(tx.init(params), cstate)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("masked_optimizer's update needs params= (the trainable tree): the compressor projects them")
    new, inner, cs = masked_update(tx, compressor, updates, state.inner, params, state.cstate, hold=hold)
    return jax.tree.map(_delta, params, new), MaskedState(inner, cs)

  return optax.GradientTransformation(init, update)


def compressor_state(opt_state: optax.OptState) -> Any:
  """The compressor's state inside an optimizer state built by :func:`masked_optimizer`.

  Args:
    opt_state: the state (``TrainState.opt_state``), possibly inside an optax chain.

  Returns:
    The compressor's state after the latest step.

  Raises:
    ValueError: if ``opt_state`` holds no (or more than one) :class:`MaskedState`.
  """
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, MaskedState))]
  found = [x for x in found if isinstance(x, MaskedState)]
  if len(found) != 1:
    raise ValueError(f"expected one masked_optimizer state in opt_state, found {len(found)}")
  return found[0].cstate


def update_mutable(compressor: Compressor, params: PyTree, cstate: Any, values: PyTree) -> PyTree:
  """Writes values the model computed (new BatchNorm statistics) into the trainable tree.

  ``values`` covers part of the model's tree (a Linen ``mutated`` dict such as
  ``{'batch_stats': ...}``, at the model's shapes). Each trainable node under those
  model leaves gets ``values`` pulled back through the transpose of ``compressor.apply``
  there (``jax.vjp``): the inverse of ``apply`` where it passes a leaf through (the
  identity) or scatters a smaller one into zeros (channel pruning keeps the kept
  channels' statistics), exactly. Every other leaf is left as it is.

  Args:
    compressor: the compressor.
    params: the trainable tree.
    cstate: the compressor's state.
    values: a tree over model leaves, as the model's ``apply`` returns them.

  Returns:
    ``params`` with the nodes under ``values`` replaced.

  Raises:
    ValueError: if a path in ``values`` is not a leaf of the model's tree, or its
      shape differs.
  """
  model = jax.eval_shape(compressor.apply, params, cstate)
  model_def = jax.tree.structure(model)
  given = dict(leaves_with_paths(values))
  flat = leaves_with_paths(model)
  known = {p: s for p, s in flat}
  for path, v in given.items():
    if path not in known:
      raise ValueError(f"update_mutable: {path!r} is not a leaf of the model's tree (leaves: {list(known)[:10]})")
    if tuple(jnp.shape(v)) != tuple(known[path].shape):
      raise ValueError(f"update_mutable: {path!r} has shape {jnp.shape(v)}, the model's leaf {known[path].shape}")
  cot = model_def.unflatten(
    [jnp.asarray(given[p], s.dtype) if p in given else jnp.zeros(s.shape, s.dtype) for p, s in flat]
  )
  _, pull = jax.vjp(lambda p: compressor.apply(p, cstate), params)
  (back,) = pull(cot)
  tree, extra = split(params)
  back_tree, _ = split(back)
  nodes = model_def.flatten_up_to(tree)
  back_nodes = model_def.flatten_up_to(back_tree)
  out = [b if p in given else n for (p, _), n, b in zip(flat, nodes, back_nodes)]
  merged = model_def.unflatten(out)
  return merged if extra is None else Joint(merged, extra)


def train_state_step(loss_fn: Callable[..., Any], compressor: Compressor) -> Callable[..., tuple[Any, Any]]:
  """A compressed training step over a Flax ``TrainState`` whose ``tx`` is :func:`masked_optimizer`.

  ``loss_fn(model_variables, *batch) -> (loss, mutated)`` runs the model (for Linen,
  ``module.apply(variables, x, train=True, rngs={'dropout': key},
  mutable=['batch_stats'])``) and returns the mutated collections; the step
  differentiates :func:`~jaxcompress.train.wrap_loss` of it (``apply``, ``rewrite``,
  ``penalty``) in the trainable tree, calls ``state.apply_gradients`` and writes
  ``mutated`` back with :func:`update_mutable`. Pass a fresh dropout key every step
  (``jax.random.fold_in(key, state.step)``).

  Args:
    loss_fn: ``loss_fn(model_variables, *batch) -> (scalar loss, mutated)``.
    compressor: the compressor given to :func:`masked_optimizer`.

  Returns:
    ``step(state, *batch) -> (state, loss)``, a pure function (jit it).
  """
  from jaxcompress.train._step import wrap_loss

  grad_fn = jax.value_and_grad(wrap_loss(loss_fn, compressor, has_aux=True), has_aux=True)

  def step(state, *batch):
    cstate = compressor_state(state.opt_state)
    (loss, mutated), grads = grad_fn(state.params, cstate, *batch)
    state = state.apply_gradients(grads=grads)
    if mutated:
      params = update_mutable(compressor, state.params, compressor_state(state.opt_state), mutated)
      state = state.replace(params=params)
    return state, loss

  return step
