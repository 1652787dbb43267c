"""Saving and loading packed trees: safetensors for the arrays, JSON for the structure.

A file is one safetensors file. :func:`save` writes format version 5 (compact) by default,
or 4 (for deployment); :func:`load` and :func:`open_file` read versions 2, 3, 4 and 5. Any
version may carry ``extras`` (serving parameters), JSON in the metadata entry
``'jaxcompress.extras'``, under the file's checksum.

*Format 4* (``save(..., version=4)``; the layout is documented in ``docs/FILE_FORMAT.md``):
one safetensors tensor per distinct array, named by its leaf's path (``'params/Dense_0/bias'``)
and, inside a compressed leaf, ``.field`` per level (``'params/Dense_0/kernel.codes'``; a
bit-packed stream is named for the field holding it). ``'jaxcompress'`` is JSON ``{"version":
4, "arrays": {name: [dtype code, shape, sha256]}, "tree": node}`` with format 3's nodes, an
array referenced by its tensor name; ``'jaxcompress.tensors'`` says in one line per tensor what
it is (``"QArray(bits=8,...).codes: int8[64,32]"``); ``'jaxcompress.sha256'`` is format 2's
header digest. :func:`open_file` checks the header digest and every node and array entry at
open, then reads only the tensors of the leaves asked for, each checked against its SHA-256,
each leaf against its arrays.

*Format 5* (the default; ``docs/FILE_FORMAT.md``): format 3's document with each array's
``[dtype, shape]`` entry inline at its first use (a later use: the entry's index), deflated raw
with the preset dictionary ``_ZDICT5``; one ``U8`` tensor ``'data'`` holds the SHA-256 of
format 3's canonical header text followed by the rest of the data tensor (32 raw bytes), the
document's length (LEB128), the document, then every array's bytes. The metadata holds only
``'jaxcompress'``, ``{"version":5}`` (and ``extras``). About 160 B smaller than format 3 for a
LeNet-5 file: what a byte count of a model of a few kilobytes needs.

*Format 3* (compact: a small model's file is mostly payload). One ``U8`` tensor ``'data'``
holds the tree document, zlib-compressed, then every array's bytes end to end (row-major,
little-endian, no padding). The metadata holds ``'jaxcompress'``, JSON ``{"version": 3,
"header": n, "dict": 1}`` (the compressed document's length; ``dict`` 1: compressed with the
preset dictionary ``_ZDICT`` of the document's own vocabulary, which takes about 30% (~100 B)
off a small model's header; files without ``dict`` were compressed without one and still
load), and ``'jaxcompress.sha256'``, the SHA-256 of
the canonical header text (as :func:`header_digest`) followed by the data tensor's bytes: one
digest over everything in the file.

The document is compact JSON ``{"arrays": [[dtype, shape], ...], "tree": node}``. ``dtype`` is
a short code (``'f4'``, ``'i1'``, ``'u1'``, ``'b1'``, ...; any other dtype by its name,
``'bfloat16'``); the arrays follow the document in this order, so their offsets follow from
their sizes. A ``node`` is ``null``, an integer (the index of an array; a shared array is
stored once and referenced twice), a JSON object (a dict with string keys), ``["d", keys,
items]`` (a dict with integer keys), ``["l", *items]`` / ``["t", *items]`` (list, tuple), or
``[code, [static fields...], *array fields]`` for a compressed leaf, its static fields and
array fields in the leaf type's declared order; ``code`` is one capital letter per leaf type
(``_LEAF_CODES``).

:func:`load` checks, in order and before materializing anything: the digest over header and
data, that the document inflates to at most 64 MiB, that the arrays' sizes add up to the data,
that every node is well formed and every array is used, then each compressed leaf's fields
against its arrays (``jaxcompress.export._checks``).

*Format 2* (``save(..., version=2)``; one safetensors tensor per array, named by its path, for
tools that read tensors by name). ``'jaxcompress'`` is JSON ``{"version": 2, "tree": ...}``
with dicts per node; each array's entry has its ``key``, logical ``dtype`` and ``shape`` and
the SHA-256 of its bytes, and ``'jaxcompress.sha256'`` is the SHA-256 of a canonical
serialization (sorted-key compact JSON, see :func:`header_digest`) of every other metadata
entry and of the safetensors tensor table. :func:`load` checks the header digest (before
reading any array), each array's dtype and shape against the tensor table, each array's bytes
against its digest, then each compressed leaf.

In both, a file whose checksum was recomputed after an edit still cannot describe a dense
array its stored arrays do not account for; any failure is a :class:`CorruptFileError` naming
the file, and for a leaf its path and field.

Writes are atomic and leave no litter; see :func:`save`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import zlib
from collections.abc import Callable, Generator, Mapping
from typing import Any, cast

import numpy as np
import safetensors
import safetensors.numpy

from jaxcompress.export._base import CompressedLeaf
from jaxcompress.export._bitpack import BitPacked
from jaxcompress.export._checks import InconsistentLeafError, check_leaf, known_dtype
from jaxcompress.export._codebook import CodebookArray
from jaxcompress.export._factorized import ConvFactorized, Factorized
from jaxcompress.export._huffman import HuffmanArray
from jaxcompress.export._masked import MaskedArray
from jaxcompress.export._outlier import OutlierArray
from jaxcompress.export._qarray import QArray
from jaxcompress.export._sliced import SlicedArray
from jaxcompress.export._sparse import SparseArray
from jaxcompress.export._structured import CirculantArray, DisplacementArray, HashedArray, TiedArray, ToeplitzArray

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so no sweeping of stale temporaries
  fcntl = None

FORMAT_VERSION = 5
READ_VERSIONS = (2, 3, 4, 5)
DIGEST_KEY = "jaxcompress.sha256"
EXTRAS_KEY = "jaxcompress.extras"
TEMP_SUFFIX = ".jaxcompress-tmp"
# NumPy dtype name -> safetensors dtype, for the dtypes safetensors' NumPy reader understands;
# others (bfloat16, float8, int4, ...) travel as raw uint8 bytes with their dtype in the header
_SAFETENSORS_DTYPES = {
  "bool": "BOOL",
  "uint8": "U8",
  "int8": "I8",
  "uint16": "U16",
  "int16": "I16",
  "uint32": "U32",
  "int32": "I32",
  "uint64": "U64",
  "int64": "I64",
  "float16": "F16",
  "float32": "F32",
  "float64": "F64",
}
_LEAF_TYPES: dict[str, type[CompressedLeaf]] = {
  cls.__name__: cls
  for cls in (
    BitPacked,
    QArray,
    SparseArray,
    CodebookArray,
    Factorized,
    ConvFactorized,
    SlicedArray,
    MaskedArray,
    HashedArray,
    CirculantArray,
    ToeplitzArray,
    TiedArray,
    DisplacementArray,
    HuffmanArray,
    OutlierArray,
  )
}
# every leaf type's static fields (its pytree meta fields) that formats 3, 4 and 5 store by position,
# in this order: fixed forever, files refer to it (a static field added from now on goes in
# _NAMED_META); the other dataclass fields hold arrays or leaves
_POSITIONAL_META = {
  "BitPacked": ("bits", "code_shape", "signed"),
  "QArray": ("bits", "dtype", "group_axis", "group_size"),
  "SparseArray": ("dense_shape", "format"),
  "CodebookArray": ("axis", "dtype"),
  "Factorized": ("dense_shape",),
  "ConvFactorized": ("kind", "dense_shape"),
  "SlicedArray": ("dense_shape",),
  "MaskedArray": (),
  "HashedArray": ("dense_shape", "signed"),
  "CirculantArray": ("dense_shape",),
  "ToeplitzArray": ("dense_shape",),
  "TiedArray": ("source", "primary"),
  "HuffmanArray": ("bits", "code_shape", "signed", "dtype", "block"),
  "OutlierArray": (),
  "DisplacementArray": ("dense_shape",),
}
# positional static fields added after files were written without them: the last of their type's
# positional fields, stored only when they differ from this default and read as it when absent (so
# older files load, and files whose leaves keep the default are byte for byte as before). Fixed too:
# with a second one, a file leaving the first out would shift the second into its place.
_OPTIONAL_META: dict[str, dict[str, Any]] = {"HuffmanArray": {"block": 1}, "CodebookArray": {"dtype": None}}
assert all(_POSITIONAL_META[k][-len(v) :] == tuple(v) for k, v in _OPTIONAL_META.items())
# static fields added to a leaf type from now on, with their defaults: stored by name (formats 3-5:
# one JSON object ending the static list; format 2: in its "meta" object like every field) and only
# when they differ from the default, read as it when absent, so files written before they existed
# load, and files whose leaves keep the defaults are byte for byte as without them
_NAMED_META: dict[str, dict[str, Any]] = {}
# every leaf type's static fields: the positional ones, then the named ones
_META_FIELDS = {k: v + tuple(_NAMED_META.get(k, ())) for k, v in _POSITIONAL_META.items()}


def _defaults(kind: str) -> dict[str, Any]:
  """The static fields of ``kind`` a file may leave out, with the values they read as."""
  return {**_OPTIONAL_META.get(kind, {}), **_NAMED_META.get(kind, {})}


def _stored_meta(kind: str, node: Any) -> dict[str, Any]:
  """A leaf's static fields as a file stores them (optional and named ones at their default left out)."""
  optional = _defaults(kind)
  meta = {f: _meta_value(getattr(node, f)) for f in _META_FIELDS[kind]}
  return {f: v for f, v in meta.items() if not (f in optional and v == _meta_value(optional[f]))}


