"""Plumbing for quantizers whose trainable tree differs from the model's tree.

TTQ, LSQ and PACT add learned scales next to each selected weight, and k-means
replaces a weight by its codebook: ``init`` turns each selected leaf into a *node*
(an array or a ``NamedTuple`` of arrays) of the trainable tree, and ``apply`` maps the
nodes back to dense leaves. The per-leaf state mirrors the *model's* tree, with
``None`` at unselected leaves and an instance of the technique's state type elsewhere,
so walking ``(state, trainable)`` pairs flattens the trainable tree only up to the
model's leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxcompress.core import leafwise, select
from jaxcompress.core.tree import PyTree


class _Pair:
  """An opaque (node, state) pair while building the trees (not a pytree)."""

  def __init__(self, node: Any, state: Any):
    self.node, self.state = node, state


def init(params: PyTree, where: select.Where, init_leaf: Callable[[str, jax.Array], tuple[Any, Any]]):
  """Builds the trainable tree and the per-leaf state.

  Args:
    params: the model's param tree.
    where: the selection.
    init_leaf: ``(path, leaf) -> (node, leaf_state)`` for each selected leaf.

  Returns:
    ``(trainable, leaf_states)``: ``params`` with each selected leaf replaced by its
    node, and a tree of ``params``'s structure holding ``leaf_state`` or ``None``.

  Raises:
    ValueError: as :func:`jaxcompress.core.leafwise.init_selected`.
  """
  pairs = leafwise.init_selected(params, where, lambda path, leaf: _Pair(*init_leaf(path, leaf)))
  is_pair = lambda x: x is None or isinstance(x, _Pair)
  trainable = jax.tree.map(lambda s, p: p if s is None else s.node, pairs, params, is_leaf=is_pair)
  states = jax.tree.map(lambda s: None if s is None else s.state, pairs, is_leaf=is_pair)
  return trainable, states


def map_nodes(
  fn: Callable[[Any, Any], Any],
  trainable: PyTree,
  leaf_states: PyTree,
  state_type: type,
  node_type: type | None = None,
) -> PyTree:
  """Maps ``fn(node, leaf_state)`` over the selected nodes; other leaves pass through.

  ``fn`` returns an array (``apply``: the result has the model's structure) or a new
  node (``update``: the result is a new trainable tree).

  Raises:
    ValueError: if ``trainable`` does not have the structure ``init`` gave it (or a
      selected node is not a ``node_type``, when given).
  """
  is_state = lambda x: x is None or isinstance(x, state_type)
  states, treedef = jax.tree.flatten(leaf_states, is_leaf=is_state)
  try:
    nodes = treedef.flatten_up_to(trainable)
  except (ValueError, TypeError) as e:
    raise ValueError(f"the trainable tree does not match the compressor's state ({e})") from None
  if node_type is not None:
    for s, p in zip(states, nodes):
      if s is not None and not isinstance(p, node_type):
        raise ValueError(
          f"the trainable tree holds a {type(p).__name__} where init put a {node_type.__name__}: "
          "pass the tree that init returned, not the model's params"
        )
  return treedef.unflatten([p if s is None else fn(p, s) for s, p in zip(states, nodes)])
