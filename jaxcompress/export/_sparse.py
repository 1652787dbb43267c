"""``SparseArray``: the entries of an array at the positions a mask keeps, in the smaller
of two position formats.

- ``'bitmask'``: one bit per element (``size / 8`` bytes), good above ~1/16 density.
- ``'relative'``: each stored entry keeps the gap to the previous one in ``index_bits``
  bits, as in the relative-index CSR of Deep Compression (Han, Mao & Dally 2016,
  https://arxiv.org/abs/1510.00149, §2), over the row-major flattened array. A gap too
  long for ``index_bits`` is bridged by *skip codes*: the largest code ``2^b - 1`` means
  "advance ``2^b - 1`` positions, no entry here". Deep Compression bridges with a filler
  zero entry instead; a skip code stores no value, so it is never larger, and it keeps
  "which positions are stored" exact even when a stored value is 0 (the index of a
  codebook's first entry, an affine code), which a filler cannot. Trailing skip codes
  carry the stream to within ``2^b - 1`` positions of the end, so the positions account
  for ``dense_shape`` (a file cannot claim a larger dense array than its stream covers).
  ``index_bits`` is chosen per array to minimize the total bytes.

Which positions are stored is a *mask*, not "the nonzeros": a pruned weight is absent
(it reads as 0), a kept weight is stored even when its value is 0. :meth:`SparseArray.present`
gives the mask back, so a leaf whose codes map 0 to something other than 0.0 (affine
codes, codebook indices) can hold its codes in a ``SparseArray`` and still read pruned
positions as exactly 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._bitpack import pack_bits
from jaxcompress.export._qarray import store_codes


@dataclasses.dataclass(frozen=True)
class SparseArray(CompressedLeaf):
  """Stored entries and their positions in a dense array of ``dense_shape``.

  Attributes:
    values: the stored entries in row-major order, 1-D: a float array, or integer codes
      (a native array or :class:`~jaxcompress.export.BitPacked`) when this array
      holds the codes of a :class:`~jaxcompress.export.QArray` or the indices of a
      :class:`~jaxcompress.export.CodebookArray`.
    positions: :class:`~jaxcompress.export.BitPacked`: the 1-bit mask
      (``'bitmask'``) or the gap and skip codes at ``index_bits`` bits (``'relative'``).
    dense_shape: the shape of the dense array.
    format: ``'bitmask'`` or ``'relative'``.
  """

  values: Any
  positions: Any
  dense_shape: tuple[int, ...]
  format: str

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  @property
  def num_stored(self) -> int:
    """Stored entries: the kept positions."""
    return int(self.values.shape[0])

  def _index(self) -> jax.Array:
    """Flat positions of the stored entries, ``int32[num_stored]`` (jit-safe)."""
    m = self.num_stored
    if self.format == "bitmask":
      return jnp.nonzero(self.positions.materialize(), size=m)[0]
    codes = self.positions.materialize()
    skip = (1 << self.positions.bits) - 1
    pos = jnp.cumsum(jnp.where(codes == skip, skip, codes + 1)) - 1
    return pos[jnp.nonzero(codes != skip, size=m)[0]]

  def present(self) -> jax.Array:
    """The mask of stored positions, ``bool[dense_shape]``."""
    keep = jnp.zeros((self.size,), bool).at[self._index()].set(True, unique_indices=True)
    return keep.reshape(self.dense_shape)

  def materialize(self) -> jax.Array:
    values = jnp.asarray(materialize(self.values))
    dense = jnp.zeros((self.size,), values.dtype).at[self._index()].set(values, unique_indices=True)
    return dense.reshape(self.dense_shape)

  def prune(self, mask: Any) -> CompressedLeaf:
    dense = np.asarray(self.materialize())
    keep = np.asarray(self.present()) & np.asarray(mask, bool)
    bits = getattr(self.values, "bits", None)  # codes keep their bit-width
    signed = bool(getattr(self.values, "signed", True))
    return from_mask(dense, keep, value_bits=bits, signed=signed)


jax.tree_util.register_dataclass(
  SparseArray, data_fields=["values", "positions"], meta_fields=["dense_shape", "format"]
)


def _trailing_skips(index: np.ndarray, index_bits: int, size: int | None) -> int:
  """Skip codes after the last entry, so the stream reaches within ``2^b - 1`` of the end."""
  if size is None:
    return 0
  last = int(index[-1]) if index.size else -1
  return (size - 1 - last) // ((1 << index_bits) - 1)


def _relative_codes(index: np.ndarray, index_bits: int, size: int | None = None) -> np.ndarray:
  """Gap codes for stored flat positions ``index`` (ascending), with skip codes; with the
  dense ``size``, trailing skip codes up to within ``2^b - 1`` positions of the end."""
  skip = (1 << index_bits) - 1
  gaps = np.diff(index, prepend=-1) - 1
  skips = gaps // skip
  codes = np.full(int(index.size + skips.sum()) + _trailing_skips(index, index_bits, size), skip, np.int64)
  slot = np.cumsum(skips + 1) - 1  # where each real entry's code lands
  codes[slot] = gaps - skips * skip
  return codes


def _relative_bytes(index: np.ndarray, index_bits: int, value_bits: float, size: int | None = None) -> int:
  gaps = np.diff(index, prepend=-1) - 1
  codes = int(index.size + (gaps // ((1 << index_bits) - 1)).sum()) + _trailing_skips(index, index_bits, size)
  return int(np.ceil(index.size * value_bits / 8)) + int(np.ceil(codes * index_bits / 8))


def layout_bytes(index: np.ndarray, size: int, value_bits: float) -> dict[str, tuple[int, int]]:
  """Bytes of each candidate layout: ``{'bitmask': (bytes, 0), 'relative<b>': (bytes, b)}``."""
  values = int(np.ceil(index.size * value_bits / 8))
  out = {"bitmask": (values + int(np.ceil(size / 8)), 0)}
  for b in range(1, 17):
    out[f"relative{b}"] = (_relative_bytes(index, b, value_bits, size), b)
  return out


def from_mask(
  x: Any, mask: Any, *, value_bits: int | None = None, signed: bool = True, format: str | None = None
) -> SparseArray:
  """Stores the entries of ``x`` where ``mask`` is True, choosing the smaller layout.

  Args:
    x: a dense array of any shape (host or device).
    mask: ``bool`` array of ``x``'s shape: True = stored (kept), False = absent (reads 0).
    value_bits: ``None`` to store values in ``x``'s dtype; otherwise ``x`` holds integer
      codes stored at this bit-width.
    signed: whether integer codes are signed.
    format: force ``'bitmask'`` or ``'relative'``; ``None`` picks the smaller.

  Returns:
    A :class:`SparseArray`; its ``materialize()`` is ``where(mask, x, 0)`` exactly and its
    ``present()`` is ``mask``.

  Raises:
    ValueError: if ``format`` is unknown, the shapes differ, or a code does not fit
      ``value_bits``.
  """
  if format not in (None, "bitmask", "relative"):
    raise ValueError(f"format must be None, 'bitmask' or 'relative', got {format!r}")
  x, mask = np.asarray(x), np.asarray(mask, bool)
  if mask.shape != x.shape:
    raise ValueError(f"mask of shape {mask.shape} does not match the array's shape {x.shape}")
  flat = x.reshape(-1)
  index = np.flatnonzero(mask.reshape(-1))
  value_size = 8 * flat.dtype.itemsize if value_bits is None else value_bits
  candidates = layout_bytes(index, flat.size, value_size)
  pool = {k: v for k, v in candidates.items() if format is None or k.startswith(format)}
  choice = min(pool, key=lambda k: pool[k][0])
  values = flat[index]
  if choice == "bitmask":
    positions = pack_bits(mask.reshape(-1).astype(np.uint8), 1, signed=False)
    fmt = "bitmask"
  else:
    bits = candidates[choice][1]
    positions = pack_bits(_relative_codes(index, bits, flat.size), bits, signed=False)
    fmt = "relative"
  if value_bits is not None:
    values = store_codes(values, value_bits, signed=signed)
  return SparseArray(values=values, positions=positions, dense_shape=tuple(x.shape), format=fmt)


def from_dense(x: Any, *, value_bits: int | None = None, signed: bool = True, format: str | None = None) -> SparseArray:
  """Stores the nonzeros of ``x``: :func:`from_mask` with ``mask = x != 0``.

  Args:
    x: a dense array of any shape (host or device).
    value_bits: ``None`` to store values in ``x``'s dtype; otherwise ``x`` holds
      integer codes stored at this bit-width (for quantized weights).
    signed: whether integer codes are signed.
    format: force ``'bitmask'`` or ``'relative'``; ``None`` picks the smaller.

  Returns:
    A :class:`SparseArray` whose ``materialize()`` equals ``x`` exactly.

  Raises:
    ValueError: if ``format`` is unknown or a code does not fit ``value_bits``.
  """
  x = np.asarray(x)
  return from_mask(x, x != 0, value_bits=value_bits, signed=signed, format=format)
