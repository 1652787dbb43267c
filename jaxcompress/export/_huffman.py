"""Huffman coding of packed integer streams (Deep Compression's third stage).

Deep Compression (Han, Mao & Dally 2016, https://arxiv.org/abs/1510.00149, §4) Huffman-codes
the quantized weights' indices and the sparse index gaps: their distributions are skewed, so a
variable-length prefix code stores them in fewer bits than a fixed width.

The codec (:func:`huffman_encode` / :func:`huffman_decode`) works on any stream of
non-negative integers, with NumPy, deterministically:

- *Canonical* codes: only the code length of each symbol is stored; the codes follow (symbols
  sorted by length then value get consecutive codes, MSB first), so equal inputs give equal
  bytes. Lengths are limited to :data:`MAX_CODE_BITS` (24): when a Huffman code would be longer,
  the counts are halved (rounding up, so no symbol vanishes) and the code rebuilt, which is
  safe, deterministic, and costs nothing on realistic streams (it never triggers below about
  ``1.4 * 24`` bits of skew, ~100k symbols in a Fibonacci-shaped worst case).
- The *table* is a small byte string: LEB128 varints ``count``, ``first`` (the smallest
  symbol), ``span`` (table entries), the CRC-32 of the symbols (4 bytes), then the code length
  of each symbol ``first .. first + span - 1`` at 5 bits, bit-packed (0 = absent). A stream of
  one distinct symbol has zero-length codes: its table stores the count and the symbol
  (``span = 0``) and its payload is empty.
- The *payload* is the codes end to end, MSB first, zero-padded to a byte.

Decoding is vectorized: every bit offset of the payload is decoded at once (a
``searchsorted`` of its next 24 bits over the canonical codes' left-justified starts), and
the chain of offsets actually visited from 0 is found by pointer doubling, in chunks so the
memory stays bounded. A payload that ends early, has extra bytes or non-zero padding, a table
that is not a complete prefix code or does not match the payload, and a CRC mismatch each
raise a :class:`ValueError` naming what is wrong.

:class:`HuffmanArray` is the compressed leaf: a Huffman-coded stream of integer codes that
stands wherever a leaf holds a :class:`~jaxcompress.export.BitPacked` stream or a native
integer code array (a ``QArray``'s codes, a ``CodebookArray``'s indices, a ``SparseArray``'s
values and gap codes). :func:`huffman` replaces each such stream of a tree by its Huffman
coding where that is smaller, and :func:`unhuffman` restores the original streams exactly.

*Blocks* (a named option, ``block=2``; the paper codes one symbol at a time): Huffman's whole-bit
code lengths cost up to ``p_max + 0.086`` bits per symbol over the entropy (Gallager 1978), which
on skewed 4-symbol and 16-symbol index alphabets is 1-3% (and more) of the stream. Coding pairs of
symbols (the extended alphabet ``a * 2^bits + b``, an odd stream's last symbol paired with
itself) halves that per symbol, at the price of a table over up to ``4^bits`` pair symbols:
``huffman(tree, block='auto')`` keeps, per stream, whichever of the two codes is smaller, payload
and table together.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import zlib
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, StoredArray, is_compressed
from jaxcompress.export._bitpack import BitPacked, code_range, pack_bits, unpack_codes

MAX_CODE_BITS = 24
"""The longest code :func:`huffman_encode` emits (decode windows stay within 32 bits)."""
_LENGTH_BITS = 5  # a code length 0..24 in the table
_MAX_SPAN = 1 << 20  # table entries at most (symbols max - min < 2^20)
_MAX_SYMBOL = (1 << 32) - 1
_CHUNK_BITS = 1 << 21  # payload bits decoded per chunk (bounds the decoder's memory)
_NATIVE = ("int8", "uint8", "int16", "uint16")
MAX_CONSTANT_CODES = 1 << 22
"""The longest stream of one distinct symbol a :class:`HuffmanArray` holds. Its codes have zero
length, so its payload is empty and only its table's count says how many there are: a file
could otherwise claim any count. Longer constant streams stay bit-packed (:func:`huffman`), and
the load-time checks refuse them, so such a leaf can make ``load`` use at most ~50 MiB of
transient host memory (int64 symbols and their CRC) that its stored arrays do not account for."""


# --- code lengths -------------------------------------------------------------------------


def _huffman_lengths(counts: np.ndarray) -> np.ndarray:
  """Huffman code lengths for ``counts`` (all > 0, at least 2), deterministic ties."""
  k = counts.size
  heap = [(int(c), i) for i, c in enumerate(counts)]  # ties: lower node id first
  heapq.heapify(heap)
  parent = np.zeros(2 * k - 1, np.int64)
  node = k
  while len(heap) > 1:
    ca, a = heapq.heappop(heap)
    cb, b = heapq.heappop(heap)
    parent[a] = parent[b] = node
    heapq.heappush(heap, (ca + cb, node))
    node += 1
  depth = np.zeros(2 * k - 1, np.int64)
  for i in range(2 * k - 3, -1, -1):  # parents are created after their children
    depth[i] = depth[parent[i]] + 1
  return depth[:k]


def code_lengths(counts: Any, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
  """Length-limited Huffman code lengths for symbol counts.

  Args:
    counts: non-negative integer counts, one per symbol (0 = the symbol is absent).
    max_bits: the longest allowed code, 1..24.

  Returns:
    ``int64`` lengths of ``counts``' shape: 0 for absent symbols; with two or more present
    symbols a complete prefix code (Kraft sum exactly 1) of lengths at most ``max_bits``,
    optimal (a Huffman code) whenever the unlimited Huffman code fits, else Huffman's
    lengths clamped and greedily repaired (near-optimal, not package-merge's optimum); with
    one present symbol, 0 for it too (zero-length codes).

  Raises:
    ValueError: if ``max_bits`` is outside 1..24, a count is negative, or more symbols are
      present than ``max_bits``-bit codes can tell apart.

  Reference:
    Huffman 1952, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 40(9).

  Example:
    >>> from jaxcompress import export
    >>> export.code_lengths([5, 1, 1, 0, 2]).tolist()
    [1, 3, 3, 0, 2]
    >>> export.code_lengths([1, 1, 2, 3, 5, 8], max_bits=3).tolist()
    [3, 3, 3, 3, 2, 2]
  """
  if type(max_bits) is not int or not 1 <= max_bits <= MAX_CODE_BITS:
    raise ValueError(f"max_bits must be an integer in [1, {MAX_CODE_BITS}], got {max_bits!r}")
  counts = np.asarray(counts, np.int64).reshape(-1)
  if counts.size and counts.min() < 0:
    raise ValueError(f"counts must be non-negative, got {counts.min()}")
  lengths = np.zeros(counts.size, np.int64)
  present = np.flatnonzero(counts)
  if present.size < 2:
    return lengths
  if present.size > 1 << max_bits:
    raise ValueError(f"{present.size} symbols cannot be told apart by codes of at most {max_bits} bits")
  c = counts[present]
  got = _huffman_lengths(c)
  if got.max() > max_bits:
    got = _limit(got, c, max_bits)
  lengths[present] = got
  return lengths


def _limit(lengths: np.ndarray, counts: np.ndarray, limit: int) -> np.ndarray:
  """Huffman ``lengths`` cut to ``limit`` bits, then made a complete prefix code again.

  Codes longer than ``limit`` are clamped, which overfills the Kraft sum; while it is
  overfull, the deepest code shorter than ``limit`` (the least used among those) grows by a
  bit; then, while there is room, the most used code whose shortening fits shrinks by a bit
  (the room is a multiple of the deepest code's share, so the sum ends exactly at 1).
  """
  lengths = np.minimum(lengths, limit)
  full = 1 << limit
  share = lambda n: 1 << (limit - n)
  kraft = sum(share(int(n)) for n in lengths)
  while kraft > full:
    grow = np.flatnonzero(lengths < limit)
    deepest = grow[lengths[grow] == lengths[grow].max()]
    i = deepest[np.argmin(counts[deepest])]
    kraft -= share(int(lengths[i])) // 2
    lengths[i] += 1
  while kraft < full:
    room = full - kraft
    shrink = np.flatnonzero((lengths > 1) & (np.left_shift(1, limit - lengths) <= room))  # shrinking adds a share
    i = shrink[np.argmax(counts[shrink])]
    kraft += share(int(lengths[i]))
    lengths[i] -= 1
  return lengths


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Canonical codes of ``lengths``: (order of symbols by (length, symbol), their codes)."""
  present = np.flatnonzero(lengths)
  order = present[np.lexsort((present, lengths[present]))]
  lens = lengths[order]
  codes = np.zeros(order.size, np.int64)
  code = 0
  for i in range(1, order.size):
    code = (code + 1) << int(lens[i] - lens[i - 1])
    codes[i] = code
  return order, codes


# --- the table ----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _read_varint(table: np.ndarray, at: int, what: str) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if at >= table.size:
      raise ValueError(f"Huffman table is truncated: it ends inside its {what}")
    if shift > 63:
      raise ValueError(f"Huffman table is malformed: its {what} is not a valid varint")
    byte = int(table[at])
    value |= (byte & 0x7F) << shift
    shift += 7
    at += 1
    if not byte & 0x80:
      return value, at


def _crc(symbols: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(symbols, "<u4").view(np.uint8).data)


def _write_table(count: int, first: int, lengths: np.ndarray, crc: int) -> np.ndarray:
  head = _varint(count) + _varint(first) + _varint(lengths.size) + crc.to_bytes(4, "little")
  packed = pack_bits(lengths, _LENGTH_BITS, signed=False).data if lengths.size else np.zeros(0, np.uint8)
  return np.concatenate([np.frombuffer(head, np.uint8), np.asarray(packed, np.uint8)])


class _Table(NamedTuple):
  count: int
  first: int
  lengths: np.ndarray  # per symbol first .. first + span - 1
  crc: int


def _read_table(table: Any) -> _Table:
  table = _as_bytes(table, "table")
  count, at = _read_varint(table, 0, "symbol count")
  first, at = _read_varint(table, at, "first symbol")
  span, at = _read_varint(table, at, "table size")
  if first > _MAX_SYMBOL or span > _MAX_SPAN or first + span > _MAX_SYMBOL + 1:
    raise ValueError(f"Huffman table is malformed: symbols {first} .. {first + span - 1} are out of range")
  if at + 4 > table.size:
    raise ValueError("Huffman table is truncated: it ends inside its checksum")
  crc = int.from_bytes(table[at : at + 4].tobytes(), "little")
  at += 4
  need = (span * _LENGTH_BITS + 7) // 8
  if table.size - at != need:
    raise ValueError(f"Huffman table holds {table.size - at} bytes of code lengths, its {span} symbols need {need}")
  bits = np.unpackbits(table[at:], bitorder="little")
  planes = bits[: span * _LENGTH_BITS].reshape(span, _LENGTH_BITS).astype(np.int64)
  lengths = (planes << np.arange(_LENGTH_BITS)).sum(axis=1)
  if bits[span * _LENGTH_BITS :].any():
    raise ValueError("Huffman table is malformed: non-zero padding after its code lengths")
  if span and (lengths.max() > MAX_CODE_BITS or (lengths > 0).sum() < 2):
    raise ValueError(
      f"Huffman table is malformed: lengths up to {lengths.max()} bits for {(lengths > 0).sum()} symbols "
      f"(at most {MAX_CODE_BITS} bits, at least 2 symbols; one symbol has an empty table)"
    )
  if span:
    kraft = sum(int((lengths == n).sum()) << (MAX_CODE_BITS - n) for n in range(1, MAX_CODE_BITS + 1))
    if kraft != 1 << MAX_CODE_BITS:
      raise ValueError(
        f"Huffman table is malformed: its code lengths are not a complete prefix code "
        f"(Kraft sum {kraft / (1 << MAX_CODE_BITS):.6g}, expected 1)"
      )
  if not span and count == 0 and first != 0:
    raise ValueError("Huffman table is malformed: an empty stream with a symbol")
  return _Table(count, first, lengths, crc)


def _as_bytes(x: Any, what: str) -> np.ndarray:
  if isinstance(x, (bytes, bytearray, memoryview)):
    return np.frombuffer(bytes(x), np.uint8)
  a = np.asarray(x)
  if a.dtype != np.uint8 or a.ndim != 1:
    raise ValueError(f"the Huffman {what} must be bytes or a 1-D uint8 array, got {a.dtype}{list(a.shape)}")
  return a


# --- encode / decode ----------------------------------------------------------------------


def _symbols(symbols: Any) -> np.ndarray:
  s = np.asarray(symbols)
  if s.size and not np.issubdtype(s.dtype, np.integer):
    raise ValueError(f"symbols must be integers, got dtype {s.dtype}")
  s = s.reshape(-1).astype(np.int64)
  if s.size and (s.min() < 0 or s.max() > _MAX_SYMBOL):
    raise ValueError(f"symbols must lie in [0, 2^32), got range [{s.min()}, {s.max()}]")
  if s.size and s.max() - s.min() >= _MAX_SPAN:
    raise ValueError(f"symbols span [{s.min()}, {s.max()}], wider than the table's limit of 2^20")
  return s


def _lengths_of(s: np.ndarray) -> tuple[int, np.ndarray]:
  """(first symbol, code length per symbol first .. max) of a checked, non-empty stream."""
  first = int(s.min())
  counts = np.bincount(s - first)
  lengths = code_lengths(counts)
  return first, lengths


def huffman_encode(symbols: Any) -> tuple[np.ndarray, np.ndarray]:
  """Huffman-codes a stream of non-negative integers with a canonical, length-limited code.

  Args:
    symbols: integers in ``[0, 2^32)`` of any shape (flattened row-major) whose largest
      and smallest differ by less than ``2^20``.

  Returns:
    ``(payload, table)``, both ``uint8[...]``: the codes end to end (MSB first, zero-padded
    to a byte) and the table (count, first symbol, span, CRC-32, 5-bit code lengths; see
    the module's docstring). Empty for an empty stream's payload; a stream of one distinct
    symbol has an empty payload and a 10-byte-or-so table.

  Raises:
    ValueError: if the symbols are not integers, negative, too large or span too wide.

  Reference:
    Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149, §4.

  Example:
    >>> import numpy as np
    >>> from jaxcompress import export
    >>> payload, table = export.huffman_encode([0, 0, 0, 1, 0, 2, 0, 0])
    >>> payload.size, export.huffman_decode(payload, table).tolist()
    (2, [0, 0, 0, 1, 0, 2, 0, 0])
  """
  s = _symbols(symbols)
  crc = _crc(s)
  if s.size == 0:
    return np.zeros(0, np.uint8), _write_table(0, 0, np.zeros(0, np.int64), crc)
  first, lengths = _lengths_of(s)
  if not lengths.any():  # one distinct symbol: zero-length codes
    return np.zeros(0, np.uint8), _write_table(s.size, first, np.zeros(0, np.int64), crc)
  order, codes = _canonical(lengths)
  code_of = np.zeros(lengths.size, np.int64)
  code_of[order] = codes
  rel = s - first
  lens, vals = lengths[rel], code_of[rel]
  ends = np.cumsum(lens)
  total = int(ends[-1])
  starts = ends - lens
  bits = np.zeros(total, np.uint8)
  for j in range(int(lens.max())):  # bit j (from the MSB) of every code at least j + 1 long
    live = lens > j
    bits[starts[live] + j] = (vals[live] >> (lens[live] - 1 - j)) & 1
  return np.packbits(bits), _write_table(s.size, first, lengths, crc)


def _decode_payload(payload: np.ndarray, t: _Table) -> np.ndarray:
  """The ``t.count`` symbols of ``payload`` (offsets relative to ``t.first``)."""
  order, codes = _canonical(t.lengths)
  lens = t.lengths[order]
  w = MAX_CODE_BITS
  starts = codes << (w - lens)  # left-justified: increasing, they tile [0, 2^w)
  nbits = payload.size * 8
  if t.count > nbits:  # every code is at least 1 bit long
    raise ValueError(f"Huffman stream is truncated: its {nbits} bits cannot hold {t.count} symbols")
  padded = np.concatenate([payload, np.zeros(4, np.uint8)]).astype(np.uint64)
  out = np.empty(t.count, np.int64)
  done, pos = 0, 0
  while done < t.count:
    if pos >= nbits:
      raise ValueError(f"Huffman stream is truncated: it ends after {done} of {t.count} symbols")
    hi = min(nbits, pos + _CHUNK_BITS)
    p = np.arange(pos, hi, dtype=np.int64)
    byte = p >> 3
    word = (padded[byte] << 24) | (padded[byte + 1] << 16) | (padded[byte + 2] << 8) | padded[byte + 3]
    window = ((word << (p & 7).astype(np.uint64)) >> np.uint64(32 - w)) & np.uint64((1 << w) - 1)
    idx = np.searchsorted(starts, window.astype(np.int64), side="right") - 1
    step = lens[idx]
    sink = hi - pos  # local offset for "left the chunk"
    nxt = np.minimum(np.arange(sink, dtype=np.int64) + step, sink)
    nxt = np.append(nxt, sink)
    visited = np.zeros(1, np.int64)  # local offsets visited, from 0 (pos itself)
    jump = nxt
    need = t.count - done
    while visited[-1] != sink and visited.size < need:
      visited = np.concatenate([visited, jump[visited]])
      jump = jump[jump]
    visited = visited[visited < sink][:need]
    last = int(visited[-1])
    if pos + last + int(step[last]) > nbits:
      visited = visited[:-1]  # its code runs past the end of the payload
      if visited.size < need:
        raise ValueError(f"Huffman stream is truncated: it ends after {done + visited.size} of {t.count} symbols")
    out[done : done + visited.size] = order[idx[visited]]
    done += visited.size
    pos += int(visited[-1]) + int(step[visited[-1]])
  used = pos
  if payload.size != (used + 7) // 8:
    raise ValueError(
      f"Huffman stream has {payload.size} bytes but its {t.count} symbols use {used} bits "
      f"({(used + 7) // 8} bytes): trailing bytes, or a table that does not match the stream"
    )
  if used % 8 and int(payload[-1]) & ((1 << (8 - used % 8)) - 1):
    raise ValueError("Huffman stream has non-zero padding bits after its last code: tampered, or the wrong table")
  return out


def huffman_decode(payload: Any, table: Any) -> np.ndarray:
  """Decodes a stream written by :func:`huffman_encode`, bit-exactly.

  Args:
    payload: the coded bytes (``bytes`` or ``uint8[...]``).
    table: the table returned with them.

  Returns:
    ``int64[count]``: the symbols, in order.

  Raises:
    ValueError: naming what is wrong, if the table is truncated or malformed (not a
      complete prefix code, lengths over 24 bits), the payload ends before ``count``
      symbols, has bytes or non-zero padding bits after the last code, or the decoded
      symbols do not match the table's CRC-32 (a tampered payload, or the wrong table).

  Example:
    >>> from jaxcompress import export
    >>> payload, table = export.huffman_encode([3, 3, 3])
    >>> payload.size, export.huffman_decode(payload, table).tolist()
    (0, [3, 3, 3])
  """
  t = _read_table(table)
  payload = _as_bytes(payload, "payload")
  if not t.lengths.size:
    if payload.size:
      what = "an empty stream" if t.count == 0 else f"{t.count} copies of one symbol"
      raise ValueError(f"Huffman stream has {payload.size} bytes, but its table describes {what} (no bytes)")
    out = np.full(t.count, t.first, np.int64)
  else:
    out = _decode_payload(payload, t) + t.first
  if _crc(out) != t.crc:
    raise ValueError("Huffman stream does not match its table's CRC-32: tampered, or the wrong table")
  return out


def entropy_bits(symbols: Any) -> float:
  """The Shannon bound of a stream: ``n * H`` bits, ``H`` its empirical entropy per symbol.

  No code that stores symbols one by one (Huffman's included, table excluded) is shorter.

  Args:
    symbols: integers of any shape.

  Returns:
    ``-sum_s c_s * log2(c_s / n)`` over the distinct symbols' counts ``c_s``; 0.0 when
    empty or constant.

  Reference:
    Shannon 1948, "A Mathematical Theory of Communication", Bell System Technical Journal 27.

  Example:
    >>> from jaxcompress import export
    >>> export.entropy_bits([0, 1, 0, 1])
    4.0
  """
  s = np.asarray(symbols).reshape(-1)
  if s.size == 0:
    return 0.0
  _, counts = np.unique(s, return_counts=True)
  p = counts / s.size
  return float(-(counts * np.log2(p)).sum())


def coded_bits(symbols: Any) -> int:
  """Payload bits (before padding) of :func:`huffman_encode`'s code of ``symbols``.

  Args:
    symbols: as for :func:`huffman_encode`.

  Returns:
    ``sum_s c_s * len_s``; 0 for an empty or constant stream.

  Raises:
    ValueError: as :func:`huffman_encode`.

  Example:
    >>> from jaxcompress import export
    >>> export.coded_bits([0, 0, 0, 1, 0, 2, 0, 0])
    10
  """
  s = _symbols(symbols)
  if s.size == 0:
    return 0
  first, lengths = _lengths_of(s)
  return int((np.bincount(s - first) * lengths).sum())


# --- the compressed leaf ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HuffmanArray(CompressedLeaf):
  """Integer codes, Huffman-coded: stands in for a :class:`~jaxcompress.export.BitPacked`
  stream or a native integer code array inside a leaf.

  Symbols are the codes as :class:`~jaxcompress.export.BitPacked` stores them (signed
  codes offset by ``2^(bits-1)``). ``materialize()`` decodes on the host with NumPy (under
  ``jit``, through :func:`jax.pure_callback`).

  Attributes:
    data: ``uint8[...]``, the Huffman payload.
    table: ``uint8[...]``, its table (see :func:`huffman_encode`).
    bits: bit-width of the codes (1..16), as the replaced stream had.
    code_shape: the shape of the code tensor.
    signed: whether the codes are signed.
    dtype: ``None`` when the replaced stream was ``BitPacked`` (``materialize`` gives
      ``int32``, as it does); else the native array's dtype name (``'int8'``, ``'uint8'``,
      ``'int16'``, ``'uint16'``), which ``materialize`` gives back.
    block: symbols per Huffman symbol: 1 (the paper's code, one code per symbol) or 2 (pairs
      ``a * 2^bits + b``, ``bits <= 10``; the table counts ``ceil(size / 2)`` pairs, and an odd
      stream's last symbol is paired with itself).

  Reference:
    Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149, §4.

  Example:
    >>> import numpy as np
    >>> from jaxcompress import export
    >>> stream = export.pack_bits(np.array([0, 0, 0, 5, 0, 0, 1, 0] * 16), 3, signed=False)
    >>> coded = export.HuffmanArray.encode(stream)
    >>> (stream.nbytes, coded.nbytes), np.asarray(coded.materialize())[:8].tolist()
    ((48, 32), [0, 0, 0, 5, 0, 0, 1, 0])
  """

  data: StoredArray
  table: StoredArray
  bits: int
  code_shape: tuple[int, ...]
  signed: bool
  dtype: str | None = None
  block: int = 1

  @property
  def shape(self) -> tuple[int, ...]:
    return self.code_shape

  def _out_dtype(self) -> np.dtype:
    return np.dtype(self.dtype or np.int32)

  def decode(self) -> np.ndarray:
    """The codes, decoded on the host, as ``materialize`` returns them (NumPy).

    Raises:
      ValueError: if the payload and table do not decode to ``code_shape``'s codes.
    """
    return self._decode(np.asarray(self.data), np.asarray(self.table))

  def _decode(self, data: np.ndarray, table: np.ndarray) -> np.ndarray:
    table = _as_bytes(np.asarray(table), "table")
    count, size = _read_table(table).count, math.prod(self.code_shape)
    need = -(-size // self.block)
    if count != need:
      if self.block == 1:
        raise ValueError(f"Huffman table counts {count} codes, code_shape {list(self.code_shape)} needs {size}")
      raise ValueError(
        f"Huffman table counts {count} pairs of codes, code_shape {list(self.code_shape)} needs {need} ({size} codes)"
      )
    sym = huffman_decode(_as_bytes(np.asarray(data), "payload"), table)
    if sym.size and sym.max() >= 1 << (self.bits * self.block):
      raise ValueError(f"Huffman stream holds symbol {sym.max()}, which does not fit {self.block} x {self.bits} bits")
    if self.block == 2:
      sym = _unpair(sym, self.bits, size)
    lo = code_range(self.bits, self.signed)[0]
    return (sym + lo).astype(self._out_dtype()).reshape(self.code_shape)

  def constant_count(self) -> int:
    """The number of codes when the stream holds one distinct symbol (zero-length codes), else 0.

    Raises:
      ValueError: if the table is malformed.
    """
    t = _read_table(_as_bytes(np.asarray(self.table), "table"))
    return 0 if t.lengths.size else t.count * self.block

  def materialize(self) -> jax.Array:
    """Decodes to an array of ``code_shape`` (``int32``, or the native ``dtype``)."""
    if isinstance(self.data, np.ndarray) and isinstance(self.table, np.ndarray):
      return jnp.asarray(self.decode())
    out = jax.ShapeDtypeStruct(self.code_shape, self._out_dtype())
    return jax.pure_callback(lambda d, t: self._decode(np.asarray(d), np.asarray(t)), out, self.data, self.table)

  def unpack(self) -> Any:
    """The stream this leaf replaced, bit-exactly: a ``BitPacked`` or the native array."""
    codes = self.decode()
    if self.dtype is not None:
      return codes
    return pack_bits(codes, self.bits, signed=self.signed)

  def prune(self, mask: Any) -> CompressedLeaf:
    """Decodes, prunes the replaced stream, and Huffman-codes the result where smaller."""
    from jaxcompress.export._masked import prune

    return huffman(prune(self.unpack(), mask), block=self.block)

  @classmethod
  def encode(cls, stream: Any, block: int = 1) -> HuffmanArray:
    """Huffman-codes a ``BitPacked`` stream or a native ``int8/uint8/int16/uint16`` code array.

    Args:
      stream: the codes.
      block: 1 (one Huffman symbol per code, the paper's) or 2 (pairs of codes; codes of at
        most 10 bits).

    Raises:
      ValueError: if ``stream`` is neither, or ``block`` is not 1, or 2 with codes of at most
        10 bits.
    """
    if isinstance(stream, BitPacked):
      codes = unpack_codes(stream).reshape(stream.code_shape)
      bits, signed, dtype = stream.bits, stream.signed, None
    elif _is_native(stream):
      codes = np.asarray(stream)
      bits, signed, dtype = 8 * codes.dtype.itemsize, codes.dtype.kind == "i", codes.dtype.name
    else:
      raise ValueError(f"cannot Huffman-code {type(stream).__name__}: expected BitPacked or an 8/16-bit integer array")
    _check_block(block, bits)
    sym = codes.astype(np.int64).reshape(-1) - code_range(bits, signed)[0]
    data, table = huffman_encode(_pair(sym, bits) if block == 2 else sym)
    return cls(
      data=data, table=table, bits=bits, code_shape=tuple(codes.shape), signed=signed, dtype=dtype, block=block
    )


jax.tree_util.register_dataclass(
  HuffmanArray, data_fields=["data", "table"], meta_fields=["bits", "code_shape", "signed", "dtype", "block"]
)

MAX_PAIR_BITS = 10
"""The widest codes ``block=2`` pairs (pair symbols below ``2^20``, the table's span limit)."""
AUTO_PAIR_BITS = 5
"""The widest codes ``block='auto'`` also tries in pairs (a pair table of at most 1,024 lengths)."""


def _check_block(block: Any, bits: int) -> None:
  if type(block) is not int or block not in (1, 2):
    raise ValueError(f"block must be 1 or 2, got {block!r}")
  if block == 2 and bits > MAX_PAIR_BITS:
    raise ValueError(f"block=2 pairs codes of at most {MAX_PAIR_BITS} bits, got {bits}-bit codes")


def _pair(sym: np.ndarray, bits: int) -> np.ndarray:
  """Pair symbols ``a * 2^bits + b`` of consecutive symbols (an odd stream's last paired with itself)."""
  if sym.size % 2:
    sym = np.append(sym, sym[-1])
  return (sym[0::2] << bits) | sym[1::2]


def _unpair(pairs: np.ndarray, bits: int, size: int) -> np.ndarray:
  """The ``size`` symbols of ``pairs`` (inverse of :func:`_pair`); a padded last pair must repeat its symbol."""
  out = np.empty(2 * pairs.size, np.int64)
  out[0::2], out[1::2] = pairs >> bits, pairs & ((1 << bits) - 1)
  if out.size != size and out[-1] != out[-2]:
    raise ValueError("Huffman stream's padded last pair does not repeat its symbol: tampered, or the wrong table")
  return out[:size]


def _is_native(x: Any) -> bool:
  return not isinstance(x, CompressedLeaf) and hasattr(x, "dtype") and np.dtype(x.dtype).name in _NATIVE


# --- trees --------------------------------------------------------------------------------


class StreamReport(NamedTuple):
  """One integer stream considered by :func:`huffman`.

  Attributes:
    path: the leaf's path and the stream's field (``'fc0/kernel.indices.values'``).
    raw_bytes: bytes as stored before.
    coded_bytes: Huffman payload plus table bytes (of the code kept, or of the smallest tried
      when the stream stays as it was).
    entropy_bytes: the Shannon bound of the stream, in bytes (``entropy_bits / 8``, ``n * H``
      of its codes one by one).
    coded: whether the Huffman coding replaced the stream (it is smaller).
    table_bytes: the table's share of ``coded_bytes`` (the payload is the rest).
    payload_bits: the code's bits before padding to a byte (``coded_bytes - table_bytes`` is
      this rounded up to bytes), to set beside ``8 * entropy_bytes``.
    block: symbols per Huffman symbol of that code (1 or 2).
    candidates: ``(block, payload_bits, table_bytes)`` of every code tried, in order.
  """

  path: str
  raw_bytes: int
  coded_bytes: int
  entropy_bytes: float
  coded: bool
  table_bytes: int = 0
  payload_bits: int = 0
  block: int = 1
  candidates: tuple[tuple[int, int, int], ...] = ()


# the fields of each leaf type that hold integer streams, or leaves that may
_STREAM_FIELDS = {
  "QArray": ("codes",),
  "CodebookArray": ("indices",),
  "SparseArray": ("values", "positions"),
  "SlicedArray": ("values",),
  "MaskedArray": ("inner",),
  "Factorized": ("u", "v"),
}


def _code_stream(x: Any, path: str, report: list[StreamReport], min_saving: int, block: int | str) -> Any:
  if isinstance(x, HuffmanArray) or (isinstance(x, BitPacked) and x.bits == 1):
    return x  # a 1-bit code is as short as a code gets: a mask stays a mask
  if isinstance(x, BitPacked) or _is_native(x):
    bits = x.bits if isinstance(x, BitPacked) else 8 * np.dtype(x.dtype).itemsize
    # 'auto' tries pairs of codes up to 5 bits (a pair table of at most 1,024 lengths, 649 B); wider
    # codes' pair tables (up to 2^20 lengths, 640 KiB) would outweigh what pairs save on any stream
    tries: tuple[int, ...] = ((1, 2) if bits <= AUTO_PAIR_BITS else (1,)) if block == "auto" else (int(block),)
    tries = tuple(b for b in tries if b == 1 or bits <= MAX_PAIR_BITS) or (1,)
    codings = [HuffmanArray.encode(x, b) for b in tries]
    if codings[0].constant_count() > MAX_CONSTANT_CODES:
      return x
    best = min(range(len(codings)), key=lambda i: codings[i].nbytes)  # the first of equals: one symbol at a time
    coded = codings[best]
    raw = np.asarray(x.data).nbytes if isinstance(x, BitPacked) else np.asarray(x).nbytes
    sym = np.asarray(unpack_codes(x) if isinstance(x, BitPacked) else x).astype(np.int64).reshape(-1)
    smaller = coded.nbytes + min_saving < raw
    sym0 = sym - code_range(bits, codings[0].signed)[0]  # the symbols coded, as HuffmanArray.encode forms them
    payload_bits = lambda b: coded_bits(_pair(sym0, bits) if b == 2 else sym0)
    candidates = tuple((c.block, payload_bits(c.block), int(np.asarray(c.table).nbytes)) for c in codings)
    _, payload, table = candidates[best]
    report.append(
      StreamReport(path, raw, coded.nbytes, entropy_bits(sym) / 8, smaller, table, payload, coded.block, candidates)
    )
    return coded if smaller else x
  if isinstance(x, CompressedLeaf):
    return _code_leaf(x, path, report, min_saving, block)
  return x


def _code_leaf(
  leaf: CompressedLeaf, path: str, report: list[StreamReport], min_saving: int, block: int | str
) -> CompressedLeaf:
  fields = _STREAM_FIELDS.get(type(leaf).__name__, ())
  changes = {}
  for f in fields:
    value = getattr(leaf, f)
    if f == "values" and type(leaf).__name__ == "SparseArray" and not _integer_stream(value):
      continue  # float values
    changes[f] = _code_stream(value, f"{path}.{f}", report, min_saving, block)
  return dataclasses.replace(cast(Any, leaf), **changes) if changes else leaf


def _integer_stream(x: Any) -> bool:
  return isinstance(x, (BitPacked, HuffmanArray)) or _is_native(x)


def huffman(tree: Any, *, with_report: bool = False, min_saving: int = 0, block: int | str = 1) -> Any:
  """Huffman-codes the integer streams of every compressed leaf of a packed tree, where smaller.

  Deep Compression's last stage: a ``QArray``'s codes, a ``CodebookArray``'s indices, and a
  ``SparseArray``'s integer values and relative gap codes (also inside ``SlicedArray``,
  ``MaskedArray`` and ``Factorized`` leaves, and a bare ``BitPacked``) each become a
  :class:`HuffmanArray` when its payload plus table is smaller than the stream as stored.
  Float arrays, scales, codebooks and 1-bit streams (masks, bitmask positions) are left alone
  (no code is shorter than a bit). ``materialize`` of the result equals ``materialize`` of the input bit for bit.

  Args:
    tree: a packed tree (the output of ``Compressor.pack``) or one compressed leaf.
    with_report: also return one :class:`StreamReport` per stream considered.
    min_saving: replace a stream only when it saves more than this many bytes. ``nbytes``
      (and so the default, 0) leaves out the file's header, where each coded stream costs
      a few bytes more than its raw stream (its node and one more array entry in format 3's
      compressed header; about 300 bytes in format 2, a tensor entry with a SHA-256): on small
      models pass ~8 (format 3) or ~300-400 (format 2) to make the *file* smaller too.
    block: ``1`` (the paper's: one code per symbol), ``2`` (pairs of symbols, an extended
      alphabet: at most half Huffman's per-symbol redundancy, a table of up to ``4^bits``
      entries; streams of codes wider than 10 bits stay at 1), or ``'auto'`` (per stream, the
      smaller of the two, payload and table together, pairs tried for codes of at most 5 bits;
      ties keep 1). On a short stream the pair code's payload can fall well below ``n * H``
      (the empirical pair distribution fits the stream, the table carries the difference).

  Returns:
    The tree with coded streams; with ``with_report``, ``(tree, reports)``.

  Raises:
    ValueError: if ``min_saving`` is not a non-negative integer, or ``block`` is not 1, 2 or
      ``'auto'``.

  Reference:
    Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149, §4. Blocks:
    Gallager 1978, "Variations on a theme by Huffman", IEEE Trans. Inf. Theory 24(6).

  Example:
    >>> import numpy as np
    >>> from jaxcompress import export
    >>> idx = np.random.default_rng(0).choice(16, size=(64, 64), p=[0.5] + [0.5 / 15] * 15)
    >>> book = export.from_assignments(np.linspace(-1, 1, 16, dtype=np.float32), idx)
    >>> coded, reports = export.huffman(book, with_report=True)
    >>> bool((np.asarray(coded.materialize()) == np.asarray(book.materialize())).all())
    True
    >>> coded.nbytes < book.nbytes, reports[0].coded
    (True, True)
  """
  if type(min_saving) is not int or min_saving < 0:
    raise ValueError(f"min_saving must be a non-negative integer, got {min_saving!r}")
  if block != "auto" and (type(block) is not int or block not in (1, 2)):
    raise ValueError(f"block must be 1, 2 or 'auto', got {block!r}")
  report: list[StreamReport] = []

  def code(path: Any, x: Any) -> Any:
    if not isinstance(x, CompressedLeaf):
      return x
    return _code_stream(x, jax.tree_util.keystr(path, simple=True, separator="/"), report, min_saving, block)

  out = jax.tree_util.tree_map_with_path(code, tree, is_leaf=is_compressed)
  return (out, report) if with_report else out


def holds_huffman(x: Any) -> bool:
  """Whether a tree or leaf holds a :class:`HuffmanArray` anywhere."""
  leaves = jax.tree.leaves(x, is_leaf=lambda n: isinstance(n, HuffmanArray))
  return any(isinstance(n, HuffmanArray) for n in leaves)


def _uncode(x: Any) -> Any:
  if isinstance(x, HuffmanArray):
    return x.unpack()
  if not isinstance(x, CompressedLeaf):
    return x
  fields = _STREAM_FIELDS.get(type(x).__name__, ())
  changes = {f: _uncode(getattr(x, f)) for f in fields}
  return dataclasses.replace(cast(Any, x), **changes) if changes else x


def unhuffman(tree: Any) -> Any:
  """Restores every Huffman-coded stream of a tree to the stream it replaced, bit-exactly.

  Args:
    tree: a tree from :func:`huffman` (or loaded from a file that holds one).

  Returns:
    The tree as it was before :func:`huffman`: ``BitPacked`` streams and native code arrays
    (for integer kernels, which read codes directly).

  Raises:
    ValueError: if a Huffman stream does not decode (truncated, tampered, wrong table).

  Example:
    >>> import numpy as np
    >>> from jaxcompress import export
    >>> q = export.QArray(export.store_codes(np.zeros((8, 8), int), 4, signed=True), np.float32(0.1), None, 4, "float32")
    >>> back = export.unhuffman(export.huffman(q))
    >>> bool((np.asarray(back.codes.data) == np.asarray(q.codes.data)).all())
    True
  """
  return jax.tree.map(_uncode, tree, is_leaf=is_compressed)
