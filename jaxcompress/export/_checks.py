"""Consistency checks of a compressed leaf's static fields against the arrays it holds.

A file's checksum catches accidental corruption; these checks catch a file whose metadata
is well-formed and correctly checksummed but does not describe its arrays (a crafted or
mis-written file): a ``code_shape`` larger than the packed stream, a ``dense_shape`` the
positions cannot address, ``bits`` out of range, an unknown dtype name. They run on the
host with NumPy, in time and memory proportional to the stored arrays (never to a dense
shape), before any leaf is materialized. :func:`check_leaf` is called by
:func:`jaxcompress.export.load` on every leaf it reads and by
:func:`jaxcompress.export.save` on every leaf it writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf
from jaxcompress.export._bitpack import BitPacked, unpack_codes
from jaxcompress.export._codebook import CodebookArray, index_bits
from jaxcompress.export._factorized import ConvFactorized, Factorized, factorize_conv
from jaxcompress.export._huffman import MAX_BLOCK, MAX_CONSTANT_CODES, MAX_PAIR_BITS, HuffmanArray
from jaxcompress.export._masked import MaskedArray
from jaxcompress.export._outlier import OutlierArray
from jaxcompress.export._qarray import QArray
from jaxcompress.export._sliced import SlicedArray
from jaxcompress.export._sparse import SparseArray
from jaxcompress.export._structured import (
  CirculantArray,
  DisplacementArray,
  HashedArray,
  TiedArray,
  ToeplitzArray,
  ldr_size,
  matrix_shape,
)


class InconsistentLeafError(ValueError):
  """A compressed leaf's static fields do not match the arrays it holds."""


def known_dtype(name: Any) -> np.dtype | None:
  """The dtype called ``name`` (NumPy's or one of JAX's extra ones, ``'bfloat16'``), or ``None``.

  Args:
    name: a dtype name as :func:`jaxcompress.export.save` writes it (``dtype.name``).

  Returns:
    The dtype, when ``name`` is a string naming one canonically; ``None`` otherwise.
  """
  if not isinstance(name, str):
    return None
  try:
    dtype = np.dtype(jnp.dtype(name))
  except (TypeError, ValueError):
    return None
  return dtype if dtype.name == name and kind(dtype) != "" else None


def kind(dtype: Any) -> str:
  """NumPy's one-letter kind of a dtype, also for JAX's extra dtypes.

  Args:
    dtype: a NumPy or JAX dtype (``bfloat16``, ``float8_*`` and ``int4``, which NumPy calls
      ``'V'``, included).

  Returns:
    ``'b'``, ``'i'``, ``'u'``, ``'f'`` or ``'c'``; ``''`` for anything else (strings, objects).
  """
  for letter, family in (("b", jnp.bool_), ("u", jnp.unsignedinteger), ("i", jnp.signedinteger)):
    if jnp.issubdtype(dtype, family):
      return letter
  for letter, family in (("f", jnp.floating), ("c", jnp.complexfloating)):
    if jnp.issubdtype(dtype, family):
      return letter
  return ""


def _where(where: str) -> str:
  return where.lstrip("/") or "<root>"


class _Leaf:
  """Raises :class:`InconsistentLeafError` naming one leaf's path, type and field."""

  def __init__(self, leaf: CompressedLeaf, where: str):
    self.leaf, self.kind, self.where = leaf, type(leaf).__name__, _where(where)

  def fail(self, field: str, message: str) -> InconsistentLeafError:
    return InconsistentLeafError(f"leaf {self.where!r} ({self.kind}) field {field!r}: {message}")

  def get(self, field: str) -> Any:
    return getattr(self.leaf, field)

  def integer(self, field: str, lo: int, hi: int | None = None) -> int:
    value = self.get(field)
    if type(value) is not int or value < lo or (hi is not None and value > hi):
      bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
      raise self.fail(field, f"{value!r} is not an integer in {bound}")
    return value

  def optional_integer(self, field: str, lo: int, hi: int | None = None) -> int | None:
    return None if self.get(field) is None else self.integer(field, lo, hi)

  def boolean(self, field: str) -> bool:
    value = self.get(field)
    if type(value) is not bool:
      raise self.fail(field, f"{value!r} is not a boolean")
    return value

  def dims(self, field: str) -> tuple[int, ...]:
    value = self.get(field)
    if not isinstance(value, tuple) or any(type(d) is not int or d < 0 for d in value):
      raise self.fail(field, f"{value!r} is not a shape (a list of non-negative integers)")
    return value

  def child(self, field: str, *, array: bool = True, leaf: tuple[type, ...] = (), optional: bool = False) -> Any:
    value = self.get(field)
    if value is None and optional:
      return None
    if array and _is_array(value):
      return value
    if leaf and isinstance(value, leaf):
      return value
    allowed = (["an array"] if array else []) + [t.__name__ for t in leaf] + (["None"] if optional else [])
    raise self.fail(field, f"holds {type(value).__name__}, expected {' or '.join(allowed)}")

  def bits_stream(self, field: str, *, bits: int | None = None) -> BitPacked | HuffmanArray:
    """A child that must be an unsigned ``BitPacked`` or its Huffman coding (at ``bits`` bits, when given)."""
    stream = self.child(field, array=False, leaf=(BitPacked, HuffmanArray))
    if isinstance(stream, HuffmanArray) and stream.dtype is not None:
      raise self.fail(field, f"holds Huffman-coded {stream.dtype} codes, expected a bit-packed stream's")
    if stream.signed:
      raise self.fail(field, "holds signed codes, expected unsigned")
    if bits is not None and stream.bits != bits:
      raise self.fail(field, f"holds {stream.bits}-bit codes, expected {bits}-bit")
    return stream