_WRITE_CHUNK = 1 << 24


class CorruptFileError(ValueError):
  """A file is truncated, corrupted, inconsistent, or not a jaxcompress file."""


def _digest(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data).hexdigest()


def header_digest(metadata: Mapping[str, str], tensors: Mapping[str, tuple[str, list[int]]]) -> str:
  """The digest of a file's header, as stored under ``'jaxcompress.sha256'``.

  Args:
    metadata: the safetensors metadata entries (the digest's own entry is left out).
    tensors: for each tensor of the file, its safetensors dtype (``'F32'``) and shape.

  Returns:
    The hex SHA-256 of the compact, sorted-key JSON of
    ``{"metadata": metadata, "tensors": {name: [dtype, shape]}}``.
  """
  body = {
    "metadata": {k: v for k, v in metadata.items() if k != DIGEST_KEY},
    "tensors": {k: [d, list(s)] for k, (d, s) in tensors.items()},
  }
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
  return hashlib.sha256(text.encode("ascii")).hexdigest()


def _meta_value(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def _encode(node: Any, name: str, arrays: dict[str, np.ndarray], seen: dict[Any, str]) -> Any:
  if node is None:
    return {"kind": "none"}
  if hasattr(node, "get_value") and not isinstance(node, (CompressedLeaf, np.ndarray)):
    node = node.get_value()  # a Flax NNX Variable: save what it holds
  kind = type(node).__name__
  if kind in _LEAF_TYPES and type(node) is _LEAF_TYPES[kind]:
    meta_names = _META_FIELDS[kind]
    meta = _stored_meta(kind, node)
    fields = {
      f.name: _encode(getattr(node, f.name), f"{name}.{f.name}", arrays, seen)
      for f in dataclasses.fields(cast(Any, node))
      if f.name not in meta_names
    }
    try:
      check_leaf(node, name)
    except InconsistentLeafError as e:
      raise ValueError(f"cannot save an inconsistent leaf: {e}") from None
    return {"kind": kind, "meta": meta, "fields": fields}
  if isinstance(node, Mapping):
    for k in node:
      if not isinstance(k, (str, int)):
        raise TypeError(f"cannot save key {k!r} of type {type(k).__name__} at {name!r}")
    return {
      "kind": "dict",
      "keys": [[type(k).__name__, k] for k in node],
      "items": [_encode(v, f"{name}/{k}", arrays, seen) for k, v in node.items()],
    }
  if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
    kind = "list" if isinstance(node, list) else "tuple"
    return {"kind": kind, "items": [_encode(v, f"{name}/{i}", arrays, seen) for i, v in enumerate(node)]}
  if hasattr(node, "shape") and hasattr(node, "dtype"):
    array = np.asarray(node, order="C")  # (ascontiguousarray would turn a scalar into 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("="))  # safetensors is little-endian
    if known_dtype(array.dtype.name) is None:
      raise TypeError(f"cannot save an array of dtype {array.dtype} at {name!r}")
    digest = _digest(array)
    spec = {"kind": "array", "key": "", "dtype": array.dtype.name, "shape": list(array.shape), "sha256": digest}
    twin = seen.get((digest, array.dtype.name, array.shape))
    if twin is not None:  # the same array again (a weight shared by several layers): stored once
      return {**spec, "key": twin}
    key = name.lstrip("/") or "array"
    if key in arrays:  # paths can collide ({'a/b': x, 'a': {'b': y}}): number the later one
      key = f"{key}#{len(arrays)}"
    seen[(digest, array.dtype.name, array.shape)] = key
    spec["key"] = key
    if array.dtype.name not in _SAFETENSORS_DTYPES:  # bfloat16, float8, int4 ...: raw bytes
      array = array.reshape(-1).view(np.uint8)
    arrays[key] = array
    return spec
  raise TypeError(
    f"cannot save {type(node).__name__} at {name!r}: save trees of dicts, lists, tuples, arrays and compressed leaves"
  )


def _where(name: str) -> str:
  return name.lstrip("/") or "<root>"


def _check_arrays(
  spec: Any, name: str, table: Mapping[str, tuple[str, list[int]]], seen: dict[str, Any], digests: bool = True
) -> None:
  """Checks every array entry of the tree against the tensor table, before reading any data."""
  if not isinstance(spec, dict):
    raise CorruptFileError(f"node {_where(name)!r} is {type(spec).__name__}, not an object")
  kind = spec.get("kind")
  if kind == "array":
    key, dtype_name, shape = spec.get("key"), spec.get("dtype"), spec.get("shape")
    where = f"array {_where(name)!r}"
    if not isinstance(key, str) or key not in table:
      raise CorruptFileError(f"{where} field 'key': {key!r} is not a tensor of the file")
    entry = (dtype_name, repr(shape), spec.get("sha256"))
    if key in seen and seen[key] != entry:  # a shared array is referenced again, identically
      raise CorruptFileError(
        f"{where} field 'key': tensor {key!r} is used twice, with different dtype, shape or digest"
      )
    seen[key] = entry
    dtype = known_dtype(dtype_name)
    if dtype is None:
      raise CorruptFileError(f"{where} field 'dtype': {dtype_name!r} is not a known dtype name")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
      raise CorruptFileError(f"{where} field 'shape': {shape!r} is not a list of non-negative integers")
    if digests and not isinstance(spec.get("sha256"), str):
      raise CorruptFileError(f"{where} field 'sha256': {spec.get('sha256')!r} is not a digest")
    if dtype.name in _SAFETENSORS_DTYPES:
      expected = (_SAFETENSORS_DTYPES[dtype.name], shape)
    else:
      expected = ("U8", [math.prod(shape) * dtype.itemsize])
    stored = table[key]
    if stored[0] != expected[0]:
      raise CorruptFileError(f"{where} field 'dtype': {dtype_name!r} but tensor {key!r} is stored as {stored[0]}")
    if list(stored[1]) != expected[1]:
      raise CorruptFileError(f"{where} field 'shape': {shape} but tensor {key!r} is stored with shape {stored[1]}")
    return
  if kind == "dict":
    keys, items = spec.get("keys"), spec.get("items")
    if not isinstance(keys, list) or not isinstance(items, list) or len(keys) != len(items):
      raise CorruptFileError(f"dict {_where(name)!r}: malformed keys/items")
    for pair, item in zip(keys, items):
      if not (isinstance(pair, list) and len(pair) == 2 and (pair[0], type(pair[1])) in (("str", str), ("int", int))):
        raise CorruptFileError(f"dict {_where(name)!r}: malformed key {pair!r}")
      _check_arrays(item, f"{name}/{pair[1]}", table, seen, digests)
    return
  if kind in ("list", "tuple"):
    items = spec.get("items")
    if not isinstance(items, list):
      raise CorruptFileError(f"{kind} {_where(name)!r}: malformed items")
    for i, item in enumerate(items):
      _check_arrays(item, f"{name}/{i}", table, seen, digests)
    return
  if kind in _LEAF_TYPES:
    meta, fields = spec.get("meta"), spec.get("fields")
    meta_names = set(_META_FIELDS[kind])
    data_names = {f.name for f in dataclasses.fields(cast(Any, _LEAF_TYPES[kind]))} - meta_names
    if not isinstance(meta, dict) or not meta_names - set(_defaults(kind)) <= set(meta) <= meta_names:
      got = sorted(meta) if isinstance(meta, dict) else meta
      raise CorruptFileError(f"leaf {_where(name)!r} ({kind}): static fields {got!r}, expected {sorted(meta_names)}")
    if not isinstance(fields, dict) or set(fields) != data_names:
      got = sorted(fields) if isinstance(fields, dict) else fields
      raise CorruptFileError(f"leaf {_where(name)!r} ({kind}): array fields {got!r}, expected {sorted(data_names)}")
    for f, item in fields.items():
      _check_arrays(item, f"{name}.{f}", table, seen, digests)
    return
  if kind != "none":
    raise CorruptFileError(f"node {_where(name)!r} has unknown kind {kind!r}")


def _decode(spec: Any, name: str, read: Any, keep: Callable[[str], bool] | None = None) -> Any:
  """The tree of ``spec``, its arrays from ``read(key)``; a leaf whose path ``keep`` refuses is ``None``, unread."""
  kind = spec["kind"]
  if kind == "none":
    return None
  if keep is not None and kind not in ("dict", "list", "tuple") and not keep(_where(name)):
    return None
  if kind == "array":
    array = read(spec["key"])
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      array = array.view(known_dtype(spec["dtype"])).reshape(spec["shape"])
    if spec.get("sha256") is not None and _digest(array) != spec["sha256"]:
      raise CorruptFileError(f"array {spec['key']!r} does not match its checksum: the file is corrupted")
    return array
  if kind == "dict":
    keys = [k for _, k in spec["keys"]]
    return {k: _decode(v, f"{name}/{k}", read, keep) for k, v in zip(keys, spec["items"])}
  if kind in ("list", "tuple"):
    items = [_decode(v, f"{name}/{i}", read, keep) for i, v in enumerate(spec["items"])]
    return items if kind == "list" else tuple(items)
  meta = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["meta"].items()}
  fields = {k: _decode(v, f"{name}.{k}", read) for k, v in spec["fields"].items()}
  leaf = _LEAF_TYPES[kind](**fields, **meta)
  try:
    check_leaf(leaf, name)
  except InconsistentLeafError as e:
    raise CorruptFileError(str(e)) from None
  return leaf


