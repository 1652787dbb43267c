"""Training with masks: pruned coordinates get no update, and the optimizer's moments
are reset where a mask changes, so momentum and weight decay never revive a weight."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core.base import Compressor
from jaxcompress.core.tree import PyTree, is_packed_leaf, leaves_with_paths, map_with_path
from jaxcompress.train.step import TrainState, wrap_loss


def masks_of(cstate: Any, params: PyTree) -> PyTree | None:
  """The combined keep-masks of a compressor state, mirroring ``params``.

  Looks through the state (and a ``chain``'s tuple of states) for ``masks`` fields that
  mirror ``params`` and ANDs them; leaves without a mask hold ``None``.

  Returns:
    The mask tree, or ``None`` if the state holds no masks.
  """
  treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
  found: list[list[Any]] = []

  def visit(node):
    masks = getattr(node, "masks", None) if hasattr(node, "_fields") else None
    if masks is not None:
      with contextlib.suppress(ValueError, TypeError):
        found.append(treedef.flatten_up_to(masks))
    if isinstance(node, tuple):
      for child in node:
        visit(child)

  visit(cstate)
  if not found:
    return None
  combined: list[Any] = []
  for column in zip(*found):
    present = [m for m in column if m is not None]
    combined.append(
      None if not present else jnp.logical_and.reduce(jnp.stack(present)) if len(present) > 1 else present[0]
    )
  return treedef.unflatten(combined)


def mask_tree(tree: PyTree, masks: PyTree) -> PyTree:
  """Zeroes ``tree``'s leaves where ``masks`` is False (``None`` masks pass through)."""
  return jax.tree.map(
    lambda x, m: x if m is None else jnp.where(m, x, jnp.zeros_like(x)), tree, masks, is_leaf=lambda x: x is None
  )


def reset_where(opt_state: optax.OptState, params: PyTree, reset: PyTree) -> optax.OptState:
  """Zeroes the optimizer state's per-parameter entries where ``reset`` is True.

  An optimizer-state leaf belongs to a parameter when its path ends with the
  parameter's path and it has the parameter's shape (Adam's ``mu`` and ``nu``, SGD's
  momentum trace, ...); scalars such as step counts are left alone.

  Args:
    opt_state: an optax state built on ``params``.
    params: the param tree, for paths and shapes.
    reset: ``bool`` arrays (or ``None``) mirroring ``params``.

  Returns:
    The optimizer state with those entries set to 0.
  """
  treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
  flat_reset = treedef.flatten_up_to(reset)
  targets = {path: (tuple(p.shape), r) for (path, p), r in zip(leaves_with_paths(params), flat_reset) if r is not None}

  def one(path, leaf):
    for ppath, (shape, r) in targets.items():
      if (path == ppath or path.endswith("/" + ppath)) and tuple(getattr(leaf, "shape", ())) == shape:
        return jnp.where(r, jnp.zeros_like(leaf), leaf)
    return leaf

  return map_with_path(one, opt_state)


def make_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  compressor: Compressor,
  *,
  axis_name: str | None = None,
  has_aux: bool = False,
) -> Callable[..., tuple[TrainState, Any]]:
  """A training step that keeps the optimizer off pruned weights.

  Like :func:`jaxcompress.train.make_step` (grad through ``apply``, optional ``pmean``,
  optax, ``update``), and in addition, with the masks found in the compressor's state
  (:func:`masks_of`): the optimizer receives zero gradients at pruned coordinates, its
  updates there are zeroed, and after ``update`` every coordinate whose mask changed
  (pruned or regrown) has its optimizer moments reset to 0 (:func:`reset_where`). So a
  regrown weight starts at 0 with fresh moments, and a pruned weight is not pushed by
  stale momentum or by weight decay. ``update`` still receives the unmasked gradients
  (RigL regrows by them). With no masks in the state it is the plain step.

  Args:
    loss_fn: ``loss_fn(model_params, *batch) -> loss`` (``(loss, aux)`` with
      ``has_aux``).
    optimizer: an optax transformation.
    compressor: the compressor.
    axis_name: the ``pmap`` axis to average gradients over, or ``None``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``step(state, *batch) -> (state, loss)``, pure; jitting is the caller's choice.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import jaxcompress as jc
    >>> c = jc.pruning.magnitude(0.5)
    >>> opt = optax.adam(0.1)
    >>> state = jc.train.init({'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}, opt, c)
    >>> step = make_step(lambda p, x: (x @ p['w']).sum(), opt, c)
    >>> state, loss = step(state, jnp.ones((1, 2)))
    >>> state.opt_state[0].mu['w'].tolist()  # no moment at the pruned weights
    [[0.0, 0.0], [0.10000000149011612, 0.10000000149011612]]
  """
  grad_fn = jax.value_and_grad(wrap_loss(loss_fn, compressor), has_aux=has_aux)

  def step(state: TrainState, *batch: Any) -> tuple[TrainState, Any]:
    out, grads = grad_fn(state.params, state.cstate, *batch)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      out = jax.lax.pmean(out, axis_name)
    masks = masks_of(state.cstate, state.params)
    opt_grads = grads if masks is None else mask_tree(grads, masks)
    updates, opt_state = optimizer.update(opt_grads, state.opt_state, state.params)
    if masks is not None:
      updates = mask_tree(updates, masks)
    params = optax.apply_updates(state.params, updates)
    params, cstate = compressor.update(params, state.cstate, grads=grads)
    new_masks = masks_of(cstate, params)
    if masks is not None and new_masks is not None:
      changed = jax.tree.map(lambda a, b: None if a is None else a != b, masks, new_masks, is_leaf=lambda x: x is None)
      opt_state = reset_where(opt_state, params, changed)
    return TrainState(params, opt_state, cstate), out

  return step
