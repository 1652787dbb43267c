"""Pruning a packed leaf: ``prune(x, mask)`` and ``MaskedArray``, the fallback leaf.

:func:`prune` is the one seam by which pruning composes with every other compressed
representation: a plain array becomes a :class:`~jaxcompress.export.SparseArray`
(or stays dense with zeros, when that is smaller), a compressed leaf prunes itself with
its :meth:`~jaxcompress.export.CompressedLeaf.prune` method (a ``QArray`` keeps its
scales and stores the surviving codes, a ``CodebookArray`` keeps its codebook and stores
the surviving indices), and a leaf that cannot drop entries is wrapped with a 1-bit mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._bitpack import pack_bits


@dataclasses.dataclass(frozen=True)
class MaskedArray(CompressedLeaf):
  """``where(keep, inner, 0)``: a compressed leaf with pruned positions.

  Attributes:
    inner: the compressed leaf (for example a low-rank ``Factorized`` kernel).
    keep: :class:`~jaxcompress.export.BitPacked` 1-bit mask of the inner
      leaf's shape, row-major (True = kept).
  """

  inner: Any
  keep: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.inner.shape)

  def materialize(self) -> jax.Array:
    dense = jnp.asarray(materialize(self.inner))
    keep = self.keep.materialize().astype(bool).reshape(dense.shape)
    return jnp.where(keep, dense, jnp.zeros_like(dense))

  def prune(self, mask: Any) -> CompressedLeaf:
    keep = np.asarray(self.keep.materialize(), bool).reshape(self.shape) & np.asarray(mask, bool)
    return MaskedArray.wrap(self.inner, keep)

  @classmethod
  def wrap(cls, inner: Any, mask: Any) -> MaskedArray:
    """``inner`` with a 1-bit ``mask`` (True = keep) of its shape."""
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(inner.shape):
      raise ValueError(f"mask of shape {mask.shape} does not match the leaf's shape {tuple(inner.shape)}")
    return cls(inner=inner, keep=pack_bits(mask.astype(np.uint8), 1, signed=False))


jax.tree_util.register_dataclass(MaskedArray, data_fields=["inner", "keep"], meta_fields=[])


def prune(x: Any, mask: Any) -> Any:
  """``x`` with the positions where ``mask`` is False set to exactly 0, stored compactly.

  Args:
    x: a dense array or a :class:`~jaxcompress.export.CompressedLeaf`.
    mask: ``bool`` array of ``x``'s shape (True = keep), or ``None`` (nothing pruned).

  Returns:
    For a dense array, the smaller of a :class:`~jaxcompress.export.SparseArray`
    of the kept entries and the dense array with zeros; for a compressed leaf,
    ``x.prune(mask)``; ``x`` itself when the mask keeps everything. When ``x`` holds
    Huffman-coded streams, the prune is coded again as they were
    (``_huffman._recode_pruned``: the paper's one-symbol code stays one, an
    extended or pair code is re-chosen with ``block='auto'``), and ``x`` itself is kept when the
    mask removes nothing it holds (every pruned position already reads +0.0) and the re-coded
    prune would not be smaller. In every case ``materialize(result) == where(mask, materialize(x), 0)``
    exactly.

  Raises:
    ValueError: if the mask's shape differs from ``x``'s.
  """
  if mask is None:
    return x
  mask = np.asarray(mask, bool)
  if mask.shape != tuple(np.shape(x)):
    raise ValueError(f"mask of shape {mask.shape} does not match the leaf's shape {tuple(np.shape(x))}")
  if isinstance(x, CompressedLeaf):
    if mask.all():
      return x
    from jaxcompress.export._huffman import HuffmanArray, _recode_pruned, holds_huffman

    if not holds_huffman(x):
      return x.prune(mask)
    # a leaf's prune decodes its Huffman-coded streams (a HuffmanArray's codes its result itself)
    out = x.prune(mask) if isinstance(x, HuffmanArray) else _recode_pruned(x, x.prune(mask))
    return x if _removes_nothing(x, mask) and x.nbytes <= out.nbytes else out
  from jaxcompress.export._sparse import from_mask

  dense = np.asarray(x)
  kept = np.where(mask, dense, np.zeros_like(dense))
  sparse = from_mask(kept, mask)
  return sparse if sparse.nbytes < kept.nbytes else kept


def _removes_nothing(x: CompressedLeaf, mask: np.ndarray) -> bool:
  """Whether every position ``mask`` prunes already reads exactly +0.0 (or integer 0) in ``x``."""
  dropped = np.ascontiguousarray(np.asarray(materialize(x))[~mask])
  return not dropped.view(np.uint8).any()


def take(x: Any, kept: Any) -> Any:
  """The sub-array of ``x`` at the kept positions of each axis.

  Args:
    x: a dense array or a compressed leaf.
    kept: one ``bool`` vector per axis of ``x`` (True = kept).

  Returns:
    The smaller dense array, or the leaf's :meth:`~jaxcompress.export.CompressedLeaf.take`
    (``None`` when its representation cannot be cut).
  """
  if isinstance(x, CompressedLeaf):
    return x.take(kept)
  return np.asarray(x)[np.ix_(*[np.asarray(k, bool) for k in kept])]