# --- format 3: the compact header ------------------------------------------------------

# one capital letter per leaf type (containers are the lowercase "d", "l", "t")
_LEAF_CODES = {
  "BitPacked": "B",
  "QArray": "Q",
  "SparseArray": "S",
  "CodebookArray": "C",
  "Factorized": "F",
  "ConvFactorized": "V",
  "SlicedArray": "L",
  "MaskedArray": "M",
  "HashedArray": "H",
  "CirculantArray": "R",
  "ToeplitzArray": "T",
  "TiedArray": "I",
  "HuffmanArray": "U",
  "OutlierArray": "O",
  "DisplacementArray": "D",
}
_LEAF_KINDS = {code: kind for kind, code in _LEAF_CODES.items()}
# a leaf type registered for format 2 but without a format-3 code could not be saved
assert set(_LEAF_CODES) == set(_META_FIELDS), set(_LEAF_CODES) ^ set(_META_FIELDS)
# NumPy dtype name -> its short code in format 3 (other dtypes go by their name)
_DTYPE_CODES = {
  "bool": "b1",
  "uint8": "u1",
  "int8": "i1",
  "uint16": "u2",
  "int16": "i2",
  "uint32": "u4",
  "int32": "i4",
  "uint64": "u8",
  "int64": "i8",
  "float16": "f2",
  "float32": "f4",
  "float64": "f8",
}
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_DATA_KEY = "data"


def _array_fields(kind: str) -> list[str]:
  meta = _META_FIELDS[kind]
  return [f.name for f in dataclasses.fields(cast(Any, _LEAF_TYPES[kind])) if f.name not in meta]


def _compact(spec: Any, arrays: Any, index: dict[str, int]) -> Any:
  """The format-3 node of a format-2 style ``spec``; array entries go to ``arrays`` in first use.

  With ``arrays`` a list (format 3) an array is referenced by its index; with a dict (format 4)
  by its tensor name, and ``arrays[name]`` is ``[dtype code, shape, sha256]``.
  """
  kind = spec["kind"]
  if kind == "none":
    return None
  if kind == "array":
    key = spec["key"]
    if isinstance(arrays, dict):
      arrays.setdefault(key, [_DTYPE_CODES.get(spec["dtype"], spec["dtype"]), list(spec["shape"]), spec["sha256"]])
      return key
    if key not in index:
      index[key] = len(arrays)
      arrays.append([_DTYPE_CODES.get(spec["dtype"], spec["dtype"]), list(spec["shape"])])
    return index[key]
  if kind == "dict":
    keys = [k for _, k in spec["keys"]]
    items = [_compact(v, arrays, index) for v in spec["items"]]
    if all(isinstance(k, str) for k in keys):
      return dict(zip(keys, items))
    return ["d", keys, items]
  if kind in ("list", "tuple"):
    return [kind[0], *(_compact(v, arrays, index) for v in spec["items"])]
  meta: list[Any] = [spec["meta"][f] for f in _POSITIONAL_META[kind] if f in spec["meta"]]  # optional ones are last
  named = {f: spec["meta"][f] for f in _NAMED_META.get(kind, ()) if f in spec["meta"]}
  if named:  # by name, after the positional ones (no positional value is a JSON object)
    meta.append(named)
  return [_LEAF_CODES[kind], meta, *(_compact(spec["fields"][f], arrays, index) for f in _array_fields(kind))]


