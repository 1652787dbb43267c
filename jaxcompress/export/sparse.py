"""``SparseArray``: the nonzeros of an array plus their positions, in the smaller of two
position formats.

- ``'bitmask'``: one bit per element (``size / 8`` bytes), good above ~1/16 density.
- ``'relative'``: each stored entry keeps the gap to the previous one in ``index_bits``
  bits; a gap too long for ``index_bits`` is bridged by filler zeros. This is the
  relative-index CSR of Deep Compression (Han, Mao & Dally 2016,
  https://arxiv.org/abs/1510.00149, §2), over the row-major flattened array.
  ``index_bits`` is chosen per array to minimize the total bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export.base import CompressedLeaf, materialize
from jaxcompress.export.bitpack import pack_bits
from jaxcompress.export.qarray import store_codes


@dataclasses.dataclass(frozen=True)
class SparseArray(CompressedLeaf):
  """Stored entries and their positions in a dense array of ``dense_shape``.

  Attributes:
    values: the stored entries, 1-D: a float array, or integer codes (a native array
      or :class:`~jaxcompress.export.bitpack.BitPacked`) when this array holds the codes
      of a :class:`~jaxcompress.export.qarray.QArray`.
    positions: :class:`~jaxcompress.export.bitpack.BitPacked`: the 1-bit mask
      (``'bitmask'``) or the gaps at ``index_bits`` bits (``'relative'``).
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
    """Stored entries (nonzeros, plus filler zeros in the relative format)."""
    return int(self.values.shape[0])

  def materialize(self) -> jax.Array:
    values = jnp.asarray(materialize(self.values))
    n, m = self.size, self.num_stored
    if self.format == "bitmask":
      index = jnp.nonzero(self.positions.materialize(), size=m)[0]
    else:
      index = jnp.cumsum(self.positions.materialize() + 1) - 1
    dense = jnp.zeros((n,), values.dtype).at[index].set(values, unique_indices=True)
    return dense.reshape(self.dense_shape)


jax.tree_util.register_dataclass(
  SparseArray, data_fields=["values", "positions"], meta_fields=["dense_shape", "format"]
)


def _relative_layout(index: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """Gaps for each stored entry and where the real entries sit among them."""
  step = 1 << index_bits  # a gap d encodes position = previous + d + 1, d < step
  gaps = np.diff(index, prepend=-1) - 1
  fillers = gaps >> index_bits
  slot = np.cumsum(fillers + 1) - 1  # where each real entry lands
  stored = int(slot[-1]) + 1 if index.size else 0
  d = np.full(stored, step - 1, np.int64)
  d[slot] = gaps - fillers * step
  return d, slot


def _relative_bytes(index: np.ndarray, index_bits: int, value_bits: float) -> int:
  gaps = np.diff(index, prepend=-1) - 1
  stored = int(index.size + (gaps >> index_bits).sum())
  return int(np.ceil(stored * value_bits / 8)) + int(np.ceil(stored * index_bits / 8))


def from_dense(x: Any, *, value_bits: int | None = None, signed: bool = True, format: str | None = None) -> SparseArray:
  """Packs the nonzeros of ``x``, choosing the smaller position format.

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
  if format not in (None, "bitmask", "relative"):
    raise ValueError(f"format must be None, 'bitmask' or 'relative', got {format!r}")
  x = np.asarray(x)
  flat = x.reshape(-1)
  index = np.flatnonzero(flat)
  value_size = 8 * flat.dtype.itemsize if value_bits is None else value_bits
  candidates = {"bitmask": (int(np.ceil(index.size * value_size / 8)) + int(np.ceil(flat.size / 8)), 0)}
  for b in range(1, 17):
    candidates[f"relative{b}"] = (_relative_bytes(index, b, value_size), b)
  if format == "bitmask":
    choice = "bitmask"
  else:
    pool = {k: v for k, v in candidates.items() if format is None or k.startswith("relative")}
    choice = min(pool, key=lambda k: pool[k][0])

  if choice == "bitmask":
    values = flat[index]
    positions = pack_bits((flat != 0).astype(np.uint8), 1, signed=False)
    fmt = "bitmask"
  else:
    index_bits = candidates[choice][1]
    d, slot = _relative_layout(index, index_bits)
    values = np.zeros(d.size, flat.dtype)
    values[slot] = flat[index]
    positions = pack_bits(d, index_bits, signed=False)
    fmt = "relative"
  if value_bits is not None:
    values = store_codes(values, value_bits, signed=signed)
  return SparseArray(values=values, positions=positions, dense_shape=tuple(x.shape), format=fmt)
