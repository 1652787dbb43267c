"""Saving and loading packed trees: safetensors for the arrays, JSON for the structure.

The file is one safetensors file. Its arrays are the tree's arrays, named by path; its
metadata entry ``'jaxcompress'`` is JSON describing the tree (dicts, lists, tuples,
``None``, arrays and compressed leaves with their static fields) and a SHA-256 digest of
every array, so a corrupted or truncated file is detected on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from jaxcompress.export._base import CompressedLeaf
from jaxcompress.export._bitpack import BitPacked
from jaxcompress.export._codebook import CodebookArray
from jaxcompress.export._factorized import ConvFactorized, Factorized
from jaxcompress.export._masked import MaskedArray
from jaxcompress.export._qarray import QArray
from jaxcompress.export._sliced import SlicedArray
from jaxcompress.export._sparse import SparseArray

FORMAT_VERSION = 1
# dtypes safetensors' NumPy reader understands; others travel as raw bytes
_SAFETENSORS_DTYPES = frozenset(
  {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)
_LEAF_TYPES = {
  cls.__name__: cls
  for cls in (BitPacked, QArray, SparseArray, CodebookArray, Factorized, ConvFactorized, SlicedArray, MaskedArray)
}


class CorruptFileError(ValueError):
  """A file is truncated, corrupted, or not a jaxcompress file."""


def _digest(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _encode(node: Any, name: str, arrays: dict[str, np.ndarray]) -> Any:
  if node is None:
    return {"kind": "none"}
  if hasattr(node, "get_value") and not isinstance(node, (CompressedLeaf, np.ndarray)):
    node = node.get_value()  # a Flax NNX Variable: save what it holds
  if type(node).__name__ in _LEAF_TYPES and dataclasses.is_dataclass(node):
    fields, meta = {}, {}
    for f in dataclasses.fields(node):
      value = getattr(node, f.name)
      scalar = lambda v: isinstance(v, (int, str, bool)) and not hasattr(v, "shape")
      if scalar(value) or (isinstance(value, tuple) and all(scalar(v) or v is None for v in value)):
        meta[f.name] = list(value) if isinstance(value, tuple) else value
      else:
        fields[f.name] = _encode(value, f"{name}.{f.name}", arrays)
    return {"kind": type(node).__name__, "meta": meta, "fields": fields}
  if isinstance(node, Mapping):
    for k in node:
      if not isinstance(k, (str, int)):
        raise TypeError(f"cannot save key {k!r} of type {type(k).__name__} at {name!r}")
    return {
      "kind": "dict",
      "keys": [[type(k).__name__, k] for k in node],
      "items": [_encode(v, f"{name}/{k}", arrays) for k, v in node.items()],
    }
  if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
    kind = "list" if isinstance(node, list) else "tuple"
    return {"kind": kind, "items": [_encode(v, f"{name}/{i}", arrays) for i, v in enumerate(node)]}
  if hasattr(node, "shape") and hasattr(node, "dtype"):
    array = np.asarray(node, order="C")  # (ascontiguousarray would turn a scalar into 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("="))  # safetensors is little-endian
    key = name.lstrip("/") or "array"
    if key in arrays:  # paths can collide ({'a/b': x, 'a': {'b': y}}): number the later one
      key = f"{key}#{len(arrays)}"
    spec: dict[str, Any] = {"kind": "array", "key": key, "sha256": _digest(array)}
    if array.dtype.name not in _SAFETENSORS_DTYPES:
      # bfloat16, float8, int4 ...: stored as raw bytes, the dtype and shape in the header
      spec.update(dtype=array.dtype.name, shape=list(array.shape))
      array = array.reshape(-1).view(np.uint8)
    arrays[key] = array
    return spec
  raise TypeError(
    f"cannot save {type(node).__name__} at {name!r}: save trees of dicts, lists, tuples, arrays and compressed leaves"
  )


def _decode(spec: Any, arrays: Mapping[str, np.ndarray]) -> Any:
  kind = spec["kind"]
  if kind == "none":
    return None
  if kind == "array":
    array = arrays[spec["key"]]
    if "dtype" in spec:
      array = array.view(jnp.dtype(spec["dtype"])).reshape(spec["shape"])
    if _digest(array) != spec["sha256"]:
      raise CorruptFileError(f"array {spec['key']!r} does not match its checksum: the file is corrupted")
    return array
  if kind == "dict":
    keys = [int(k) if t == "int" else k for t, k in spec["keys"]]
    return {k: _decode(v, arrays) for k, v in zip(keys, spec["items"])}
  if kind in ("list", "tuple"):
    items = [_decode(v, arrays) for v in spec["items"]]
    return items if kind == "list" else tuple(items)
  if kind in _LEAF_TYPES:
    meta: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["meta"].items()}
    fields: dict[str, Any] = {k: _decode(v, arrays) for k, v in spec["fields"].items()}
    return _LEAF_TYPES[kind](**fields, **meta)
  raise CorruptFileError(f"unknown node kind {kind!r} in file metadata")


def save(path: str | os.PathLike[str], packed: Any) -> int:
  """Writes a packed tree to ``path`` atomically.

  The file is written to a temporary name in the same folder and renamed into place,
  so a failed save leaves no partial file and never clobbers an existing one with a
  half-written one.

  Args:
    path: the destination file (conventionally ``*.safetensors``).
    packed: a tree of dicts, lists, tuples, ``None``, arrays and compressed leaves
      (the output of ``Compressor.pack``).

  Returns:
    The size of the written file in bytes.

  Raises:
    TypeError: if the tree holds something that cannot be saved (the message names
      its path).
  """
  arrays: dict[str, np.ndarray] = {}
  spec = _encode(packed, "", arrays)
  header = json.dumps({"version": FORMAT_VERSION, "tree": spec})
  blob = safetensors.numpy.save(arrays, metadata={"jaxcompress": header})
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"cannot save {path!r}: the folder {folder!r} does not exist")
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; give it a normal file's mode
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return len(blob)


def load(path: str | os.PathLike[str]) -> Any:
  """Reads a tree written by :func:`save`; the round trip is bit-exact.

  Args:
    path: the file.

  Returns:
    The packed tree, with NumPy arrays. Containers come back as plain ``dict``,
    ``list`` and ``tuple`` (a Flax NNX ``State`` is saved as the nested dict it holds;
    ``nnx.merge`` and :func:`~jaxcompress.export.materialize_tree` accept it).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    CorruptFileError: if the file is truncated, corrupted (a checksum differs) or not
      written by :func:`save`; the message names the file.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    blob = f.read()
  try:
    arrays = safetensors.numpy.load(blob)
    with safetensors.safe_open(path, framework="numpy") as f:
      metadata = f.metadata() or {}
  except Exception as e:  # safetensors raises its own error types for bad headers
    raise CorruptFileError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None
  if "jaxcompress" not in metadata:
    raise CorruptFileError(f"{path} is a safetensors file but was not written by jaxcompress.export.save")
  try:
    header = json.loads(metadata["jaxcompress"])
    if header.get("version") != FORMAT_VERSION:
      raise CorruptFileError(f"{path} has format version {header.get('version')!r}, expected {FORMAT_VERSION}")
    return _decode(header["tree"], arrays)
  except CorruptFileError as e:
    raise CorruptFileError(f"{path}: {e}") from None
  except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
    raise CorruptFileError(f"{path} has malformed jaxcompress metadata: {e!r}") from None