def _expand(node: Any, name: str, arrays: Any) -> Any:
  """The format-2 style spec of a format-3 ``node`` (array keys are their indices), checked for form."""
  where = _where(name)
  if node is None:
    return {"kind": "none"}
  if isinstance(node, str) and isinstance(arrays, dict):  # format 4: a tensor name
    if node not in arrays:
      raise CorruptFileError(f"array {where!r}: {node!r} is not one of the file's arrays")
    dtype, shape, sha256 = arrays[node]
    return {"kind": "array", "key": node, "dtype": dtype, "shape": shape, "sha256": sha256}
  if type(node) is int and isinstance(arrays, list):
    if not 0 <= node < len(arrays):
      raise CorruptFileError(f"array {where!r}: index {node} is not one of the file's {len(arrays)} arrays")
    dtype, shape = arrays[node]
    return {"kind": "array", "key": str(node), "dtype": dtype, "shape": shape}
  if isinstance(node, dict):
    return {
      "kind": "dict",
      "keys": [["str", k] for k in node],
      "items": [_expand(v, f"{name}/{k}", arrays) for k, v in node.items()],
    }
  if not isinstance(node, list) or not node or not isinstance(node[0], str):
    raise CorruptFileError(f"node {where!r} is malformed: {json.dumps(node)[:80]}")
  code, rest = node[0], node[1:]
  if code == "d":
    if len(rest) != 2 or not all(isinstance(r, list) for r in rest) or len(rest[0]) != len(rest[1]):
      raise CorruptFileError(f"dict {where!r}: malformed keys/items")
    keys, items = rest
    if any(type(k) not in (int, str) for k in keys) or len(set(map(repr, keys))) != len(keys):
      raise CorruptFileError(f"dict {where!r}: malformed keys {keys!r}")
    return {
      "kind": "dict",
      "keys": [[type(k).__name__, k] for k in keys],
      "items": [_expand(v, f"{name}/{k}", arrays) for k, v in zip(keys, items)],
    }
  if code in ("l", "t"):
    return {
      "kind": {"l": "list", "t": "tuple"}[code],
      "items": [_expand(v, f"{name}/{i}", arrays) for i, v in enumerate(rest)],
    }
  kind = _LEAF_KINDS.get(code)
  if kind is None:
    raise CorruptFileError(f"node {where!r} has unknown kind {code!r}")
  fields = _array_fields(kind)
  meta_names = _POSITIONAL_META[kind]
  least = len(meta_names) - len(_OPTIONAL_META.get(kind, ()))
  static = rest[0] if rest and isinstance(rest[0], list) else None
  named = static[-1] if static and isinstance(static[-1], dict) else {}
  positional = static[:-1] if static and isinstance(static[-1], dict) else static
  if len(rest) != 1 + len(fields) or positional is None or not least <= len(positional) <= len(meta_names):
    raise CorruptFileError(
      f"leaf {where!r} ({kind}): expected static fields {list(meta_names)} and array fields {fields}"
    )
  if static and isinstance(static[-1], dict) and (not named or not set(named) <= set(_NAMED_META.get(kind, ()))):
    raise CorruptFileError(
      f"leaf {where!r} ({kind}): named static fields {sorted(named)}, expected one or more of "
      f"{sorted(_NAMED_META.get(kind, ()))} (a file written by a newer version?)"
    )
  return {
    "kind": kind,
    "meta": {**dict(zip(meta_names, positional)), **named},
    "fields": {f: _expand(v, f"{name}.{f}", arrays) for f, v in zip(fields, rest[1:])},
  }


def _array_dtype(code: Any, i: int) -> np.dtype:
  name = None
  if isinstance(code, str):
    name = _DTYPE_NAMES.get(code, None if code in _DTYPE_CODES else code)  # the 12 short-coded ones go by code
  dtype = known_dtype(name)
  if dtype is None:
    raise CorruptFileError(f"array {i} field 'dtype': {code!r} is not a known dtype code")
  return dtype


def _layout(arrays: Any) -> list[tuple[np.dtype, list[int], int, int]]:
  """(dtype, shape, offset, bytes) of each format-3 array entry, checked for form."""
  if not isinstance(arrays, list):
    raise CorruptFileError("'arrays' is not a list")
  out, at = [], 0
  for i, entry in enumerate(arrays):
    if not (isinstance(entry, list) and len(entry) == 2):
      raise CorruptFileError(f"array {i}: malformed entry {entry!r}")
    code, shape = entry
    dtype = _array_dtype(code, i)
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
      raise CorruptFileError(f"array {i} field 'shape': {shape!r} is not a list of non-negative integers")
    size = math.prod(shape) * dtype.itemsize
    out.append((dtype, shape, at, size))
    at += size
  return out


def file_digest(metadata: Mapping[str, str], tensors: Mapping[str, tuple[str, list[int]]], data: bytes) -> str:
  """The digest of a format-3 file, as stored under ``'jaxcompress.sha256'``.

  Args:
    metadata: the safetensors metadata entries (the digest's own entry is left out).
    tensors: the file's tensor table (dtype and shape per tensor).
    data: the bytes of the data tensor.

  Returns:
    The hex SHA-256 of :func:`header_digest`'s canonical text followed by ``data``.
  """
  body = {
    "metadata": {k: v for k, v in metadata.items() if k != DIGEST_KEY},
    "tensors": {k: [d, list(s)] for k, (d, s) in tensors.items()},
  }
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
  h = hashlib.sha256(text.encode("ascii"))
  h.update(data)
  return h.hexdigest()


_MAX_HEADER = 1 << 26  # bytes a format-3 header may inflate to (a zlib bomb is refused)
# zlib's preset dictionary for format 3's document ("dict": 1): the fragments a tree document is
# made of, the most common last (nearer, cheaper to refer to). Fixed forever: files refer to it.
_ZDICT = (
  '"embedding":{"layers":"attention":{"query":"key":"value":"output":"dense":"mlp":"norm":"scale":"weight":'
  '"conv":"linear":"block":"head":"classifier":"features":"Linear_0":"Conv_0":"Dense_0":"params":'
  '["V",["cp",[["F",[[["L",[[["M",[],["T",[[["R",[[["H",[[["I",["O",[],["d",["l",["t",'
  '["f2",[["f4",[["u2",[["i2",[["u4",[["i4",[["b1",[["i1",[["u1",['
  '["B",[1,[["B",[2,[["B",[3,[["B",[4,[["B",[5,[["B",[6,[["B",[8,[["U",[3,[["U",[4,[["U",[5,[["U",[6,['
  ',false,null],,true,null],,false],,true],"bitmask"],"relative"],["S",[[["C",[null],["C",[0],["C",[1],'
  '["Q",[4,"float32",null,null],["Q",[8,"float32",null,null],"kernel":["Q",[8,"float32",null,null],'
  '"bias":["Q",[8,"float32",null,null],,null]},"kernel":["C",[null],'
  '"conv1":{"conv2":{"fc1":{"fc2":{"fc3":{"bias":"kernel":'
  '],"tree":{{"arrays":[["f4",[1]],["f4",[4]],["f4",[8]],["f4",[16]],'
).encode("ascii")
_ZDICTS = {1: _ZDICT}


def _pack_v3(doc: Any, data: bytes, extras: str | None = None) -> bytes:
  """A format-3 file of the tree document ``doc`` (``arrays`` and ``tree``) and the arrays' bytes."""
  deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
  header = deflate.compress(json.dumps(doc, separators=(",", ":")).encode("utf-8")) + deflate.flush()
  blob = header + data
  metadata = {"jaxcompress": json.dumps({"version": 3, "header": len(header), "dict": 1}, separators=(",", ":"))}
  if extras is not None:
    metadata[EXTRAS_KEY] = extras
  payload = {_DATA_KEY: np.frombuffer(blob, np.uint8)}
  metadata[DIGEST_KEY] = file_digest(metadata, {_DATA_KEY: ("U8", [len(blob)])}, blob)
  return safetensors.numpy.save(payload, metadata=metadata)


def _unpack_v3(header_len: Any, blob: np.ndarray, dictionary: Any = None) -> tuple[Any, np.ndarray]:
  """(tree document, arrays' bytes) of a format-3 data tensor whose digest was checked; ``dictionary``
  is the metadata's ``dict`` (``None``: no preset dictionary)."""
  if type(header_len) is not int or not 0 < header_len <= blob.size:
    raise CorruptFileError(f"its header length {header_len!r} does not fit its {blob.size} data bytes")
  if dictionary is not None and (type(dictionary) is not int or dictionary not in _ZDICTS):
    raise CorruptFileError(f"its header names preset dictionary {dictionary!r}, expected one of {sorted(_ZDICTS)}")
  inflate = zlib.decompressobj(zdict=_ZDICTS[dictionary]) if dictionary is not None else zlib.decompressobj()
  try:
    text = inflate.decompress(blob[:header_len].tobytes(), _MAX_HEADER)
  except zlib.error as e:
    raise CorruptFileError(f"its header is not a zlib stream ({e})") from None
  if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
    raise CorruptFileError(f"its header is not one zlib stream of {header_len} bytes inflating to at most 64 MiB")
  return json.loads(text.decode("utf-8")), blob[header_len:]


def _tree_document(packed: Any) -> tuple[dict[str, Any], bytes]:
  """Format 3's (and 5's) tree document of ``packed`` and its arrays' bytes, in index order."""
  named: dict[str, np.ndarray] = {}
  spec = _encode(packed, "", named, {})
  arrays: list[Any] = []
  index: dict[str, int] = {}
  tree = _compact(spec, arrays, index)
  order = sorted(index, key=index.__getitem__)
  data = b"".join(np.ascontiguousarray(named[k]).reshape(-1).view(np.uint8).tobytes() for k in order)
  return {"arrays": arrays, "tree": tree}, data


