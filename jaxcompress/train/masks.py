"""Masks in training: find a compressor's keep-masks, keep the optimizer off pruned
coordinates, and reset its moments where a mask changes, so momentum and weight decay
never revive a weight and a regrown weight starts with fresh moments."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core.tree import PyTree, is_packed_leaf, leaves_with_paths, map_with_path


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
