"""What every compressed leaf shares: ``materialize()`` and true ``nbytes``."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

StoredArray = jax.Array | np.ndarray
"""An array held by a compressed leaf: on the host after ``pack``, on device after ``jit``."""


class CompressedLeaf:
  """Base of the packed leaf types.

  Subclasses are frozen dataclasses registered as pytree nodes: their arrays are
  children, their metadata (bits, shapes, formats) static. ``nbytes`` sums the bytes
  of every array they hold, nested compressed leaves included, so it is the storage
  actually written by :func:`jaxcompress.export.save` (less the small JSON header).
  """

  def materialize(self) -> jax.Array:
    """Returns the dense array this leaf stands for."""
    raise NotImplementedError

  @property
  def nbytes(self) -> int:
    """Bytes as stored: the sum over every array this leaf holds."""
    return sum(int(x.nbytes) for x in jax.tree.leaves(self))

  @property
  def shape(self) -> tuple[int, ...]:
    """The dense shape."""
    raise NotImplementedError

  def take(self, kept: Any) -> CompressedLeaf | None:
    """The sub-array at the kept positions of each axis, in this leaf's representation.

    Args:
      kept: one ``bool`` vector per axis (True = kept), on the host.

    Returns:
      A compressed leaf of the smaller shape, or ``None`` when this representation cannot
      be cut (the default; a caller then keeps the whole leaf).
    """
    del kept
    return None

  def recompose(self, leaf: Any) -> Any:
    """``leaf`` (of this leaf's dense shape, made by a later stage from this leaf's
    view) re-expressed in this leaf's structure, or ``leaf`` itself when there is none to
    keep (the default). A channel-pruned ``SlicedArray`` keeps its smaller shape: a later
    quantizer's ``QArray`` of the full view becomes the ``QArray`` of the kept block."""
    return leaf

  def prune(self, mask: Any) -> CompressedLeaf:
    """This leaf with the positions where ``mask`` is False set to exactly 0.

    The seam by which compressed leaves compose with pruning: each leaf type keeps its own
    representation (codes and scales, codebook, factors) and stores only what the mask
    keeps, or the cheaper of that and its dense form. This default wraps the leaf in a
    :class:`~jaxcompress.export.MaskedArray` (the leaf plus a 1-bit mask), for leaf
    types whose representation cannot drop entries (low-rank factors).

    Args:
      mask: ``bool`` array of the leaf's shape (True = keep), on the host.

    Returns:
      A compressed leaf whose ``materialize()`` is ``where(mask, self.materialize(), 0)``.
    """
    from jaxcompress.export._masked import MaskedArray

    return MaskedArray.wrap(self, mask)

  @property
  def size(self) -> int:
    """Number of elements of the dense array."""
    n = 1
    for d in self.shape:
      n *= d
    return n


def materialize(x: Any) -> jax.Array:
  """Dense view of a leaf: ``x.materialize()`` for compressed leaves, ``x`` otherwise."""
  return x.materialize() if isinstance(x, CompressedLeaf) else x


def is_compressed(x: Any) -> bool:
  """Whether ``x`` is a packed leaf, for ``is_leaf=`` in tree maps."""
  return isinstance(x, CompressedLeaf)


def materialize_tree(tree: Any) -> Any:
  """Replaces every compressed leaf of ``tree`` by its dense array."""
  return jax.tree.map(materialize, tree, is_leaf=is_compressed)


def _on_device(x: Any) -> Any:
  if not isinstance(x, np.ndarray | np.generic):
    return x
  if jax.dtypes.canonicalize_dtype(x.dtype) != x.dtype:  # int64 without x64: a copy would change the bytes
    return x
  return jax.device_put(x)


def on_device(tree: Any) -> Any:
  """``tree`` with every host (NumPy) array, inside compressed leaves too, put on the default device.

  ``pack`` leaves its arrays on the host (they are written to files and sized there); a
  result meant to be computed with, such as ``ptq``'s packed params, is moved once with
  this, so a jitted function that takes it as an argument does not copy it host-to-device
  on every call. Arrays whose dtype JAX would change (int64 without ``jax_enable_x64``)
  stay on the host, so ``nbytes`` is unchanged. Structure and static metadata are kept.
  """
  return jax.tree.map(_on_device, tree)