def _save_v3(packed: Any, extras: str | None) -> bytes:
  return _pack_v3(*_tree_document(packed), extras)


def _read_v3(header: Any, metadata: Mapping[str, str], table: Mapping[str, tuple[str, list[int]]], read: Any) -> Any:
  """(spec, read) of a format-3 or format-5 file: its expanded, checked tree and a reader of its
  arrays by index."""
  version = header.get("version")
  if set(table) != {_DATA_KEY} or table[_DATA_KEY][0] != "U8" or len(table[_DATA_KEY][1]) != 1:
    got = {k: [d, list(s)] for k, (d, s) in table.items()}
    raise CorruptFileError(f"format {version} holds one U8 tensor {_DATA_KEY!r}, the file holds {got}")
  blob = np.asarray(read(_DATA_KEY)).reshape(-1)
  if version == 5:
    if (
      blob.size <= _DIGEST_BYTES
      or file_digest(metadata, table, blob[_DIGEST_BYTES:].tobytes()) != bytes(blob[:_DIGEST_BYTES]).hex()
    ):
      raise CorruptFileError("the file does not match its checksum: it is corrupted or was edited")
    doc, data = _unpack_v5(blob)
  else:
    if file_digest(metadata, table, blob.tobytes()) != metadata[DIGEST_KEY]:
      raise CorruptFileError("the file does not match its checksum: it is corrupted or was edited")
    doc, data = _unpack_v3(header.get("header"), blob, header.get("dict"))
  if not isinstance(doc, dict):
    raise CorruptFileError("its header is not a JSON object")
  layout = _layout(doc.get("arrays"))
  total = sum(size for *_, size in layout)
  if total != data.size:
    raise CorruptFileError(f"its arrays need {total} bytes, its data holds {data.size}")
  arrays = [[dtype.name, shape] for dtype, shape, _, _ in layout]
  spec = _expand(doc.get("tree"), "", arrays)
  synthetic = {}
  for i, (dtype, shape, _, size) in enumerate(layout):
    st = _SAFETENSORS_DTYPES.get(dtype.name)
    synthetic[str(i)] = (st, shape) if st else ("U8", [size])
  seen: dict[str, Any] = {}
  _check_arrays(spec, "", synthetic, seen, digests=False)
  if set(synthetic) != set(seen):
    raise CorruptFileError(f"holds arrays the tree does not use: {sorted(set(synthetic) - set(seen), key=int)}")

  def array(key: str) -> np.ndarray:
    dtype, shape, at, size = layout[int(key)]
    raw = data[at : at + size]
    if dtype == np.bool_ and raw.size and raw.max() > 1:
      raise CorruptFileError(f"array {key} is bool but holds a byte other than 0 or 1")
    return raw.copy().view(dtype).reshape(shape) if dtype.name in _SAFETENSORS_DTYPES else raw.copy()

  return spec, array


# --- format 5: format 3's document with its arrays inline, and a binary digest -----------

_V5_META = json.dumps({"version": 5}, separators=(",", ":"))
_DIGEST_BYTES = 32  # the raw SHA-256 at the start of a format-5 data tensor
# raw DEFLATE's preset dictionary for format 5's inline document: the fragments a tree is made
# of, the most common last. Fixed forever: format-5 files refer to it.
_ZDICT5 = (
  '"embedding":{"layers":"attention":{"query":"key":"value":"output":"dense":"mlp":"norm":"scale":"weight":'
  '"conv":"linear":"block":"head":"classifier":"features":"Linear_0":"Conv_0":"Dense_0":"params":'
  '["V",["cp",[["F",[[["L",[[["M",[],["T",[[["R",[[["H",[[["I",["O",[],["D",[[["d",["l",["t",'
  '["f2",[["u2",[["i2",[["u4",[["i4",[["b1",[["bfloat16",[["f4",[1]],["f4",[1]]],'
  '["B",[1,[["B",[2,[["B",[3,[["B",[4,[["B",[5,[["B",[6,[["B",[7,[["B",[8,['
  '["U",[2,[["U",[3,[["U",[4,[["U",[5,[["U",[6,[["U",[7,[,false,null,2],'
  ',true],["u1",[],false],["u1",[,false,null],["u1",[],["u1",[]]]]]},'
  '["Q",[4,"float32",null,null],["i1",[["Q",[8,"float32",null,null],["i1",[],["f4",[1]],null],'
  '"bitmask"],["B",[1,["C",[null,"float32"],["f4",[16]],["C",[null],["f4",[16]],'
  '"conv1":{"conv2":{"conv3":{"fc1":{"fc2":{"fc3":{"kernel":["f4",["bias":["f4",['
  '"relative"],["B",["S",[[,"relative"],["U",["kernel":["S",[["kernel":["C",[null],["f4",['
  '"bias":["Q",[8,"float32",null,null],["i1",['
).encode("ascii")
_MAX_VARINT = 5  # bytes of the document's length (LEB128: up to 2^35)


def _inline(node: Any, arrays: list[Any], emitted: list[int]) -> Any:
  """Format 3's ``tree`` with each array's first use replaced by its ``[dtype, shape]`` entry
  (arrays are numbered in first use, so the order is kept); a later use stays its index."""
  if type(node) is int:
    if node < emitted[0]:
      return node
    assert node == emitted[0], "format 3 numbers arrays in first use"
    emitted[0] += 1
    return arrays[node]
  if isinstance(node, dict):
    return {k: _inline(v, arrays, emitted) for k, v in node.items()}
  if isinstance(node, list):
    if node[0] == "d":
      return ["d", node[1], [_inline(v, arrays, emitted) for v in node[2]]]
    if node[0] in ("l", "t"):
      return [node[0], *(_inline(v, arrays, emitted) for v in node[1:])]
    return [node[0], node[1], *(_inline(v, arrays, emitted) for v in node[2:])]
  return node


def _outline(node: Any, name: str, arrays: list[Any]) -> Any:
  """The inverse of :func:`_inline`: format 3's ``tree``, the array entries appended to ``arrays``."""
  if node is None:
    return None
  if type(node) is int:
    if not 0 <= node < len(arrays):
      raise CorruptFileError(
        f"array {_where(name)!r}: index {node} refers to none of the {len(arrays)} arrays before it"
      )
    return node
  if isinstance(node, dict):
    return {k: _outline(v, f"{name}/{k}", arrays) for k, v in node.items()}
  if not isinstance(node, list) or not node or not isinstance(node[0], str):
    raise CorruptFileError(f"node {_where(name)!r} is malformed: {json.dumps(node)[:80]}")
  code = node[0]
  if code == "d":
    if len(node) != 3 or not isinstance(node[1], list) or not isinstance(node[2], list) or len(node[1]) != len(node[2]):
      raise CorruptFileError(f"dict {_where(name)!r}: malformed keys/items")
    return ["d", node[1], [_outline(v, f"{name}/{k}", arrays) for k, v in zip(node[1], node[2])]]
  if code in ("l", "t"):
    return [code, *(_outline(v, f"{name}/{i}", arrays) for i, v in enumerate(node[1:]))]
  if code in _LEAF_KINDS:
    if len(node) < 2:
      raise CorruptFileError(f"leaf {_where(name)!r}: malformed {json.dumps(node)[:80]}")
    fields = _array_fields(_LEAF_KINDS[code])
    named = [f"{name}.{fields[i]}" if i < len(fields) else f"{name}.{i}" for i in range(len(node) - 2)]
    return [code, node[1], *(_outline(v, where, arrays) for where, v in zip(named, node[2:]))]
  if len(node) != 2:
    raise CorruptFileError(f"array {_where(name)!r}: malformed entry {json.dumps(node)[:80]}")
  arrays.append(node)
  return len(arrays) - 1


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
    n >>= 7
    if not n:
      return bytes(out)


