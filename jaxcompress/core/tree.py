"""Pytree helpers: path strings and per-leaf maps over trees with empty nodes.

A compressor's state mirrors the param tree. Leaves it does not select hold ``None``
(a pytree node with no leaves, so it costs nothing), in the spirit of optax's
``MaskedNode``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxcompress.export._base import CompressedLeaf

PyTree = Any
"""Any JAX pytree: nested dicts, lists, tuples, NamedTuples, Flax NNX ``State``."""


def _key_name(key: Any) -> str | None:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.GetAttrKey):
    # Flax NNX Variables hold their array under the attribute `value`: not part of the name.
    return None if key.name in ("value", "raw_value") else key.name
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(keypath: tuple[Any, ...]) -> str:
  """Joins a JAX key path into a ``'/'``-separated string.

  Flax NNX wraps each array in a ``Variable`` whose array sits under the attribute
  ``value``; that component is dropped so NNX, Linen and plain dicts give the same
  path, for example ``'Dense_0/kernel'`` or ``'layers/0/kernel'``.

  Args:
    keypath: a key path as returned by ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The path string.
  """
  return "/".join(n for n in map(_key_name, keypath) if n is not None)


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
  """Returns ``[(path_string, leaf), ...]`` in the tree's flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_str(kp), leaf) for kp, leaf in flat]


def map_with_path(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
  """``jax.tree.map`` whose function also receives the leaf's path string first.

  ``rest`` trees are flattened up to ``tree``'s leaves, so they may hold ``None``
  where a compressor did not select a leaf.
  """
  return jax.tree_util.tree_map_with_path(lambda kp, *xs: fn(path_str(kp), *xs), tree, *rest)


def is_packed_leaf(x: Any) -> bool:
  """Compressed leaves count as leaves when walking a tree.

  An ``isinstance`` check, not duck typing: Flax NNX ``Variable`` forwards attribute
  access to its value, so a ``Param`` holding a compressed leaf also "has"
  ``materialize``.
  """
  return isinstance(x, CompressedLeaf)


def check_matching(params: PyTree, other: PyTree, what: str) -> None:
  """Raises ``ValueError`` unless ``other`` has ``params``'s structure up to its leaves.

  Args:
    params: the param tree.
    other: a tree that must mirror it (a compressor's per-leaf state, grads, ...),
      where a leaf of ``params`` may correspond to ``None``.
    what: what ``other`` is, for the message.

  Raises:
    ValueError: naming both structures when they do not match.
  """
  treedef = jax.tree_util.tree_structure(params, is_leaf=is_packed_leaf)
  try:
    treedef.flatten_up_to(other)
  except (ValueError, TypeError) as e:
    other_def = jax.tree_util.tree_structure(other, is_leaf=lambda x: x is None)
    raise ValueError(
      f"{what} does not match the param tree: params are {treedef}, {what} is {other_def} ({e})"
    ) from None