def _is_array(x: Any) -> bool:
  return not isinstance(x, CompressedLeaf) and hasattr(x, "shape") and hasattr(x, "dtype")


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(int(d) for d in x.shape)


def _unpack(stream: BitPacked | HuffmanArray) -> np.ndarray:
  """The codes of a (checked) ``BitPacked`` or ``HuffmanArray``, ``int32[size]``, with NumPy (as
  ``materialize`` reads them)."""
  if isinstance(stream, HuffmanArray):
    return stream.decode().reshape(-1).astype(np.int32)
  return unpack_codes(stream)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _count_set(stream: BitPacked | HuffmanArray) -> int:
  """How many codes of a 1-bit ``BitPacked`` are 1, in memory of the stream's size."""
  if isinstance(stream, HuffmanArray):
    return int(_unpack(stream).sum(dtype=np.int64))
  n = stream.size
  data = np.asarray(stream.data, np.uint8)
  full = int(_POPCOUNT[data[: n // 8]].sum(dtype=np.int64))
  rest = n % 8
  return full + (int(_POPCOUNT[data[n // 8] & ((1 << rest) - 1)]) if rest else 0)


def _check_bitpacked(c: _Leaf) -> None:
  bits = c.integer("bits", 1, 16)
  shape = c.dims("code_shape")
  c.boolean("signed")
  data = c.child("data")
  if np.dtype(data.dtype) != np.dtype(np.uint8) or len(data.shape) != 1:
    raise c.fail("data", f"is {np.dtype(data.dtype).name}{list(_shape(data))}, expected a 1-D uint8 stream")
  need = (math.prod(shape) * bits + 7) // 8
  if data.shape[0] != need:
    raise c.fail(
      "code_shape", f"{list(shape)} at bits={bits} needs {need} bytes, the stream 'data' holds {data.shape[0]}"
    )


def _check_huffman(c: _Leaf) -> None:
  bits = c.integer("bits", 1, 16)
  extended = c.get("table") is None  # an extended code: its model table leads 'data'
  block = c.integer("block", 1, MAX_BLOCK if extended else 2)
  if block == 2 and not extended and bits > MAX_PAIR_BITS:
    raise c.fail("block", f"2 pairs codes of at most {MAX_PAIR_BITS} bits, the stream's are {bits}-bit")
  c.dims("code_shape")
  signed = c.boolean("signed")
  name = c.get("dtype")
  if name is not None:
    dtype = known_dtype(name)
    if dtype is None or dtype.name not in ("int8", "uint8", "int16", "uint16"):
      raise c.fail("dtype", f"{name!r} is not None or the name of an 8/16-bit integer dtype")
    if 8 * dtype.itemsize != bits or (kind(dtype) == "i") != signed:
      raise c.fail("dtype", f"{name!r} does not hold {bits}-bit {'signed' if signed else 'unsigned'} codes")
  for field in ("data",) if extended else ("data", "table"):
    value = c.child(field)
    if np.dtype(value.dtype) != np.dtype(np.uint8) or len(value.shape) != 1:
      raise c.fail(field, f"is {np.dtype(value.dtype).name}{list(_shape(value))}, expected a 1-D uint8 stream")
  leaf = cast(HuffmanArray, c.leaf)
  try:
    if leaf.constant_count() > MAX_CONSTANT_CODES:
      raise c.fail("table", f"holds {leaf.constant_count()} zero-length codes, more than {MAX_CONSTANT_CODES}")
    leaf.decode()
  except ValueError as e:
    if isinstance(e, InconsistentLeafError):
      raise
    raise c.fail("table" if str(e).startswith("Huffman table") and not extended else "data", str(e)) from None


def _int_codes(c: _Leaf, field: str, bits: int, *, signed: bool | None = None) -> Any:
  """A child holding integer codes at ``bits`` bits: a native integer array, a ``BitPacked``, or
  the ``HuffmanArray`` of either."""
  codes = c.child(field, leaf=(BitPacked, HuffmanArray))
  if isinstance(codes, HuffmanArray) and codes.dtype is not None:
    if codes.bits < bits:
      raise c.fail(field, f"holds Huffman-coded {codes.dtype} codes, which cannot hold {bits}-bit codes")
    is_signed = codes.signed
  elif isinstance(codes, (BitPacked, HuffmanArray)):
    if codes.bits != bits:
      raise c.fail(field, f"holds {codes.bits}-bit codes, expected {bits}-bit (field 'bits')")
    is_signed = codes.signed
  else:
    dtype = np.dtype(codes.dtype)
    if kind(dtype) not in ("i", "u") or 8 * dtype.itemsize < bits:
      raise c.fail(field, f"holds {dtype.name} codes, which cannot hold {bits}-bit codes")
    is_signed = kind(dtype) == "i"
  if signed is not None and is_signed != signed:
    raise c.fail(field, f"holds {'signed' if is_signed else 'unsigned'} codes")
  return codes


def _check_qarray(c: _Leaf) -> None:
  bits = c.integer("bits", 1, 16)
  name = c.get("dtype")
  dtype = known_dtype(name)
  if dtype is None or kind(dtype) != "f":
    raise c.fail("dtype", f"{name!r} is not the name of a floating dtype")
  codes = c.child("codes", leaf=(BitPacked, SparseArray, HuffmanArray))
  if isinstance(codes, SparseArray):
    _int_codes(_Leaf(codes, f"{c.where}.codes"), "values", bits)
  else:
    _int_codes(c, "codes", bits)
  shape = tuple(codes.shape)
  if not shape and c.get("group_axis") is not None:
    raise c.fail("group_axis", f"{c.get('group_axis')!r}: per-group scales on 0-d codes")
  group_axis = c.optional_integer("group_axis", -len(shape), len(shape) - 1)
  group_size = c.optional_integer("group_size", 1)
  if (group_axis is None) != (group_size is None):
    raise c.fail("group_axis", f"{group_axis!r} with group_size {group_size!r}: give both or neither")
  blocked = shape
  if group_axis is not None and group_size is not None:
    a = group_axis % len(shape)
    if shape[a] % group_size:
      raise c.fail("group_size", f"{group_size} does not divide axis {a} of shape {list(shape)}")
    blocked = (*shape[:a], shape[a] // group_size, group_size, *shape[a + 1 :])
  for field, kinds in (("scale", ("f", "i", "u")), ("zero_point", ("i", "u"))):
    value = c.child(field, optional=field == "zero_point")
    if value is None:
      continue
    if kind(value.dtype) not in kinds:
      raise c.fail(field, f"has dtype {np.dtype(value.dtype).name}")
    try:
      ok = np.broadcast_shapes(_shape(value), blocked) == blocked
    except ValueError:
      ok = False
    if not ok:
      raise c.fail(field, f"of shape {list(_shape(value))} does not broadcast to the codes' {list(blocked)}")


def _check_sparse(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  size = math.prod(shape)
  fmt = c.get("format")
  if fmt not in ("bitmask", "relative"):
    raise c.fail("format", f"{fmt!r} is not 'bitmask' or 'relative'")
  values = c.child("values", leaf=(BitPacked, HuffmanArray))
  if len(values.shape) != 1:
    raise c.fail("values", f"has shape {list(values.shape)}, expected 1-D")
  stored = int(values.shape[0])
  if stored > size:
    raise c.fail("dense_shape", f"{list(shape)} has {size} elements, fewer than the {stored} stored values")
  if fmt == "bitmask":
    positions = c.bits_stream("positions", bits=1)
    if positions.code_shape != (size,):
      raise c.fail("dense_shape", f"{list(shape)} has {size} elements, the 1-bit mask 'positions' {positions.size}")
    kept = _count_set(positions)
    if kept != stored:
      raise c.fail("positions", f"the mask keeps {kept} positions for {stored} stored values")
    return
  positions = c.bits_stream("positions")
  if len(positions.code_shape) != 1:
    raise c.fail("positions", f"has shape {list(positions.code_shape)}, expected 1-D")
  codes = _unpack(positions)
  skip = (1 << positions.bits) - 1
  entries = codes != skip
  if int(entries.sum()) != stored:
    raise c.fail("positions", f"the gap codes address {int(entries.sum())} entries for {stored} stored values")
  end = int(np.where(entries, codes + 1, skip).sum(dtype=np.int64))  # positions the stream covers
  if end > size:
    raise c.fail("dense_shape", f"{list(shape)} has {size} elements, the positions cover {end}")
  if size - end >= skip:
    raise c.fail("dense_shape", f"{list(shape)} has {size} elements, the positions cover only {end}")


def _check_codebook(c: _Leaf) -> None:
  codebook = c.child("codebook")
  indices = c.child("indices", array=True, leaf=(BitPacked, SparseArray, HuffmanArray))
  shape = tuple(indices.shape)
  cb_shape = _shape(codebook)
  if kind(codebook.dtype) not in ("f", "i", "u"):
    raise c.fail("codebook", f"has dtype {np.dtype(codebook.dtype).name}")
  if not shape and c.get("axis") is not None:
    raise c.fail("axis", f"{c.get('axis')!r} on 0-d indices")
  axis = c.optional_integer("axis", -len(shape), len(shape) - 1)
  if (axis is None) != (len(cb_shape) == 1):
    raise c.fail("axis", f"{axis!r} with a codebook of shape {list(cb_shape)} (1-D without an axis, 2-D with one)")
  if axis is None and (len(cb_shape) != 1 or cb_shape[0] == 0):
    raise c.fail("codebook", f"of shape {list(cb_shape)} is not a non-empty 1-D codebook")
  if axis is not None and (len(cb_shape) != 2 or cb_shape[0] != shape[axis] or cb_shape[1] == 0):
    raise c.fail("codebook", f"of shape {list(cb_shape)} is not ({shape[axis]}, k >= 1) for axis {axis}")
  dtype = c.get("dtype")
  if dtype is not None and (kind(known_dtype(dtype)) != "f" or known_dtype(dtype) == np.dtype(codebook.dtype)):
    raise c.fail("dtype", f"{dtype!r} is not a floating dtype other than the codebook's")
  bits = index_bits(cb_shape[-1])
  if isinstance(indices, SparseArray):
    _int_codes(_Leaf(indices, f"{c.where}.indices"), "values", bits, signed=False)
  else:
    _int_codes(c, "indices", bits, signed=False)


def _check_sliced(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  values = c.child("values", leaf=(CompressedLeaf,))
  kept = c.bits_stream("kept", bits=1)
  if kept.code_shape != (sum(shape),):
    raise c.fail("dense_shape", f"{list(shape)} needs {sum(shape)} kept flags, 'kept' holds {kept.size}")
  inner = tuple(values.shape)
  if len(inner) != len(shape):
    raise c.fail("dense_shape", f"{list(shape)} has {len(shape)} axes, the values {list(inner)}")
  flags = _unpack(kept)
  start = 0
  for axis, full in enumerate(shape):
    count = int(flags[start : start + full].sum())
    start += full
    if count != inner[axis]:
      raise c.fail("kept", f"axis {axis} keeps {count} positions, the values have {inner[axis]}")


def _check_masked(c: _Leaf) -> None:
  inner = c.child("inner", leaf=(CompressedLeaf,))
  keep = c.bits_stream("keep", bits=1)
  if keep.size != math.prod(inner.shape):
    raise c.fail("keep", f"the mask has {keep.size} elements, the inner leaf's shape {list(inner.shape)}")


def _check_outlier(c: _Leaf) -> None:
  outliers = c.child("outliers", array=False, leaf=(SparseArray,))
  base = c.child("base", leaf=(CompressedLeaf,))
  if tuple(base.shape) != tuple(outliers.shape):
    raise c.fail("base", f"of shape {list(base.shape)} differs from the outliers' {list(outliers.shape)}")
  if not _is_array(outliers.values) or kind(outliers.values.dtype) != "f":
    raise c.fail("outliers", f"holds {type(outliers.values).__name__} values, expected a float array")


def _check_factorized(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  u = tuple(c.child("u", leaf=(CompressedLeaf,)).shape)
  v = tuple(c.child("v", leaf=(CompressedLeaf,)).shape)
  if len(u) != 2 or len(v) != 2 or u[1] != v[0]:
    raise c.fail("u", f"factors {list(u)} @ {list(v)} do not multiply")
  if u[0] * v[1] != math.prod(shape):
    raise c.fail("dense_shape", f"{list(shape)} is not the size of the product {u[0]}x{v[1]}")


def _values_shape(c: _Leaf, field: str) -> tuple[int, ...]:
  return tuple(c.child(field, leaf=(CompressedLeaf,)).shape)


def _check_hashed(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  c.boolean("signed")
  values = _values_shape(c, "values")
  if len(values) != 1 or not 1 <= values[0] <= max(math.prod(shape), 1):
    raise c.fail("values", f"shape {list(values)} is not K buckets with 1 <= K <= {math.prod(shape)} weights")
  seed = c.child("seed")
  if tuple(seed.shape) != () or kind(seed.dtype) not in ("u", "i"):
    raise c.fail("seed", f"{seed.dtype}{list(seed.shape)} is not an integer scalar")


def _check_circulant(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  vectors = _values_shape(c, "vectors")
  m, n = matrix_shape(shape) if shape else (0, 0)
  if len(vectors) != 3 or (vectors[0] * vectors[2], vectors[1] * vectors[2]) != (m, n):
    raise c.fail("dense_shape", f"{list(shape)} (a {m} x {n} matrix) is not tiled by vectors {list(vectors)}")


def _check_toeplitz(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  diagonals = _values_shape(c, "diagonals")
  m, n = matrix_shape(shape) if shape else (0, 0)
  if diagonals != (m + n - 1,):
    raise c.fail(
      "dense_shape", f"{list(shape)} (a {m} x {n} matrix) needs {m + n - 1} diagonals, got {list(diagonals)}"
    )


def _check_displacement(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  g, h = _values_shape(c, "g"), _values_shape(c, "h")
  size = ldr_size(shape) if len(shape) >= 2 else 0
  if len(g) != 2 or g != h or g[1] != size:
    raise c.fail("dense_shape", f"{list(shape)} needs generators of shape [r, {size}], got g {list(g)} and h {list(h)}")


def _check_tied(c: _Leaf) -> None:
  c.child("values", leaf=(CompressedLeaf,))
  c.boolean("primary")
  if not isinstance(c.get("source"), str):
    raise c.fail("source", f"{c.get('source')!r} is not a path")


def _check_conv_factorized(c: _Leaf) -> None:
  shape = c.dims("dense_shape")
  if c.get("kind") not in ("spatial_svd", "tucker2", "cp"):
    raise c.fail("kind", f"{c.get('kind')!r} is not 'spatial_svd', 'tucker2' or 'cp'")
  factors = c.get("factors")
  if not isinstance(factors, tuple) or not all(_is_array(f) or isinstance(f, CompressedLeaf) for f in factors):
    raise c.fail("factors", "is not a tuple of arrays or compressed leaves")
  try:  # shapes only (jax.eval_shape): nothing is allocated
    factorize_conv(c.get("kind"), factors, shape)
  except ValueError as e:
    raise c.fail("dense_shape", str(e)) from None


_CHECKS: dict[type, Callable[[_Leaf], None]] = {
  ConvFactorized: _check_conv_factorized,
  HashedArray: _check_hashed,
  CirculantArray: _check_circulant,
  ToeplitzArray: _check_toeplitz,
  DisplacementArray: _check_displacement,
  TiedArray: _check_tied,
  BitPacked: _check_bitpacked,
  QArray: _check_qarray,
  SparseArray: _check_sparse,
  CodebookArray: _check_codebook,
  SlicedArray: _check_sliced,
  MaskedArray: _check_masked,
  OutlierArray: _check_outlier,
  Factorized: _check_factorized,
  HuffmanArray: _check_huffman,
}


def check_leaf(leaf: CompressedLeaf, where: str) -> None:
  """Checks one compressed leaf's static fields against the arrays it holds.

  The leaves it holds must have been checked already (callers go bottom-up).

  Args:
    leaf: a compressed leaf of one of the export types.
    where: its path in the tree, for the message.

  Raises:
    InconsistentLeafError: naming the path, the leaf type and the field, if a field has
      the wrong type or range, or does not match the sizes of the arrays (a shape whose
      product differs from the stored element count, bits out of 1..16 or differing
      from the stream's, an unknown dtype, positions outside the dense array).
    TypeError: if ``leaf`` is not one of the export types.
  """
  check = _CHECKS.get(type(leaf))
  if check is None:
    raise TypeError(f"no consistency check for {type(leaf).__name__} at {_where(where)!r}")
  check(_Leaf(leaf, where))