def _read_varint(blob: bytes) -> tuple[int, int]:
  """(value, bytes used) of the LEB128 number at the start of ``blob``."""
  value = 0
  for i, byte in enumerate(blob[:_MAX_VARINT]):
    value |= (byte & 0x7F) << (7 * i)
    if not byte & 0x80:
      return value, i + 1
  raise CorruptFileError("its header length is not a number of at most 5 bytes")


def _save_v5(packed: Any, extras: str | None) -> bytes:
  return _pack_v5(*_tree_document(packed), extras)


def _pack_v5(doc: Any, data: bytes, extras: str | None = None) -> bytes:
  """A format-5 file of format 3's tree document ``doc`` (``arrays`` and ``tree``) and the arrays' bytes."""
  deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT5)
  text = json.dumps(_inline(doc["tree"], doc["arrays"], [0]), separators=(",", ":")).encode("utf-8")
  document = deflate.compress(text) + deflate.flush()
  rest = _varint(len(document)) + document + data
  metadata = {"jaxcompress": _V5_META}
  if extras is not None:
    metadata[EXTRAS_KEY] = extras
  digest = bytes.fromhex(file_digest(metadata, {_DATA_KEY: ("U8", [_DIGEST_BYTES + len(rest)])}, rest))
  return safetensors.numpy.save({_DATA_KEY: np.frombuffer(digest + rest, np.uint8)}, metadata=metadata)


def _unpack_v5(blob: np.ndarray) -> tuple[Any, np.ndarray]:
  """(format 3's document, arrays' bytes) of a format-5 data tensor whose digest was checked."""
  rest = blob[_DIGEST_BYTES:]
  n, used = _read_varint(rest[:_MAX_VARINT].tobytes())
  if not 0 < n <= rest.size - used:
    raise CorruptFileError(f"its header length {n} does not fit its {rest.size - used} data bytes")
  inflate = zlib.decompressobj(-15, zdict=_ZDICT5)
  try:
    text = inflate.decompress(rest[used : used + n].tobytes(), _MAX_HEADER)
  except zlib.error as e:
    raise CorruptFileError(f"its header is not a DEFLATE stream ({e})") from None
  if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
    raise CorruptFileError(f"its header is not one DEFLATE stream of {n} bytes inflating to at most 64 MiB")
  arrays: list[Any] = []
  tree = _outline(json.loads(text.decode("utf-8")), "", arrays)
  return {"arrays": arrays, "tree": tree}, rest[used + n :]


# --- atomic, litter-free writes -------------------------------------------------------


def _lock(fd: int, *, wait: bool) -> bool:
  """An exclusive advisory lock on ``fd``; False when another open file holds one (``wait=False``)."""
  if fcntl is None:
    return True
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      return wait  # a filesystem without locks: write unlocked, never sweep
    raise
  return True


