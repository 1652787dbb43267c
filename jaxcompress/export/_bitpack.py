"""Integer codes stored at an arbitrary bit-width (1..16), packed into a byte stream.

Layout: codes are laid end to end, each ``bits`` wide, least significant bit first, in
row-major order; the last byte is zero-padded. Signed codes are stored with an offset of
``2**(bits-1)``. Packing runs on the host (NumPy); unpacking is pure ``jax.numpy`` so a
packed tree can be materialized on any device and under ``jit``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, StoredArray


def code_range(bits: int, signed: bool) -> tuple[int, int]:
  """The inclusive range of ``bits``-bit integer codes."""
  if signed:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
  return 0, (1 << bits) - 1


@dataclasses.dataclass(frozen=True)
class BitPacked(CompressedLeaf):
  """Integer codes packed at ``bits`` bits each.

  Attributes:
    data: ``uint8[ceil(size * bits / 8)]``, the packed stream.
    bits: bits per code, 1..16.
    code_shape: the shape of the code tensor.
    signed: whether the codes are signed (stored with an offset).
  """

  data: StoredArray
  bits: int
  code_shape: tuple[int, ...]
  signed: bool

  @property
  def shape(self) -> tuple[int, ...]:
    return self.code_shape

  @property
  def nbytes(self) -> int:
    """Bytes as stored."""
    return int(self.data.nbytes)

  def materialize(self) -> jax.Array:
    """Unpacks to an ``int32`` array of ``shape``."""
    n, bits = self.size, self.bits
    data = jnp.asarray(self.data, jnp.uint8)
    if bits == 8:  # byte-aligned: no bit shuffling
      codes = data[:n].astype(jnp.int32)
    elif bits == 16:
      pairs = data[: 2 * n].reshape(n, 2).astype(jnp.int32)
      codes = pairs[:, 0] | (pairs[:, 1] << 8)
    else:
      stream = jnp.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits)
      codes = jnp.zeros((n,), jnp.int32)
      for j in range(bits):
        codes = codes | (stream[:, j].astype(jnp.int32) << j)
    if self.signed:
      codes = codes - (1 << (self.bits - 1))
    return codes.reshape(self.shape)


jax.tree_util.register_dataclass(BitPacked, data_fields=["data"], meta_fields=["bits", "code_shape", "signed"])


def pack_bits(codes: np.ndarray | jax.Array, bits: int, *, signed: bool) -> BitPacked:
  """Packs integer codes at ``bits`` bits each.

  Args:
    codes: an integer array of any shape whose values fit ``bits`` bits.
    bits: 1..16.
    signed: whether ``codes`` are signed.

  Returns:
    A :class:`BitPacked` holding ``ceil(codes.size * bits / 8)`` bytes.

  Raises:
    ValueError: if ``bits`` is outside 1..16, ``codes`` is not integer, or a code does
      not fit (the message gives the offending value and the range).
  """
  if not 1 <= int(bits) <= 16:
    raise ValueError(f"bits must be in [1, 16], got {bits}")
  codes = np.asarray(codes)
  if codes.size and not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
  lo, hi = code_range(bits, signed)
  flat = codes.reshape(-1)
  if flat.size and (flat.min() < lo or flat.max() > hi):
    bad = flat[(flat < lo) | (flat > hi)][0]
    kind = "signed" if signed else "unsigned"
    raise ValueError(f"code {bad} does not fit {bits} {kind} bits [{lo}, {hi}]")
  offset = (flat.astype(np.int64) - lo if signed else flat).astype(np.uint32)
  if bits == 8:
    data = offset.astype(np.uint8)
  elif bits == 16:
    data = offset.astype("<u2").view(np.uint8)
  else:
    planes = np.empty((flat.size, bits), np.uint8)
    for j in range(bits):
      planes[:, j] = (offset >> j) & 1
    data = np.packbits(planes.reshape(-1), bitorder="little")
  return BitPacked(data=data, bits=int(bits), code_shape=tuple(codes.shape), signed=bool(signed))


def unpack_codes(stream: BitPacked) -> np.ndarray:
  """The codes of a ``BitPacked`` on the host, ``int32[size]`` (flat), as ``materialize`` reads them.

  NumPy throughout: no device work, no compilation, for host-side tools (checks, recoding).
  """
  n, bits = stream.size, stream.bits
  data = np.asarray(stream.data, np.uint8)
  if bits == 8:
    codes = data[:n].astype(np.int32)
  elif bits == 16:
    codes = data[: 2 * n].view("<u2").astype(np.int32)
  else:
    planes = np.unpackbits(data, bitorder="little", count=n * bits).reshape(n, bits)
    codes = np.zeros(n, np.int32)
    for j in range(bits):
      codes |= planes[:, j].astype(np.int32) << j
  return codes - (1 << (bits - 1)) if stream.signed else codes
