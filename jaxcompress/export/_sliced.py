"""``SlicedArray``: a smaller dense array plus which positions of each axis it keeps.

The packed form of structured (channel) pruning: the kept rows, columns and channels
are stored densely, and one bit per position of every original axis says which ones
they are, so ``materialize()`` can put them back among zeros.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._bitpack import pack_bits


@dataclasses.dataclass(frozen=True)
class SlicedArray(CompressedLeaf):
  """The kept sub-array of a dense array of ``dense_shape``.

  Attributes:
    values: the kept entries, a dense array whose axis ``a`` has as many entries as
      the kept positions of that axis.
    kept: :class:`~jaxcompress.export.BitPacked` 1-bit flags for every position
      of every axis, axis after axis (``sum(dense_shape)`` bits).
    dense_shape: the shape of the dense array.
  """

  values: Any
  kept: Any
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def _flags(self) -> list[np.ndarray]:
    flags = np.asarray(self.kept.materialize(), bool)
    bounds = np.cumsum((0, *self.dense_shape))
    return [flags[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

  def recompose(self, leaf: Any) -> Any:
    """``leaf`` stored as this leaf's kept block, when ``leaf`` is zero outside it."""
    from jaxcompress.export._masked import take

    flags = self._flags()
    dense = np.array(materialize(leaf))
    dense[np.ix_(*flags)] = 0
    if np.any(dense):  # the later stage made the removed positions nonzero: keep it whole
      return leaf
    block = take(leaf, flags)
    return leaf if block is None else dataclasses.replace(self, values=block)

  def prune(self, mask: Any) -> CompressedLeaf:
    """Prunes the kept sub-array (positions outside it are zeros already)."""
    from jaxcompress.export._masked import prune

    sub = np.asarray(mask, bool)[np.ix_(*self._flags())]
    return dataclasses.replace(self, values=prune(self.values, sub))

  def materialize(self) -> jax.Array:
    x = jnp.asarray(materialize(self.values))
    flags = self.kept.materialize().astype(bool)
    start = 0
    for axis, full in enumerate(self.dense_shape):
      k = flags[start : start + full]
      start += full
      if x.shape[axis] == full:
        continue
      idx = jnp.nonzero(k, size=x.shape[axis])[0]
      shape = list(x.shape)
      shape[axis] = full
      x = jnp.zeros(shape, x.dtype).at[(slice(None),) * axis + (idx,)].set(x, unique_indices=True)
    return x


jax.tree_util.register_dataclass(SlicedArray, data_fields=["values", "kept"], meta_fields=["dense_shape"])


def sliced_from_parts(values: Any, kept: Sequence[Any]) -> SlicedArray:
  """Builds a :class:`SlicedArray` from the kept values and per-axis flags.

  Args:
    values: the smaller dense array.
    kept: one entry per axis: ``None`` (axis kept whole) or a boolean vector over the
      original axis with as many True entries as ``values`` has along that axis.

  Raises:
    ValueError: if the flags do not match ``values``'s shape.
  """
  values = np.asarray(values)
  if len(kept) != values.ndim:
    raise ValueError(f"kept has {len(kept)} axes, values has shape {values.shape}")
  flags, shape = [], []
  for axis, k in enumerate(kept):
    k = np.ones(values.shape[axis], bool) if k is None else np.asarray(k, bool)
    if int(k.sum()) != values.shape[axis]:
      raise ValueError(f"axis {axis}: {int(k.sum())} kept flags for {values.shape[axis]} values")
    flags.append(k)
    shape.append(k.size)
  bits = pack_bits(np.concatenate(flags).astype(np.uint8), 1, signed=False)
  return SlicedArray(values=values, kept=bits, dense_shape=tuple(shape))


def narrowed(tree: Any) -> Any:
  """``tree`` with every :class:`SlicedArray` replaced by the kept block it stores.

  A channel-pruned model's packed tree (from ``export.save``/``load``) holds each pruned
  leaf at its original shape as a :class:`SlicedArray`; the narrowed model (``pruning.
  narrow_nnx``, ``pruning.narrow_linen``) runs on the kept blocks themselves. The block keeps
  its own packed form (a :class:`~jaxcompress.export.QArray` stays one, so integer serving
  still applies); every other leaf is returned as it is.

  Args:
    tree: a packed tree (dicts, lists, tuples, arrays and compressed leaves).

  Returns:
    The tree of the narrowed model's params.

  Example:
    >>> import numpy as np
    >>> leaf = sliced_from_parts(np.ones((2, 1), np.float32), [None, np.array([False, True, False])])
    >>> narrowed({'kernel': leaf})['kernel'].shape
    (2, 1)
  """
  return jax.tree.map(
    lambda x: x.values if isinstance(x, SlicedArray) else x, tree, is_leaf=lambda x: isinstance(x, CompressedLeaf)
  )