def _is_temp(name: str) -> bool:
  return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sweep_stale_temporaries(folder: str) -> list[str]:
  """Removes the temporary files of saves into ``folder`` that died before finishing.

  A save writes ``.<name>.<random>.jaxcompress-tmp`` and holds an exclusive ``flock`` on it
  until it is renamed into place. The kernel drops the lock when the writer exits in any
  way, SIGKILL included, so a temporary whose lock can be taken belongs to no live save:
  it is removed. Temporaries of saves in progress (in this or another process) are left
  alone. Without ``fcntl`` (Windows) or on a filesystem without locks nothing is removed.

  Args:
    folder: the folder to sweep.

  Returns:
    The paths removed.
  """
  removed = []
  try:
    entries = [e.name for e in os.scandir(folder) if _is_temp(e.name)]
  except OSError:
    return removed
  for entry in entries:
    path = os.path.join(folder, entry)
    fd = None
    for access in (os.O_RDONLY, os.O_WRONLY):  # a temporary may carry a replaced file's write-only mode
      try:
        fd = os.open(path, access | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        break
      except OSError:
        continue
    if fd is None:
      continue
    try:
      if fcntl is None or not stat.S_ISREG(os.fstat(fd).st_mode) or not _lock(fd, wait=False):
        continue
      if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:  # still the file we locked
        os.unlink(path)
        removed.append(path)
    except OSError:
      pass
    finally:
      os.close(fd)
  return removed


@contextlib.contextmanager
def _locked_temp(folder: str, target: str) -> Generator[tuple[int, str]]:
  """A new, locked temporary file next to ``target``; removed if the block raises."""
  base = os.path.basename(target)[:96]
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
  while True:
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as to any new file
    try:
      _lock(fd, wait=True)
      # a sweeper may have taken the lock between the create and ours, and removed the file
      if os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    except BaseException:
      os.close(fd)
      with contextlib.suppress(OSError):
        os.unlink(tmp)
      raise
    os.close(fd)
  try:
    yield fd, tmp
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  finally:
    os.close(fd)


def _fsync_folder(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
      raise
  finally:
    os.close(fd)


def _write_atomic(path: str, blob: bytes) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"cannot save {path!r}: the folder {folder!r} does not exist")
  sweep_stale_temporaries(folder)
  try:
    mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
  except FileNotFoundError:
    mode = None
  with _locked_temp(folder, path) as (fd, tmp):
    view = memoryview(blob)
    while view:
      written = os.write(fd, view[:_WRITE_CHUNK])
      view = view[written:]
    if mode is not None:
      os.fchmod(fd, mode)  # keep the permissions of the file being replaced
    os.fsync(fd)
    os.replace(tmp, path)  # still holding the lock, so no sweeper can remove it first
    _fsync_folder(folder)


def _extras_text(extras: Any) -> str | None:
  """The JSON text of ``extras``, with NumPy and JAX scalars and arrays as (nested) lists."""
  if extras is None:
    return None
  if not isinstance(extras, Mapping):
    raise TypeError(f"extras must be a dict with string keys, got {type(extras).__name__}")

  def plain(x: Any, where: str) -> Any:
    if isinstance(x, Mapping):
      bad = [k for k in x if not isinstance(k, str)]
      if bad:
        raise TypeError(f"extras: key {bad[0]!r} at {where or '<root>'!r} is not a string")
      return {k: plain(v, f"{where}/{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [plain(v, f"{where}/{i}") for i, v in enumerate(x)]
    if x is None or isinstance(x, (bool, int, float, str)):
      return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
      return np.asarray(x).tolist()  # float32 -> float64 is exact, so it reads back bit for bit
    raise TypeError(f"extras: cannot store {type(x).__name__} at {where or '<root>'!r} (use JSON values or arrays)")

  try:
    return json.dumps(plain(extras, ""), separators=(",", ":"), allow_nan=False)
  except ValueError:
    raise ValueError("extras hold a NaN or an infinity, which JSON cannot store") from None


def _describe(spec: Any, name: str, outer: str, out: dict[str, str]) -> None:
  """One plain line per tensor of a format-4 file: what it is, inside which leaf."""
  kind = spec["kind"]
  if kind == "array":
    array = f"{spec['dtype']}[{','.join(map(str, spec['shape']))}]"
    out.setdefault(spec["key"], f"{outer}: {array}" if outer else f"dense {array}")
  elif kind == "dict":
    for (_, k), v in zip(spec["keys"], spec["items"]):
      _describe(v, f"{name}/{k}", outer, out)
  elif kind in ("list", "tuple"):
    for i, v in enumerate(spec["items"]):
      _describe(v, f"{name}/{i}", outer, out)
  elif kind != "none":
    meta = ",".join(f"{k}={v}" for k, v in spec["meta"].items())
    for f, v in spec["fields"].items():
      _describe(v, f"{name}.{f}", f"{outer} > {kind}({meta}).{f}" if outer else f"{kind}({meta}).{f}", out)


def _readable_names(spec: Any, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Format 4's names: a bit-packed stream is named for the field holding it (``kernel.codes``, not
  ``kernel.codes.data``) where that name is free; ``spec``'s array keys are renamed in place."""
  renames: dict[str, str] = {}

  def walk(node: Any) -> None:
    kind = node["kind"]
    if kind in ("dict", "list", "tuple"):
      for v in node["items"]:
        walk(v)
    elif kind == "BitPacked":
      key = node["fields"]["data"]["key"]
      if key.endswith(".data") and key[:-5] not in named and key[:-5] not in renames.values():
        renames.setdefault(key, key[:-5])
    elif kind in _LEAF_TYPES:
      for v in node["fields"].values():
        walk(v)

  def rename(node: Any) -> None:
    if node["kind"] == "array":
      node["key"] = renames.get(node["key"], node["key"])
    for v in node.get("items", ()):
      rename(v)
    for v in node.get("fields", {}).values():
      rename(v)

  walk(spec)
  rename(spec)
  return {renames.get(k, k): v for k, v in named.items()}


def _save_v4(packed: Any, extras: str | None) -> bytes:
  named: dict[str, np.ndarray] = {}
  spec = _encode(packed, "", named, {})
  named = _readable_names(spec, named)
  arrays: dict[str, Any] = {}
  tree = _compact(spec, arrays, {})
  described: dict[str, str] = {}
  _describe(spec, "", "", described)
  metadata = {
    "jaxcompress": json.dumps({"version": 4, "arrays": arrays, "tree": tree}, separators=(",", ":")),
    "jaxcompress.tensors": json.dumps(described, separators=(",", ":")),
  }
  if extras is not None:
    metadata[EXTRAS_KEY] = extras
  tensors = {k: (_SAFETENSORS_DTYPES[a.dtype.name], list(a.shape)) for k, a in named.items()}
  metadata[DIGEST_KEY] = header_digest(metadata, tensors)
  return safetensors.numpy.save(named, metadata=metadata)


def save(
  path: str | os.PathLike[str], packed: Any, *, version: int = FORMAT_VERSION, extras: Mapping[str, Any] | None = None
) -> int:
  """Writes a packed tree to ``path`` atomically (format version 5 by default).

  The file is written to ``.<name>.<random>.jaxcompress-tmp`` in the same folder, under an
  exclusive ``flock``, flushed to disk (``fsync``), renamed over ``path`` and the folder is
  ``fsync``-ed, so ``path`` holds the old file or the whole new one, never a partial one,
  even after a crash or SIGKILL. A temporary left by a save that died is removed by the next
  save into the same folder (see :func:`sweep_stale_temporaries`); on a failed save (an
  exception) this one's is removed at once. An existing file's permission bits are kept; a
  new file gets ``0o666`` less the umask.

  Args:
    path: the destination file (conventionally ``*.safetensors``).
    packed: a tree of dicts, lists, tuples, ``None``, arrays and compressed leaves
      (the output of ``Compressor.pack``).
    version: 5 (the smallest: one data tensor, its digest and document inside it; see
      ``docs/FILE_FORMAT.md``), 3 (the previous compact format: one data tensor, the digest
      as text in the header; see the module's docstring), 4 (for deployment: one tensor per array under a readable name, read lazily by
      :func:`open_file`; see ``docs/FILE_FORMAT.md``) or 2 (the older per-array layout).
    extras: what serving needs besides the weights (activation ranges, bits, ...: see
      :func:`jaxcompress.quantization.serving_extras`), a dict with string keys of JSON
      values, NumPy/JAX scalars and arrays (stored as nested lists; float32 values read
      back exactly). Stored as readable JSON in the metadata entry ``'jaxcompress.extras'``
      and covered by the file's checksum; :func:`open_file` gives it back.

  Returns:
    The size of the written file in bytes.

  Raises:
    TypeError: if the tree holds something that cannot be saved (the message names
      its path), or ``extras`` holds a value JSON cannot store.
    ValueError: if a compressed leaf's static fields do not match its arrays (the
      message names its path and the field), ``version`` is not 2, 3, 4 or 5, or ``extras``
      holds a NaN or an infinity.
    FileNotFoundError: if the folder of ``path`` does not exist.

  Example:
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), 'model.safetensors')
    >>> _ = save(path, {'dense': {'kernel': np.eye(2, dtype=np.float32)}}, version=4, extras={'act_bits': 8})
    >>> with open_file(path) as f:
    ...   f.names, f.extras
    (('dense/kernel',), {'act_bits': 8})
  """
  if version not in READ_VERSIONS:
    raise ValueError(f"version must be one of {READ_VERSIONS}, got {version!r}")
  text = _extras_text(extras)
  if version == 5:
    blob = _save_v5(packed, text)
  elif version == 3:
    blob = _save_v3(packed, text)
  elif version == 4:
    blob = _save_v4(packed, text)
  else:
    arrays: dict[str, np.ndarray] = {}
    spec = _encode(packed, "", arrays, {})
    metadata = {"jaxcompress": json.dumps({"version": 2, "tree": spec}, separators=(",", ":"))}
    if text is not None:
      metadata[EXTRAS_KEY] = text
    tensors = {k: (_SAFETENSORS_DTYPES[a.dtype.name], list(a.shape)) for k, a in arrays.items()}
    metadata[DIGEST_KEY] = header_digest(metadata, tensors)
    blob = safetensors.numpy.save(arrays, metadata=metadata)
  _write_atomic(os.fspath(path), blob)
  return len(blob)


def _version(metadata: Mapping[str, str]) -> Any:
  try:
    return json.loads(metadata["jaxcompress"]).get("version")
  except (ValueError, AttributeError):
    return None


Placement = Any  # a jax.sharding.Sharding, or a callable (tensor name, array) -> Sharding | None


class SavedFile:
  """A file written by :func:`save`, open for reading; from :func:`open_file`.

  Formats 2 and 4 are read lazily: opening checks the header's digest and the form of
  every node and array entry; :meth:`read` then reads only the tensors of the leaves it is
  asked for (memory-mapped by ``safetensors.safe_open``), checks each tensor's bytes against
  its SHA-256 and each compressed leaf's fields against its arrays before returning it.
  Formats 3 and 5 hold one digest over the whole file, so they are read and checked in full at open.

  Attributes:
    path: the file.
    version: its format version (2, 3, 4 or 5).
    extras: the ``extras`` it was saved with (``{}`` if none), as JSON values.
    names: the names of its safetensors tensors (formats 3 and 5: the one ``'data'`` tensor).
    paths: the path of every leaf of the tree (an array or a compressed leaf), in order.
  """

  def __init__(self, path: str, version: int, spec: Any, read: Any, extras: dict, names: tuple, handle: Any):
    self.path, self.version, self.extras, self.names = path, version, extras, names
    self._spec, self._read, self._handle = spec, read, handle
    paths: list[str] = []
    _leaf_paths(spec, "", paths)
    self.paths = tuple(paths)

  def read(
    self,
    where: str | Callable[[str], bool] | None = None,
    *,
    device: Any = None,
    sharding: Placement = None,
  ) -> Any:
    """Reads the tree, or the leaves ``where`` selects (the others come back as ``None``).

    Args:
      where: a regular expression that must fully match a leaf's path (``'params/Dense_0/.*'``),
        or a callable ``path -> bool``; ``None`` reads every leaf.
      device: a ``jax.Device`` to put every array on (as ``jax.device_put``).
      sharding: a ``jax.sharding.Sharding`` (a ``NamedSharding``) for every array, or a
        callable ``(name, array) -> Sharding | None`` choosing one per tensor by its name
        (the leaf's path, then ``.field`` inside a compressed leaf; ``None``: default device).

    Returns:
      The tree as saved: NumPy arrays without ``device`` or ``sharding``, JAX arrays placed
      as asked with them (float64 becomes float32 unless ``jax_enable_x64`` is on).

    Raises:
      CorruptFileError: if a tensor read does not match its checksum or a leaf is
        inconsistent (naming the file, the leaf and the field).
      ValueError: if both ``device`` and ``sharding`` are given, or the file was closed.
      TypeError: if ``where`` is neither a string, a callable nor ``None``.
    """
    if device is not None and sharding is not None:
      raise ValueError("give device= or sharding=, not both")
    if self._handle is None and self.version not in (3, 5):
      raise ValueError(f"{self.path} is closed: open it again with open_file")
    if where is None:
      keep = None
    elif isinstance(where, str):
      pattern = re.compile(where)
      keep = lambda p: pattern.fullmatch(p) is not None
    elif callable(where):
      keep = where
    else:
      raise TypeError(f"where must be None, a regex string or a callable path -> bool, got {where!r}")
    try:
      tree = _decode(self._spec, "", self._read, keep)
    except CorruptFileError as e:
      raise CorruptFileError(f"{self.path}: {e}") from None
    except Exception as e:  # safetensors' own errors on a bad buffer
      raise CorruptFileError(f"{self.path} is not readable (truncated or corrupted?): {e}") from None
    if device is None and sharding is None:
      return tree
    import jax

    if device is not None:
      put = lambda name, a: jax.device_put(a, device)
    elif callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
      put = lambda name, a: jax.device_put(a, sharding(name, a))
    else:
      put = lambda name, a: jax.device_put(a, sharding)
    return _place(tree, "", put)

  def close(self) -> None:
    """Closes the file (its memory map)."""
    if self._handle is not None:
      self._handle.__exit__(None, None, None)
      self._handle = None

  def __enter__(self) -> SavedFile:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    return f"SavedFile({self.path!r}, version={self.version}, {len(self.paths)} leaves)"


def _leaf_paths(spec: Any, name: str, out: list[str]) -> None:
  kind = spec["kind"]
  if kind == "dict":
    for (_, k), v in zip(spec["keys"], spec["items"]):
      _leaf_paths(v, f"{name}/{k}", out)
  elif kind in ("list", "tuple"):
    for i, v in enumerate(spec["items"]):
      _leaf_paths(v, f"{name}/{i}", out)
  elif kind != "none":
    out.append(_where(name))


def _place(node: Any, name: str, put: Any) -> Any:
  """``node`` with every array ``a`` replaced by ``put(tensor name, a)``."""
  if node is None:
    return None
  if isinstance(node, dict):
    return {k: _place(v, f"{name}/{k}", put) for k, v in node.items()}
  if isinstance(node, (list, tuple)):
    items = [_place(v, f"{name}/{i}", put) for i, v in enumerate(node)]
    return items if isinstance(node, list) else tuple(items)
  if isinstance(node, CompressedLeaf):
    kind = type(node).__name__
    return dataclasses.replace(
      cast(Any, node), **{f: _place(getattr(node, f), f"{name}.{f}", put) for f in _array_fields(kind)}
    )
  return put(_where(name), node)


def _read_extras(metadata: Mapping[str, str]) -> dict:
  if EXTRAS_KEY not in metadata:
    return {}
  extras = json.loads(metadata[EXTRAS_KEY])
  if not isinstance(extras, dict):
    raise CorruptFileError(f"its {EXTRAS_KEY!r} entry is not a JSON object")
  return extras


def _open(path: str) -> SavedFile:
  handle = safetensors.safe_open(path, framework="numpy")
  f = handle.__enter__()
  try:
    metadata = f.metadata() or {}
    table = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    if "jaxcompress" not in metadata:
      raise CorruptFileError(f"{path} is a safetensors file but was not written by jaxcompress.export.save")
    if DIGEST_KEY not in metadata and _version(metadata) != 5:
      version = _version(metadata)
      raise CorruptFileError(
        f"{path} has format version {version!r} without a header checksum, expected {FORMAT_VERSION}: "
        "load it with the jaxcompress release that wrote it and save it again"
      )
    version = _version(metadata)
    if version not in (3, 5) and header_digest(metadata, table) != metadata[DIGEST_KEY]:
      raise CorruptFileError(f"{path}: the header does not match its checksum: the file is corrupted or was edited")
    try:
      header = json.loads(metadata["jaxcompress"])
      if not isinstance(header, dict) or header.get("version") not in READ_VERSIONS:
        version = header.get("version") if isinstance(header, dict) else None
        raise CorruptFileError(f"has format version {version!r}, expected one of {READ_VERSIONS}")
      if version in (3, 5):
        spec, read = _read_v3(header, metadata, table, f.get_tensor)
      else:
        if version == 4:
          spec = _expand(header.get("tree"), "", _arrays_v4(header.get("arrays")))
        else:
          spec = header.get("tree")
        seen: dict[str, Any] = {}
        _check_arrays(spec, "", table, seen)
        if set(table) != set(seen):
          raise CorruptFileError(f"holds tensors the tree does not use: {sorted(set(table) - set(seen))}")
        read = f.get_tensor
      extras = _read_extras(metadata)
    except CorruptFileError as e:
      raise CorruptFileError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
      raise CorruptFileError(f"{path} has malformed jaxcompress metadata: {e!r}") from None
  except BaseException:
    handle.__exit__(None, None, None)
    raise
  if version in (3, 5):  # everything is in memory already
    handle.__exit__(None, None, None)
    handle = None
  return SavedFile(path, version, spec, read, extras, tuple(table), handle)


def _arrays_v4(arrays: Any) -> dict[str, list[Any]]:
  """Format 4's ``{name: [dtype code, shape, sha256]}``, dtypes as names, checked for form."""
  if not isinstance(arrays, dict):
    raise CorruptFileError("'arrays' is not an object")
  out = {}
  for name, entry in arrays.items():
    if not (isinstance(entry, list) and len(entry) == 3):
      raise CorruptFileError(f"array {name!r}: malformed entry {entry!r}")
    out[name] = [_array_dtype(entry[0], name).name, entry[1], entry[2]]
  return out


def open_file(path: str | os.PathLike[str]) -> SavedFile:
  """Opens a file written by :func:`save` for lazy, placed reading.

  Args:
    path: the file.

  Returns:
    A :class:`SavedFile` (a context manager): ``.read(where=, device=, sharding=)``
    gives the tree or some of its leaves, ``.extras`` the serving parameters saved with it.

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    CorruptFileError: as :func:`load`, for what opening checks.
  """
  path = os.fspath(path)
  with open(path, "rb"):  # FileNotFoundError, IsADirectoryError, PermissionError as themselves
    pass
  try:
    return _open(path)
  except (CorruptFileError, FileNotFoundError):
    raise
  except Exception as e:  # safetensors raises its own error types for bad headers and buffers
    raise CorruptFileError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None


def load(
  path: str | os.PathLike[str],
  *,
  where: str | Callable[[str], bool] | None = None,
  device: Any = None,
  sharding: Placement = None,
) -> Any:
  """Reads a tree written by :func:`save` (format 5, 4, 3 or 2); the round trip is bit-exact.

  Everything is checked before anything is materialized. Formats 5 and 3: the arrays' sizes against
  the data tensor, one digest over the header and the data, the form of every node, then
  every field of every compressed leaf against the arrays it holds. Formats 2 and 4: the header
  digest first (before any array is read), then each array's dtype and shape against the
  file's tensor table, each array's bytes against its digest, and every compressed leaf. A loaded leaf's ``materialize()`` therefore allocates what its
  stored arrays describe (a tampered ``dense_shape`` or ``code_shape`` is refused here).
  ``open_file(path).read(...)`` is the same with the file kept open, and gives ``extras``.

  Args:
    path: the file.
    where: read only the leaves whose path this regex fully matches (or a callable
      ``path -> bool``); the others come back as ``None`` and, in formats 2 and 4, are
      never read.
    device: a ``jax.Device`` to put every array on.
    sharding: a ``jax.sharding.Sharding`` for every array, or a callable ``(name, array)
      -> Sharding | None`` (see :meth:`SavedFile.read`).

  Returns:
    The packed tree, with NumPy arrays (JAX arrays, placed, with ``device`` or
    ``sharding``). Containers come back as plain ``dict``, ``list`` and ``tuple`` (a Flax
    NNX ``State`` is saved as the nested dict it holds; ``nnx.merge`` and
    :func:`~jaxcompress.export.materialize_tree` accept it).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    CorruptFileError: if the file is truncated, corrupted (a checksum differs),
      inconsistent (a leaf's field does not match its arrays: the message names the leaf's
      path and the field), of another format version, or not written by :func:`save`; the
      message names the file.
  """
  with open_file(path) as f:
    return f.read(where, device=device, sharding=sharding)
