"""``CodebookArray``: shared values plus a small index per weight."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._qarray import store_codes
from jaxcompress.export._sparse import SparseArray, from_mask


@dataclasses.dataclass(frozen=True)
class CodebookArray(CompressedLeaf):
  """``x = codebook[indices]``, weight sharing as in Deep Compression (Han, Mao & Dally
  2016, https://arxiv.org/abs/1510.00149, §3).

  Attributes:
    codebook: ``float[k]``, the shared values; or ``float[c, k]``, one codebook per
      slice along ``axis`` (per-channel codebooks, ``c = shape[axis]``).
    indices: unsigned integer indices of ``shape``, stored at ``ceil(log2 k)`` bits (a
      bit-packed stream, a native ``uint8``/``uint16`` array, or a sparse array of
      indices when index 0 stands for pruned zeros).
    axis: with a 2-D codebook, the axis of ``shape`` whose slices each use their own
      row of ``codebook``; ``None`` for one codebook.
    dtype: the floating dtype ``materialize`` returns, as a string (``'float32'``), when it
      differs from the codebook's (a codebook stored in ``float16`` for a ``float32``
      model: every stored value converts exactly); ``None``: the codebook's dtype.
  """

  codebook: Any
  indices: Any
  axis: int | None = None
  dtype: str | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.indices.shape)

  def materialize(self) -> jax.Array:
    idx = jnp.asarray(materialize(self.indices), jnp.int32)
    codebook = jnp.asarray(self.codebook)
    if self.axis is None:
      dense = codebook[idx]
    else:
      channel = jax.lax.broadcasted_iota(jnp.int32, idx.shape, self.axis % idx.ndim)
      dense = codebook[channel, idx]
    if isinstance(self.indices, SparseArray):  # pruned positions read 0.0, not codebook[0]
      dense = jnp.where(self.indices.present(), dense, jnp.zeros_like(dense))
    return dense if self.dtype is None else dense.astype(self.dtype)

  def take(self, kept: Any) -> CompressedLeaf | None:
    """The kept block: its indices, with per-channel codebook rows cut along ``axis``."""
    index = np.ix_(*[np.asarray(k, bool) for k in kept])
    idx = np.asarray(materialize(self.indices), np.int64)[index]
    codebook = np.asarray(self.codebook)
    if self.axis is not None:
      codebook = codebook[np.asarray(kept[self.axis], bool)]
    block = from_assignments(codebook, idx, axis=self.axis, dtype=self.dtype)
    if isinstance(self.indices, SparseArray):
      return block.prune(np.asarray(self.indices.present())[index])
    return block

  def recompose(self, leaf: Any) -> Any:
    """A later stage's leaf of this leaf's view kept as these indices with a new codebook, when
    every weight of a cluster got the same value (an elementwise quantizer after k-means:
    cluster-preserving QAT); weights that read exact zeros apart from their cluster (pruned
    ones) are stored absent. Returns ``leaf`` itself when the clusters were not preserved or
    it is smaller."""
    dense = np.asarray(materialize(leaf))
    if dense.shape != self.shape or not np.issubdtype(dense.dtype, np.floating) or self.dtype is not None:
      return leaf
    idx = np.asarray(materialize(self.indices), np.int64)
    k = np.asarray(self.codebook).shape[-1]
    if self.axis is None:
      rows, key = 1, idx
    else:
      rows = self.shape[self.axis]
      key = np.asarray(jax.lax.broadcasted_iota(np.int32, idx.shape, self.axis)) * k + idx
    v, key = dense.reshape(-1), key.reshape(-1)
    present = np.asarray(self.indices.present()).reshape(-1) if isinstance(self.indices, SparseArray) else True
    has = ((v != 0) | np.signbit(v)) & present  # a weight that carries its cluster's value
    book = np.zeros(rows * k, dense.dtype)
    book[key[has]] = v[has]
    rebuilt = book[key]
    if not np.array_equal(rebuilt[has].view(np.uint8), v[has].view(np.uint8)):
      return leaf  # a cluster's weights differ: the later stage did not preserve the clusters
    keep = (has | ((rebuilt == 0) & ~np.signbit(rebuilt))) & present
    out = from_assignments(book.reshape(np.asarray(self.codebook).shape), idx, axis=self.axis)
    if not keep.all():
      out = out.prune(keep.reshape(idx.shape))
    if np.asarray(out.materialize()).tobytes() != dense.tobytes():
      return leaf
    return out if out.nbytes <= getattr(leaf, "nbytes", dense.nbytes) else leaf

  def _zero_indices(self) -> np.ndarray | None:
    """Per position, the index of an exact 0.0 in its codebook row, or ``None`` if a row has none."""
    codebook = np.asarray(self.codebook)
    rows = codebook.reshape(1, -1) if self.axis is None else codebook
    zero = (rows == 0) & ~np.signbit(rows)  # +0.0 exactly: a pruned weight must read +0.0
    if not zero.any(axis=1).all():
      return None
    first = np.argmax(zero, axis=1)
    shape = self.shape
    if self.axis is None:
      return np.full(shape, first[0], np.int64)
    view = [1] * len(shape)
    view[self.axis] = shape[self.axis]
    return np.broadcast_to(first.reshape(view), shape)

  def prune(self, mask: Any) -> CompressedLeaf:
    """Keeps the codebook; stores the surviving indices sparse, or (when every codebook row
    holds an exact 0.0, as TTQ's ``[-W_n, 0, W_p]``) all indices dense pointing pruned
    positions at 0.0, whichever is smaller."""
    keep = np.asarray(mask, bool)
    idx = np.asarray(materialize(self.indices), np.int64)
    if isinstance(self.indices, SparseArray):
      keep = keep & np.asarray(self.indices.present())
    bits = index_bits(np.asarray(self.codebook).shape[-1])
    best = from_mask(idx, keep, value_bits=bits, signed=False)
    zeros = self._zero_indices()
    if zeros is not None:
      dense = store_codes(np.where(keep, idx, zeros), bits, signed=False)
      if dense.nbytes <= best.nbytes:
        return dataclasses.replace(self, indices=dense)
    return dataclasses.replace(self, indices=best)


jax.tree_util.register_dataclass(CodebookArray, data_fields=["codebook", "indices"], meta_fields=["axis", "dtype"])


def index_bits(num_codes: int) -> int:
  """Bits needed to index ``num_codes`` entries (at least 1)."""
  return max(1, math.ceil(math.log2(num_codes)))


def from_assignments(codebook: Any, indices: Any, *, axis: int | None = None, dtype: Any = None) -> CodebookArray:
  """Packs a codebook and per-weight indices, storing indices at ``log2 k`` bits.

  Args:
    codebook: ``float[k]``, ``k >= 1``; or ``float[c, k]`` with ``axis``.
    indices: integer array in ``[0, k)`` of the weight tensor's shape.
    axis: for a 2-D codebook, the axis of ``indices`` (of size ``c``) whose slices use
      their own codebook row.
    dtype: the floating dtype the weights materialize in, when it differs from the
      codebook's (a ``float16`` codebook of a ``float32`` layer); ``None`` (or the
      codebook's own dtype): the codebook's.

  Returns:
    A :class:`CodebookArray`.

  Raises:
    ValueError: if the codebook is empty or not 1-D (2-D with ``axis``, with one row per
      slice), an index is out of range, or ``dtype`` is not a floating dtype.
  """
  codebook = np.asarray(codebook)
  indices = np.asarray(indices)
  if axis is None and (codebook.ndim != 1 or codebook.size == 0):
    raise ValueError(f"codebook must be a non-empty 1-D array, got shape {codebook.shape}")
  if axis is not None:
    if not -indices.ndim <= axis < indices.ndim:
      raise ValueError(f"axis={axis} is out of range for indices of shape {indices.shape}")
    if codebook.ndim != 2 or codebook.shape[0] != indices.shape[axis] or codebook.shape[1] == 0:
      raise ValueError(f"a per-channel codebook must have shape ({indices.shape[axis]}, k >= 1), got {codebook.shape}")
    axis = axis % indices.ndim
  k = codebook.shape[-1]
  bits = index_bits(k)
  if indices.size and (indices.min() < 0 or indices.max() >= k):
    raise ValueError(f"indices must lie in [0, {k}), got range [{indices.min()}, {indices.max()}]")
  if dtype is not None:
    try:
      resolved = jnp.dtype(dtype)
    except (TypeError, ValueError):
      resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
      raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    dtype = None if resolved == codebook.dtype else resolved.name
  return CodebookArray(codebook=codebook, indices=store_codes(indices, bits, signed=False), axis=axis, dtype=dtype)
