"""``QArray``: integer codes with a scale and an optional zero point."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._bitpack import code_range, pack_bits


@dataclasses.dataclass(frozen=True)
class QArray(CompressedLeaf):
  """A uniformly quantized array: ``x = (codes - zero_point) * scale``.

  Attributes:
    codes: the integer codes, shape ``shape``: an ``int8``/``int16`` array when ``bits``
      is 8 or 16, a :class:`~jaxcompress.export.BitPacked` stream otherwise, or a
      :class:`~jaxcompress.export.SparseArray` of codes for pruned-and-quantized
      weights.
    scale: float array broadcastable to ``shape`` (per-tensor: shape ``()``; per-channel:
      size 1 on every axis but the channel axes).
    zero_point: integer array shaped like ``scale``, or ``None`` (symmetric).
    bits: bits per code, 1..16.
    dtype: the dtype ``materialize`` returns, as a string (``'float32'``).
    group_axis: with per-group scales, the axis cut into groups (``scale`` is shaped for
      the view where that axis is split into ``(n_groups, group_size)``); else ``None``.
    group_size: elements per group along ``group_axis``.

  ``nbytes`` counts the codes, scale and zero point as stored.
  """

  codes: Any
  scale: Any
  zero_point: Any
  bits: int
  dtype: str
  group_axis: int | None = None
  group_size: int | None = None

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  def _blocked(self, x: Any) -> Any:
    """``x`` (of ``shape``) viewed with the group axis split, as ``scale`` is laid out."""
    if self.group_axis is None or self.group_size is None:
      return x
    shape = tuple(x.shape)
    a = self.group_axis % len(shape)
    return x.reshape((*shape[:a], shape[a] // self.group_size, self.group_size, *shape[a + 1 :]))

  def zero_code(self) -> np.ndarray:
    """The code that stands for 0.0 at every position (the zero point, or 0), ``int32[shape]``."""
    zeros = np.zeros(self.shape, np.int32)
    if self.zero_point is None:
      return zeros
    return (self._blocked(zeros) + np.asarray(self.zero_point, np.int32)).reshape(self.shape)

  def materialize(self) -> jax.Array:
    codes = self._blocked(jnp.asarray(materialize(self.codes), jnp.int32))
    if self.zero_point is not None:
      codes = codes - jnp.asarray(self.zero_point, jnp.int32)
    dense = (codes.astype(jnp.float32) * jnp.asarray(self.scale, jnp.float32)).reshape(self.shape)
    if _is_sparse(self.codes):  # pruned positions read 0.0 whatever their code means
      dense = jnp.where(self.codes.present(), dense, jnp.zeros_like(dense))
    limit = float(jnp.finfo(self.dtype).max)  # code * scale can round past it at the dtype's extremes
    return jnp.clip(dense, -limit, limit).astype(self.dtype)

  @property
  def signed(self) -> bool:
    """Whether the codes are signed (symmetric grids) or unsigned (affine)."""
    return _codes_signed(self.codes)

  def take(self, kept: Any) -> CompressedLeaf | None:
    """The kept block: its codes, with per-channel scales and zero points cut along the
    same axes. ``None`` for per-group scales (a cut can split a group)."""
    if self.group_axis is not None:
      return None
    index = np.ix_(*[np.asarray(k, bool) for k in kept])
    codes = np.asarray(materialize(self.codes), np.int32)
    if _is_sparse(self.codes):
      codes = np.where(np.asarray(self.codes.present()), codes, self.zero_code())
    cut = lambda a: None if a is None else _cut(np.asarray(a), kept)
    block = dataclasses.replace(
      self,
      codes=store_codes(codes[index], self.bits, signed=self.signed),
      scale=cut(self.scale),
      zero_point=cut(self.zero_point),
    )
    return block.prune(np.asarray(self.codes.present())[index]) if _is_sparse(self.codes) else block

  def prune(self, mask: Any) -> CompressedLeaf:
    """Keeps the scales and zero point; stores the surviving codes sparse, or all codes
    dense with the zero code at pruned positions, whichever is smaller."""
    from jaxcompress.export._sparse import from_mask

    keep = np.asarray(mask, bool)
    codes = np.asarray(materialize(self.codes), np.int32)
    if _is_sparse(self.codes):
      keep = keep & np.asarray(self.codes.present())
    signed = self.signed
    dense = store_codes(np.where(keep, codes, self.zero_code()), self.bits, signed=signed)
    sparse = from_mask(codes, keep, value_bits=self.bits, signed=signed)
    return dataclasses.replace(self, codes=sparse if sparse.nbytes < dense.nbytes else dense)


def _cut(a: np.ndarray, kept: Any) -> np.ndarray:
  """``a`` (broadcastable to the leaf) cut along the axes where it varies."""
  for axis, k in enumerate(kept):
    if axis < a.ndim and a.shape[axis] > 1:
      a = np.compress(np.asarray(k, bool), a, axis=axis)
  return a


def _is_sparse(codes: Any) -> bool:
  from jaxcompress.export._sparse import SparseArray  # sparse.py imports this module

  return isinstance(codes, SparseArray)


def _codes_signed(codes: Any) -> bool:
  """Signedness of stored codes: a bit-packed stream's flag, or a native array's dtype."""
  if _is_sparse(codes):
    return _codes_signed(codes.values)
  if hasattr(codes, "signed"):
    return bool(codes.signed)
  return bool(np.issubdtype(np.asarray(codes).dtype, np.signedinteger))


jax.tree_util.register_dataclass(
  QArray, data_fields=["codes", "scale", "zero_point"], meta_fields=["bits", "dtype", "group_axis", "group_size"]
)


def store_codes(codes: np.ndarray, bits: int, *, signed: bool) -> Any:
  """Stores integer codes as compactly as their bit-width allows.

  8- and 16-bit codes keep a native integer array (usable directly by integer kernels);
  other widths are bit-packed.

  Raises:
    ValueError: if a code does not fit ``bits`` bits.
  """
  codes = np.asarray(codes)
  if bits in (8, 16):
    lo, hi = code_range(bits, signed)
    if codes.size and (codes.min() < lo or codes.max() > hi):
      raise ValueError(f"codes in [{codes.min()}, {codes.max()}] do not fit {bits} bits [{lo}, {hi}]")
    dtype = {(8, True): np.int8, (8, False): np.uint8, (16, True): np.int16, (16, False): np.uint16}
    return codes.astype(dtype[(bits, signed)])
  return pack_bits(codes, bits, signed=signed)
