"""Plumbing for compressors that act leaf by leaf: select, validate, map.

Per-leaf state mirrors the param tree with ``None`` at unselected leaves, so the
numerics of a technique are written for one array and this module walks the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, check_matching, is_packed_leaf, map_with_path


def init_selected(
  params: PyTree,
  where: select.Where,
  init_leaf: Callable[[str, jax.Array], Any],
  *,
  reject_nonfinite: bool = True,
) -> PyTree:
  """Builds per-leaf state: ``init_leaf(path, leaf)`` where selected, ``None`` elsewhere.

  Args:
    params: the param tree.
    where: the selection (see :mod:`jaxcompress.core.select`).
    init_leaf: builds one selected leaf's state.
    reject_nonfinite: raise on NaN or infinity in a concrete selected leaf.

  Returns:
    A tree with ``params``'s structure holding states and ``None``.

  Raises:
    ValueError: if ``where`` selects nothing, or a selected leaf is integer, empty or
      (when concrete) non-finite.
  """
  pred = select.as_predicate(where)
  selected = [False]

  def one(path, leaf):
    if not pred(path, leaf):
      return None
    validate.check_weight_leaf(path, leaf)
    if reject_nonfinite:
      validate.check_finite_if_concrete(path, leaf)
    selected[0] = True
    return init_leaf(path, leaf)

  states = map_with_path(one, params)
  if not selected[0]:
    select.explain(where, params)  # raises, listing the available paths
  return states


def map_selected(fn: Callable[..., Any], params: PyTree, leaf_states: PyTree, *rest: PyTree) -> PyTree:
  """Maps ``fn(param, leaf_state, *rest_leaves)`` over selected leaves; others pass through.

  Raises:
    ValueError: if ``leaf_states`` does not mirror ``params``.
  """
  check_matching(params, leaf_states, "compressor state")
  return jax.tree.map(
    lambda p, s, *r: p if s is None else fn(p, s, *r),
    params,
    leaf_states,
    *rest,
    is_leaf=is_packed_leaf,
  )


def update_selected(
  fn: Callable[..., tuple[Any, Any]], params: PyTree, leaf_states: PyTree, *rest: PyTree
) -> tuple[PyTree, PyTree]:
  """Maps ``fn(param, leaf_state, *rest_leaves) -> (param, leaf_state)`` over selected
  leaves and returns the new params and the new per-leaf state (``None`` kept at
  unselected leaves).

  Raises:
    ValueError: if ``leaf_states`` does not mirror ``params``.
  """
  check_matching(params, leaf_states, "compressor state")
  treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
  columns = [treedef.flatten_up_to(t) for t in (params, leaf_states, *rest)]
  new_params, new_states = [], []
  for p, s, *r in zip(*columns):
    if s is not None:
      p, s = fn(p, s, *r)
    new_params.append(p)
    new_states.append(s)
  return treedef.unflatten(new_params), treedef.unflatten(new_states)


class Selected(NamedTuple):
  """Per-leaf state of a compressor that needs none beyond "this leaf is selected"."""


class LeafwiseState(NamedTuple):
  """State of a leaf-by-leaf compressor: a step counter and the per-leaf states.

  Attributes:
    count: ``int32`` step counter (``update`` advances it; stochastic methods fold it
      into their keys).
    leaves: the per-leaf state (:class:`Selected`, or the technique's own) at selected
      leaves, ``None`` elsewhere.
  """

  count: jax.Array
  leaves: Any

  @classmethod
  def start(cls, leaves: PyTree) -> LeafwiseState:
    """The state at step 0 holding ``leaves``."""
    return cls(count=jnp.asarray(0, jnp.int32), leaves=leaves)

  def advance(self) -> LeafwiseState:
    """The same state one step later."""
    return self._replace(count=self.count + 1)
