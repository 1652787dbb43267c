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
``huffman(tree, block='auto')`` keeps, per stream, whichever code is smallest, payload and table
together, the extended codes below included.

*Extended codes* (:func:`extended_huffman_encode`; a ``HuffmanArray`` whose ``table`` is ``None``):
the pair table above stores a length per pair, up to ``4^bits`` of them, which on LeNet-sized
streams (100-2,000 codes) outweighs what pairs save. An extended code stores one small number per
*symbol* instead (its count's square root, quantized to 1-8 bits) and encoder and decoder derive
the Huffman code of blocks of 1..12 symbols from the product of those numbers (the stream's
order-0 model; Huffman 1952 over the extended alphabet, Cover & Thomas 2006 §5.4): the whole-bit
redundancy falls to at most ``1/block`` bits per symbol at a table the size of a single-symbol
one. Measured on the Deep Compression digits files (3 seeds): 9 of the 10 streams coded in every
seed come within 1% of ``n * H`` (one symbol at a time: +0.5..+2.9%, up to +15.9% on a 4-symbol
stream) with 6..32-byte tables (5-bit lengths and a CRC-32: 11..89 bytes), twice as many streams
are worth coding, and the LeNet-5 file is 36 bytes smaller (1,951 -> 1,915 B). Its table leads
``data`` (one array: a file's header lists one entry, not two) and holds no CRC-32: every file
format checks each array's SHA-256 (format 5: the whole file's) before it is decoded.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import numbers
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
  s = s.reshape(-1)
  if s.size and (int(s.min()) < 0 or int(s.max()) > _MAX_SYMBOL):  # checked before any cast wraps
    raise ValueError(f"symbols must lie in [0, 2^32), got range [{int(s.min())}, {int(s.max())}]")
  s = s.astype(np.int64)
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
  return _emit(s - first, lengths), _write_table(s.size, first, lengths, crc)


def _emit(rel: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """The payload of symbols ``rel`` (indices into ``lengths``) under the canonical code of ``lengths``."""
  order, codes = _canonical(lengths)
  code_of = np.zeros(lengths.size, np.int64)
  code_of[order] = codes
  lens, vals = lengths[rel], code_of[rel]
  ends = np.cumsum(lens)
  total = int(ends[-1])
  starts = ends - lens
  bits = np.zeros(total, np.uint8)
  for j in range(int(lens.max())):  # bit j (from the MSB) of every code at least j + 1 long
    live = lens > j
    bits[starts[live] + j] = (vals[live] >> (lens[live] - 1 - j)) & 1
  return np.packbits(bits)


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


# --- extended Huffman: blocks of symbols, the code derived from a stored model ------------

MAX_BLOCK = 12
"""The most symbols per block an extended Huffman code takes (``2^12`` blocks of two symbols)."""
MAX_BLOCK_SYMBOLS = 4096
"""The most distinct blocks an extended Huffman code has: ``k^block``, ``k`` the symbols present."""
MAX_MODEL_SPAN = 4096
"""The widest symbol range (largest minus smallest, plus one) an extended Huffman table describes."""
_MAX_WIDTH = 8  # bits per model value in the table
_WEIGHT_BITS = 62  # a block's weight (the product of its symbols' v^2) stays below 2^62


def _widths(block: int) -> range:
  """The model widths a block length allows (a block's weight below ``2^62``)."""
  return range(1, min(_MAX_WIDTH, _WEIGHT_BITS // (2 * block)) + 1)


def _model_values(counts: np.ndarray, width: int) -> np.ndarray:
  """The stored model: 0 for an absent symbol, else ``max(1, round((2^width - 1) sqrt(c / c_max)))``."""
  c = counts.astype(np.float64)
  v = np.maximum(1, np.round(((1 << width) - 1) * np.sqrt(c / c.max()))).astype(np.int64)
  return np.where(counts > 0, v, 0)


def _block_lengths(values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
  """(the present symbols' offsets, the code length of every block): the Huffman code of the
  ``k^block`` blocks weighted by the product of their symbols' ``v^2``, block ``sum_j r_j k^(block-1-j)``
  for ranks ``r_j`` among the present symbols."""
  present = np.flatnonzero(values)
  w = values[present].astype(np.int64) ** 2
  weights = np.ones(1, np.int64)
  for _ in range(block):
    weights = (weights[:, None] * w[None, :]).reshape(-1)
  return present, code_lengths(weights)


def _block_index(rank: np.ndarray, k: int, block: int) -> np.ndarray:
  """The block symbols of a stream of ranks (the last block padded with the last symbol)."""
  r = np.concatenate([rank, np.repeat(rank[-1:], -rank.size % block)])
  idx = np.zeros(r.size // block, np.int64)
  for j in range(block):
    idx = idx * k + r[j::block]
  return idx


def _model_table_bytes(count: int, first: int, span: int, width: int) -> int:
  head = len(_varint(count)) + len(_varint(first)) + len(_varint(span << 3 | (width - 1)))
  return head + (span * width + 7) // 8


def _write_model_table(count: int, first: int, values: np.ndarray, width: int) -> np.ndarray:
  head = _varint(count) + _varint(first) + _varint(values.size << 3 | (width - 1))
  packed = np.asarray(pack_bits(values, width, signed=False).data, np.uint8)
  return np.concatenate([np.frombuffer(head, np.uint8), packed])


class _Model(NamedTuple):
  count: int  # symbols (not blocks)
  first: int
  values: np.ndarray  # per symbol first .. first + span - 1
  width: int


def _read_model_table(table: Any, block: int) -> _Model:
  table = _as_bytes(table, "table")
  count, at = _read_varint(table, 0, "symbol count")
  first, at = _read_varint(table, at, "first symbol")
  packed_span, at = _read_varint(table, at, "table size")
  span, width = packed_span >> 3, (packed_span & 7) + 1
  if first > _MAX_SYMBOL or span > MAX_MODEL_SPAN or first + span > _MAX_SYMBOL + 1:
    raise ValueError(f"Huffman table is malformed: symbols {first} .. {first + span - 1} are out of range")
  need = (span * width + 7) // 8
  if table.size - at != need:
    raise ValueError(
      f"Huffman table holds {table.size - at} bytes of model values, its {span} symbols at {width} bits need {need}"
    )
  bits = np.unpackbits(table[at:], bitorder="little")
  planes = bits[: span * width].reshape(span, width).astype(np.int64)
  values = (planes << np.arange(width)).sum(axis=1)
  if bits[span * width :].any():
    raise ValueError("Huffman table is malformed: non-zero padding after its model values")
  k = int(np.count_nonzero(values))
  if k < 2 or count < 1:
    raise ValueError(f"Huffman table is malformed: an extended code of {count} symbols over {k} (at least 1 over 2)")
  if width not in _widths(block) or k**block > MAX_BLOCK_SYMBOLS:
    raise ValueError(
      f"Huffman table is malformed: blocks of {block} over {k} symbols at {width} bits (at most "
      f"{MAX_BLOCK_SYMBOLS} blocks, width at most {_widths(block).stop - 1})"
    )
  return _Model(count, first, values, width)


def _split_model(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(model table, payload) of an extended code's ``data``: the table's varints give its length."""
  at = 0
  for what in ("symbol count", "first symbol"):
    _, at = _read_varint(data, at, what)
  packed_span, at = _read_varint(data, at, "table size")
  end = at + ((packed_span >> 3) * ((packed_span & 7) + 1) + 7) // 8
  if end > data.size:
    raise ValueError(f"Huffman table is truncated: its model values need {end - at} bytes, {data.size - at} follow")
  return data[:end], data[end:]


def _check_extended_block(block: Any) -> None:
  if type(block) is not int or not 1 <= block <= MAX_BLOCK:
    raise ValueError(f"block must be an integer in [1, {MAX_BLOCK}], got {block!r}")


class _Stream(NamedTuple):
  """A checked stream as the extended code sees it."""

  first: int
  counts: np.ndarray  # per symbol first .. max
  rank: np.ndarray  # each symbol's rank among the present ones
  k: int  # symbols present


def _extended_stream(s: np.ndarray) -> _Stream:
  if s.size == 0 or s.min() == s.max():
    raise ValueError("an extended Huffman code needs at least 2 distinct symbols (one symbol: huffman_encode)")
  first = int(s.min())
  if int(s.max()) - first >= MAX_MODEL_SPAN:
    raise ValueError(f"symbols span [{first}, {int(s.max())}], wider than an extended code's {MAX_MODEL_SPAN}")
  counts = np.bincount(s - first)
  present = np.flatnonzero(counts)
  return _Stream(first, counts, np.searchsorted(present, s - first), present.size)


def _extended_costs(st: _Stream, n: int, block: int) -> list[tuple[int, int, int]]:
  """``(width, payload bits, table bytes)`` of the extended code of every allowed width."""
  blocks = np.bincount(_block_index(st.rank, st.k, block), minlength=st.k**block)
  out = []
  for width in _widths(block):
    _, lengths = _block_lengths(_model_values(st.counts, width), block)
    out.append((width, int((blocks * lengths).sum()), _model_table_bytes(n, st.first, st.counts.size, width)))
  return out


def extended_huffman_encode(symbols: Any, block: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Huffman-codes blocks of ``block`` symbols under a product model stored in the table.

  Extended Huffman coding (Huffman 1952's code over the alphabet of ``block``-symbol strings,
  Cover & Thomas 2006 §5.4): the per-symbol redundancy of whole-bit code lengths, up to
  ``p_max + 0.086`` bits for one symbol at a time (Gallager 1978), falls to at most ``1/block``
  bits. Instead of the ``k^block`` code lengths, the table stores one small number per symbol,
  ``v = max(1, round((2^width - 1) * sqrt(c / c_max)))`` of its count ``c`` (the square root
  spreads the quantization error evenly in probability), and encoder and decoder both build the
  Huffman code of the blocks weighted by the product of their symbols' ``v^2``: the code of
  the independent (order-0) model of the stream, so the table costs about what a single-symbol
  table does.

  Layout (see the module's docstring): LEB128 varints ``count`` (symbols), ``first`` and
  ``span << 3 | (width - 1)``, then ``v`` of each symbol ``first .. first + span - 1`` at
  ``width`` bits, bit-packed (0 = absent). Blocks are ``sum_j r_j k^(block-1-j)`` over the
  ranks ``r_j`` among the ``k`` present symbols; canonical codes by (length, block); the last
  block is padded with copies of the stream's last symbol. The table holds no checksum (the
  single-symbol table's CRC-32 is 4 bytes, as much as a whole small table): every file format
  already checks a SHA-256 over each array (and a crafted file could recompute a CRC as easily),
  a ``HuffmanArray`` keeps this table and its payload in one array, so they cannot be paired
  wrongly, and decoding still refuses a payload whose length, padding bits or last block do not
  match the table (measured on random streams: another same-length stream's table raises 85% of
  the time; a flipped payload bit, which a CRC would catch, mostly decodes to other codes).

  Args:
    symbols: integers in ``[0, 2^32)`` of any shape (flattened row-major), at least 2 distinct,
      spanning fewer than :data:`MAX_MODEL_SPAN` values.
    block: symbols per block, ``1..12``, with ``k^block <= 4096``.
    width: bits per model value, ``1..min(8, 31 // block)``; ``None``: the width whose payload
      plus table is smallest (the narrowest of equals).

  Returns:
    ``(payload, table)``, both ``uint8[...]``: the codes end to end (MSB first, zero-padded to
    a byte) and the table.

  Raises:
    ValueError: if the symbols are not integers in range, fewer than 2 distinct or span too
      wide, ``block`` or ``width`` is out of range, or ``k^block > 4096``.

  Reference:
    Huffman 1952, Proc. IRE 40(9); Cover & Thomas 2006, *Elements of Information Theory*, §5.4.

  Example:
    >>> import numpy as np
    >>> from jaxcompress import export
    >>> s = np.random.default_rng(0).choice(3, size=300, p=[0.8, 0.15, 0.05])
    >>> payload, table = export.extended_huffman_encode(s, block=3)
    >>> bool((export.extended_huffman_decode(payload, table, block=3) == s).all())
    True
    >>> 8 * payload.size, table.size, round(export.entropy_bits(s)), export.coded_bits(s)  # single: 379 bits
    (328, 5, 317, 379)
  """
  _check_extended_block(block)
  s = _symbols(symbols)
  st = _extended_stream(s)
  if st.k**block > MAX_BLOCK_SYMBOLS:
    raise ValueError(f"{st.k} symbols in blocks of {block} make {st.k**block} blocks, more than {MAX_BLOCK_SYMBOLS}")
  if width is None:
    width = min(_extended_costs(st, s.size, block), key=lambda c: ((c[1] + 7) // 8 + c[2], c[0]))[0]
  elif type(width) is not int or width not in _widths(block):
    raise ValueError(f"width must be an integer in [1, {_widths(block).stop - 1}] for blocks of {block}, got {width!r}")
  values = _model_values(st.counts, width)
  _, lengths = _block_lengths(values, block)
  return _emit(_block_index(st.rank, st.k, block), lengths), _write_model_table(s.size, st.first, values, width)


def extended_huffman_decode(payload: Any, table: Any, block: int) -> np.ndarray:
  """Decodes a stream written by :func:`extended_huffman_encode`, bit-exactly.

  Args:
    payload: the coded bytes (``bytes`` or ``uint8[...]``).
    table: the table returned with them.
    block: the block length they were coded with.

  Returns:
    ``int64[count]``: the symbols, in order.

  Raises:
    ValueError: naming what is wrong, if ``block`` is out of range, the table is truncated or
      malformed (out-of-range widths or symbols, fewer than 2 symbols, more than 4096 blocks),
      or the payload ends early, has bytes or non-zero padding bits after its last code, or
      its last block is not padded with copies of the last symbol (a tampered payload, or the
      wrong table).

  Example:
    >>> from jaxcompress import export
    >>> payload, table = export.extended_huffman_encode([0, 1, 0, 0, 2], block=2)
    >>> export.extended_huffman_decode(payload, table, block=2).tolist()
    [0, 1, 0, 0, 2]
  """
  _check_extended_block(block)
  t = _read_model_table(table, block)
  present, lengths = _block_lengths(t.values, block)
  blocks = -(-t.count // block)
  idx = _decode_payload(_as_bytes(payload, "payload"), _Table(blocks, 0, lengths, 0))
  ranks = np.empty((blocks, block), np.int64)
  for j in range(block - 1, -1, -1):
    idx, ranks[:, j] = np.divmod(idx, present.size)
  flat = ranks.reshape(-1)
  if (flat[t.count :] != flat[t.count - 1]).any():
    raise ValueError("Huffman stream's padded last block does not repeat its last symbol: tampered, or the wrong table")
  return present[flat[: t.count]] + t.first


# --- the compressed leaf ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HuffmanArray(CompressedLeaf):
  """Integer codes, Huffman-coded: stands in for a :class:`~jaxcompress.export.BitPacked`
  stream or a native integer code array inside a leaf.

  Symbols are the codes as :class:`~jaxcompress.export.BitPacked` stores them (signed
  codes offset by ``2^(bits-1)``). ``materialize()`` decodes on the host with NumPy (under
  ``jit``, through :func:`jax.pure_callback`).

  Attributes:
    data: ``uint8[...]``, the Huffman payload; for an extended code (``table`` is ``None``), its
      table (see :func:`extended_huffman_encode`, self-delimiting) followed by its payload.
    table: ``uint8[...]``, the table of the code's lengths (see :func:`huffman_encode`), or
      ``None`` for an extended code (``model == 'product'``): one array instead of two, which
      in a file saves the second array's entry, a few bytes of header per stream (measured on
      LeNet-5's 10 coded streams: 34 bytes of format 5's deflated header).
    bits: bit-width of the codes (1..16), as the replaced stream had.
    code_shape: the shape of the code tensor.
    signed: whether the codes are signed.
    dtype: ``None`` when the replaced stream was ``BitPacked`` (``materialize`` gives
      ``int32``, as it does); else the native array's dtype name (``'int8'``, ``'uint8'``,
      ``'int16'``, ``'uint16'``), which ``materialize`` gives back.
    block: symbols per Huffman symbol: 1 (the paper's code, one code per symbol) or 2 (pairs
      ``a * 2^bits + b``, ``bits <= 10``; the table counts ``ceil(size / 2)`` pairs, and an odd
      stream's last symbol is paired with itself); for an extended code, ``1..12`` (its table
      counts ``size`` codes).

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
  table: StoredArray | None
  bits: int
  code_shape: tuple[int, ...]
  signed: bool
  dtype: str | None = None
  block: int = 1

  @property
  def shape(self) -> tuple[int, ...]:
    return self.code_shape

  @property
  def model(self) -> str | None:
    """What the code is built from: ``None`` (the stored code lengths, fitted to the stream's
    symbols or pairs) or ``'product'`` (an extended code: the model of single codes that leads
    ``data``, the code of ``block``-code blocks derived from it)."""
    return "product" if self.table is None else None

  def _out_dtype(self) -> np.dtype:
    return np.dtype(self.dtype or np.int32)

  def decode(self) -> np.ndarray:
    """The codes, decoded on the host, as ``materialize`` returns them (NumPy).

    Raises:
      ValueError: if the payload and table do not decode to ``code_shape``'s codes.
    """
    return self._decode(np.asarray(self.data), None if self.table is None else np.asarray(self.table))

  def _decode(self, data: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    _check_block(self.block, self.bits, self.model)
    size = math.prod(self.code_shape)
    if table is None:
      table, payload = _split_model(_as_bytes(np.asarray(data), "data"))
      count = _read_model_table(table, self.block).count
      if count != size:
        raise ValueError(f"Huffman table counts {count} codes, code_shape {list(self.code_shape)} needs {size}")
      sym = extended_huffman_decode(payload, table, self.block)
      if sym.max() >= 1 << self.bits:
        raise ValueError(f"Huffman stream holds symbol {sym.max()}, which does not fit {self.bits} bits")
      lo = code_range(self.bits, self.signed)[0]
      return (sym + lo).astype(self._out_dtype()).reshape(self.code_shape)
    table = _as_bytes(np.asarray(table), "table")
    count = _read_table(table).count
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
    if self.table is None:
      return 0  # an extended code's blocks have codes of at least a bit
    t = _read_table(_as_bytes(np.asarray(self.table), "table"))
    return 0 if t.lengths.size else t.count * self.block

  def materialize(self) -> jax.Array:
    """Decodes to an array of ``code_shape`` (``int32``, or the native ``dtype``)."""
    if isinstance(self.data, np.ndarray) and (self.table is None or isinstance(self.table, np.ndarray)):
      return jnp.asarray(self.decode())
    out = jax.ShapeDtypeStruct(self.code_shape, self._out_dtype())
    if self.table is None:
      return jax.pure_callback(lambda d: self._decode(np.asarray(d), None), out, self.data)
    return jax.pure_callback(lambda d, t: self._decode(np.asarray(d), np.asarray(t)), out, self.data, self.table)

  def unpack(self) -> Any:
    """The stream this leaf replaced, bit-exactly: a ``BitPacked`` or the native array."""
    codes = self.decode()
    if self.dtype is not None:
      return codes
    return pack_bits(codes, self.bits, signed=self.signed)

  def prune(self, mask: Any) -> CompressedLeaf:
    """Decodes, prunes the replaced stream, and Huffman-codes the result as this stream was
    coded (``_recode_pruned``), where smaller."""
    from jaxcompress.export._masked import prune

    return _recode_pruned(self, prune(self.unpack(), mask))

  @classmethod
  def encode(cls, stream: Any, block: int = 1, model: str | None = None, width: int | None = None) -> HuffmanArray:
    """Huffman-codes a ``BitPacked`` stream or a native ``int8/uint8/int16/uint16`` code array.

    Args:
      stream: the codes.
      block: 1 (one Huffman symbol per code, the paper's) or 2 (pairs of codes; codes of at
        most 10 bits); with ``model='product'``, 1..12.
      model: ``None`` (the table stores the code's lengths) or ``'product'`` (extended
        Huffman: :func:`extended_huffman_encode`, at least 2 distinct codes).
      width: with ``model='product'``, the model's bits per code (``None``: the smallest).

    Raises:
      ValueError: if ``stream`` is neither, ``block`` or ``model`` is not one of those, or
        ``extended_huffman_encode`` refuses the codes.
    """
    if isinstance(stream, BitPacked):
      codes = unpack_codes(stream).reshape(stream.code_shape)
      bits, signed, dtype = stream.bits, stream.signed, None
    elif _is_native(stream):
      codes = np.asarray(stream)
      bits, signed, dtype = 8 * codes.dtype.itemsize, codes.dtype.kind == "i", codes.dtype.name
    else:
      raise ValueError(f"cannot Huffman-code {type(stream).__name__}: expected BitPacked or an 8/16-bit integer array")
    _check_block(block, bits, model)
    if width is not None and model is None:
      raise ValueError(f"width is for model='product' only, got width={width!r} with model=None")
    sym = codes.astype(np.int64).reshape(-1) - code_range(bits, signed)[0]
    table: np.ndarray | None
    if model == "product":
      payload, head = extended_huffman_encode(sym, block, width)
      data, table = np.concatenate([head, payload]), None
    else:
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


def _check_block(block: Any, bits: int, model: Any = None) -> None:
  if model == "product":
    _check_extended_block(block)
    return
  if model is not None:
    raise ValueError(f"model must be None or 'product', got {model!r}")
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
    coded_bytes: Huffman payload plus table bytes (of the code kept, or of the one chosen
      when the stream stays as it was).
    entropy_bytes: the Shannon bound of the stream, in bytes (``entropy_bits / 8``, ``n * H``
      of its codes one by one).
    coded: whether the Huffman coding replaced the stream (it is smaller).
    table_bytes: the table's share of ``coded_bytes`` (the payload is the rest).
    payload_bits: the code's bits before padding to a byte (``coded_bytes - table_bytes`` is
      this rounded up to bytes), to set beside ``8 * entropy_bytes``.
    block: symbols per Huffman symbol of that code.
    candidates: ``(block, payload_bits, table_bytes, model)`` of each code tried, in order
      (for the extended codes, one per block length: the width chosen for it).
    model: that code's table, ``None`` (code lengths) or ``'product'`` (extended Huffman).
  """

  path: str
  raw_bytes: int
  coded_bytes: int
  entropy_bytes: float
  coded: bool
  table_bytes: int = 0
  payload_bits: int = 0
  block: int = 1
  candidates: tuple[tuple[int, int, int, str | None], ...] = ()
  model: str | None = None


class _Candidate(NamedTuple):
  block: int
  model: str | None
  width: int | None
  payload_bits: int
  table_bytes: int

  @property
  def nbytes(self) -> int:
    return (self.payload_bits + 7) // 8 + self.table_bytes


def _extended_candidates(sym: np.ndarray) -> list[_Candidate]:
  """Every extended code of a stream of offset codes: each block length with at most
  :data:`MAX_BLOCK_SYMBOLS` blocks, each width (none for fewer than 2 distinct codes or a span
  wider than :data:`MAX_MODEL_SPAN`)."""
  if sym.size == 0 or sym.min() == sym.max() or sym.max() - sym.min() >= MAX_MODEL_SPAN:
    return []
  st = _extended_stream(sym)
  out = []
  for block in range(1, MAX_BLOCK + 1):
    if st.k**block > MAX_BLOCK_SYMBOLS:
      break
    out += [_Candidate(block, "product", w, bits, tab) for w, bits, tab in _extended_costs(st, sym.size, block)]
  return out


def _choose(cands: list[_Candidate], bound: float, slack: float | None, worth: Any) -> _Candidate:
  """The smallest candidate (of equals, the smaller payload, then the first), among those worth
  storing whose payload is within ``slack`` of ``bound`` bits when there are any."""
  within = [c for c in cands if slack is not None and worth(c) and c.payload_bits <= (1 + slack) * bound]
  return min(within or cands, key=lambda c: (c.nbytes, c.payload_bits))


# the fields of each leaf type that hold integer streams, or leaves that may
_STREAM_FIELDS = {
  "QArray": ("codes",),
  "CodebookArray": ("indices",),
  "SparseArray": ("values", "positions"),
  "SlicedArray": ("values",),
  "MaskedArray": ("inner",),
  "Factorized": ("u", "v"),
}


def _code_stream(x: Any, path: str, report: list[StreamReport], opts: _Options) -> Any:
  if isinstance(x, HuffmanArray) or (isinstance(x, BitPacked) and x.bits == 1):
    return x  # a 1-bit code is as short as a code gets: a mask stays a mask
  if isinstance(x, BitPacked) or _is_native(x):
    bits = x.bits if isinstance(x, BitPacked) else 8 * np.dtype(x.dtype).itemsize
    block = opts.block
    # 'auto' tries pairs of codes up to 5 bits (a pair table of at most 1,024 lengths, 649 B); wider
    # codes' pair tables (up to 2^20 lengths, 640 KiB) would outweigh what pairs save on any stream
    tries: tuple[int, ...] = ((1, 2) if bits <= AUTO_PAIR_BITS else (1,)) if block == "auto" else (int(block),)
    tries = tuple(b for b in tries if b == 1 or bits <= MAX_PAIR_BITS) or (1,)
    codings = [HuffmanArray.encode(x, b) for b in tries]
    if codings[0].constant_count() > MAX_CONSTANT_CODES:
      return x
    raw = np.asarray(x.data).nbytes if isinstance(x, BitPacked) else np.asarray(x).nbytes
    sym = np.asarray(unpack_codes(x) if isinstance(x, BitPacked) else x).astype(np.int64).reshape(-1)
    sym0 = sym - code_range(bits, codings[0].signed)[0]  # the symbols coded, as HuffmanArray.encode forms them
    bound = entropy_bits(sym)
    cands = [
      _Candidate(c.block, None, None, coded_bits(_pair(sym0, bits) if c.block == 2 else sym0), c.nbytes - c.data.size)
      for c in codings
    ]
    extended = _extended_candidates(sym0) if block == "auto" else []
    worth = lambda c: c.nbytes + opts.min_saving < raw
    best = _choose(cands + extended, bound, opts.max_redundancy if block == "auto" else None, worth)
    if best.model is None:
      coded = codings[cands.index(best)]
    else:
      coded = HuffmanArray.encode(x, best.block, best.model, best.width)
    # the report: each code tried, the extended ones one per block length (the width chosen for it)
    shown = cands + [
      _choose([c for c in extended if c.block == m], bound, opts.max_redundancy, worth)
      for m in sorted({c.block for c in extended})
    ]
    if best.model is not None:
      shown = [best if (c.block, c.model) == (best.block, best.model) else c for c in shown]
    candidates = tuple((c.block, c.payload_bits, c.table_bytes, c.model) for c in shown)
    # with a target (block='auto', max_redundancy), a stream no worthwhile code meets stays as it is
    slack = opts.max_redundancy if block == "auto" else None
    smaller = worth(best) and (slack is None or best.payload_bits <= (1 + slack) * bound)
    kept = (best.nbytes, bound / 8, smaller, best.table_bytes, best.payload_bits, best.block, candidates, best.model)
    report.append(StreamReport(path, raw, *kept))
    return coded if smaller else x
  if isinstance(x, CompressedLeaf):
    return _code_leaf(x, path, report, opts)
  return x


class _Options(NamedTuple):
  min_saving: int
  block: int | str
  max_redundancy: float | None


def _code_leaf(leaf: CompressedLeaf, path: str, report: list[StreamReport], opts: _Options) -> CompressedLeaf:
  fields = _STREAM_FIELDS.get(type(leaf).__name__, ())
  changes = {}
  for f in fields:
    value = getattr(leaf, f)
    if f == "values" and type(leaf).__name__ == "SparseArray" and not _integer_stream(value):
      continue  # float values
    changes[f] = _code_stream(value, f"{path}.{f}", report, opts)
  return dataclasses.replace(cast(Any, leaf), **changes) if changes else leaf


def _integer_stream(x: Any) -> bool:
  return isinstance(x, (BitPacked, HuffmanArray)) or _is_native(x)


def huffman(
  tree: Any,
  *,
  with_report: bool = False,
  min_saving: int = 0,
  block: int | str = 1,
  max_redundancy: float | None = 0.01,
) -> Any:
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
      entries; streams of codes wider than 10 bits stay at 1), or ``'auto'``: per stream, the
      smallest (payload and table together; the first of equals) of the code of single
      symbols, of pairs (codes of at most 5 bits) and the extended codes
      (:func:`extended_huffman_encode`: blocks of 1..12 symbols, at most 4096 distinct blocks,
      each model width; streams of at least 2 distinct codes spanning fewer than 4096). On a
      short stream the pair code's payload can fall well below ``n * H`` (the empirical pair
      distribution fits the stream, the table carries the difference).
    max_redundancy: with ``block='auto'``, keep the smallest code whose payload is at most
      ``(1 + max_redundancy) * n * H`` bits among those that save more than ``min_saving``
      bytes, and leave the stream as it is when there is none (every stream stored coded is
      within 1% of its Shannon bound, plus its table; a near-uniform 8-bit stream of a few
      hundred values, whose table would outweigh the saving, stays packed); ``None``: the
      smallest code, whatever its payload.

  Returns:
    The tree with coded streams; with ``with_report``, ``(tree, reports)``.

  Raises:
    ValueError: if ``min_saving`` is not a non-negative integer, ``block`` is not 1, 2 or
      ``'auto'``, or ``max_redundancy`` is not ``None`` or a non-negative finite number.

  Reference:
    Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149, §4. Blocks:
    Gallager 1978, "Variations on a theme by Huffman", IEEE Trans. Inf. Theory 24(6); Cover &
    Thomas 2006, *Elements of Information Theory*, §5.4 (extended codes).

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

  def finite_float(x):
    try:
      return float(x) if math.isfinite(float(x)) else None
    except OverflowError:  # an int beyond float's range
      return None

  if max_redundancy is not None and (
    isinstance(max_redundancy, bool)
    or not isinstance(max_redundancy, numbers.Real)
    or finite_float(max_redundancy) is None
    or max_redundancy < 0
  ):
    raise ValueError(f"max_redundancy must be None or a non-negative finite number, got {max_redundancy!r}")
  opts = _Options(min_saving, block, None if max_redundancy is None else float(max_redundancy))
  report: list[StreamReport] = []

  def code(path: Any, x: Any) -> Any:
    if not isinstance(x, CompressedLeaf):
      return x
    return _code_stream(x, jax.tree_util.keystr(path, simple=True, separator="/"), report, opts)

  out = jax.tree_util.tree_map_with_path(code, tree, is_leaf=is_compressed)
  return (out, report) if with_report else out


def _coded_streams(x: Any) -> list[HuffmanArray]:
  leaves = jax.tree.leaves(x, is_leaf=lambda n: isinstance(n, HuffmanArray))
  return [n for n in leaves if isinstance(n, HuffmanArray)]


def _recode_settings(x: Any) -> list[dict[str, Any]]:
  """The :func:`huffman` settings that code a pruned copy of ``x`` as ``x``'s streams were coded.

  A leaf records each stream's code (``block`` and ``model``), not the :func:`huffman` call
  that chose it, so the settings are read back from the codes: only ``block='auto'`` makes
  extended codes (``model == 'product'``), and pairs come from ``block=2`` or ``'auto'``.

  Args:
    x: a leaf or tree holding :class:`HuffmanArray` streams.

  Returns:
    ``[{'block': 1}]`` when every stream is the paper's one-symbol code (the prune is coded the
    same way); otherwise ``block='auto'`` at the default ``max_redundancy`` target (what
    ``huffman(block='auto')`` stores), then ``block='auto', max_redundancy=None`` (the smallest
    code whatever its payload: once pruned, a stream may have no code within the target that
    saves bytes, and would stay packed), then ``block=2`` when a stream of codes wider than
    :data:`AUTO_PAIR_BITS` bits is paired (``'auto'`` does not pair those).
  """
  streams = _coded_streams(x)
  if all(h.block == 1 and h.model is None for h in streams):
    return [{"block": 1}]
  out: list[dict[str, Any]] = [{"block": "auto"}, {"block": "auto", "max_redundancy": None}]
  if any(h.block == 2 and h.model is None and h.bits > AUTO_PAIR_BITS for h in streams):
    out.append({"block": 2})
  return out


def _recode_pruned(before: Any, after: Any) -> Any:
  """``after`` (``before`` pruned, its streams decoded) Huffman-coded as ``before``'s streams were.

  Each of ``_recode_settings``' settings codes ``after``; the smallest result is kept (the
  first of equals), so a prune is never larger than coding it afresh with ``before``'s own
  settings, and keeps an extended code where one is smallest.

  Args:
    before: the Huffman-coded leaf that was pruned.
    after: its pruned copy, with plain (``BitPacked`` or native) streams.

  Returns:
    A leaf whose ``materialize`` equals ``after``'s bit for bit.
  """
  coded = [huffman(after, **s) for s in _recode_settings(before)]
  return min(coded, key=lambda c: c.nbytes)


def holds_huffman(x: Any) -> bool:
  """Whether a tree or leaf holds a :class:`HuffmanArray` anywhere."""
  return bool(_coded_streams(x))


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
