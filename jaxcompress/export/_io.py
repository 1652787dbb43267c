"""Saving and loading packed trees: safetensors for the arrays, JSON for the structure.

The file is one safetensors file (format version 2). Its tensors are the tree's arrays,
named by path. Its metadata holds two entries:

- ``'jaxcompress'``: JSON ``{"version": 2, "tree": ...}`` describing the tree (dicts,
  lists, tuples, ``None``, arrays and compressed leaves with every static field); each
  array's entry has its ``key``, logical ``dtype`` and ``shape`` and the SHA-256 of its bytes.
- ``'jaxcompress.sha256'``: the SHA-256 of a canonical serialization (sorted-key compact
  JSON, see :func:`header_digest`) of every other metadata entry and of the safetensors
  tensor table (each tensor's dtype and shape).

So the digest covers the whole header (safetensors' dtypes and shapes, every field of every
leaf, the per-array digests) and, through those, the data. :func:`load` checks, in order:
the header digest (before reading any array), each array's dtype and shape against the
tensor table, each array's bytes against its digest, and then each compressed leaf's fields
against its arrays (``jaxcompress.export._checks``), so a file whose checksum was recomputed
after an edit still cannot describe a dense array its stored arrays do not account for;
any failure is a :class:`CorruptFileError` naming the file, and for a leaf its path and field.

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
import secrets
import stat
from collections.abc import Generator, Mapping
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
from jaxcompress.export._structured import CirculantArray, HashedArray, TiedArray, ToeplitzArray

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so no sweeping of stale temporaries
  fcntl = None

FORMAT_VERSION = 2
DIGEST_KEY = "jaxcompress.sha256"
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
    HuffmanArray,
    OutlierArray,
  )
}
# every leaf type's static fields (its pytree meta fields); the other dataclass fields hold arrays or leaves
_META_FIELDS = {
  "BitPacked": ("bits", "code_shape", "signed"),
  "QArray": ("bits", "dtype", "group_axis", "group_size"),
  "SparseArray": ("dense_shape", "format"),
  "CodebookArray": ("axis",),
  "Factorized": ("dense_shape",),
  "ConvFactorized": ("kind", "dense_shape"),
  "SlicedArray": ("dense_shape",),
  "MaskedArray": (),
  "HashedArray": ("dense_shape", "signed"),
  "CirculantArray": ("dense_shape",),
  "ToeplitzArray": ("dense_shape",),
  "TiedArray": ("source", "primary"),
  "HuffmanArray": ("bits", "code_shape", "signed", "dtype"),
  "OutlierArray": (),
}
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
    meta = {f: _meta_value(getattr(node, f)) for f in meta_names}
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


def _check_arrays(spec: Any, name: str, table: Mapping[str, tuple[str, list[int]]], seen: dict[str, Any]) -> None:
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
    if not isinstance(spec.get("sha256"), str):
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
      _check_arrays(item, f"{name}/{pair[1]}", table, seen)
    return
  if kind in ("list", "tuple"):
    items = spec.get("items")
    if not isinstance(items, list):
      raise CorruptFileError(f"{kind} {_where(name)!r}: malformed items")
    for i, item in enumerate(items):
      _check_arrays(item, f"{name}/{i}", table, seen)
    return
  if kind in _LEAF_TYPES:
    meta, fields = spec.get("meta"), spec.get("fields")
    meta_names = set(_META_FIELDS[kind])
    data_names = {f.name for f in dataclasses.fields(cast(Any, _LEAF_TYPES[kind]))} - meta_names
    if not isinstance(meta, dict) or set(meta) != meta_names:
      got = sorted(meta) if isinstance(meta, dict) else meta
      raise CorruptFileError(f"leaf {_where(name)!r} ({kind}): static fields {got!r}, expected {sorted(meta_names)}")
    if not isinstance(fields, dict) or set(fields) != data_names:
      got = sorted(fields) if isinstance(fields, dict) else fields
      raise CorruptFileError(f"leaf {_where(name)!r} ({kind}): array fields {got!r}, expected {sorted(data_names)}")
    for f, item in fields.items():
      _check_arrays(item, f"{name}.{f}", table, seen)
    return
  if kind != "none":
    raise CorruptFileError(f"node {_where(name)!r} has unknown kind {kind!r}")


def _decode(spec: Any, name: str, read: Any) -> Any:
  kind = spec["kind"]
  if kind == "none":
    return None
  if kind == "array":
    array = read(spec["key"])
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      array = array.view(known_dtype(spec["dtype"])).reshape(spec["shape"])
    if _digest(array) != spec["sha256"]:
      raise CorruptFileError(f"array {spec['key']!r} does not match its checksum: the file is corrupted")
    return array
  if kind == "dict":
    keys = [k for _, k in spec["keys"]]
    return {k: _decode(v, f"{name}/{k}", read) for k, v in zip(keys, spec["items"])}
  if kind in ("list", "tuple"):
    items = [_decode(v, f"{name}/{i}", read) for i, v in enumerate(spec["items"])]
    return items if kind == "list" else tuple(items)
  meta = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["meta"].items()}
  fields = {k: _decode(v, f"{name}.{k}", read) for k, v in spec["fields"].items()}
  leaf = _LEAF_TYPES[kind](**fields, **meta)
  try:
    check_leaf(leaf, name)
  except InconsistentLeafError as e:
    raise CorruptFileError(str(e)) from None
  return leaf


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


def save(path: str | os.PathLike[str], packed: Any) -> int:
  """Writes a packed tree to ``path`` atomically (format version 2).

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

  Returns:
    The size of the written file in bytes.

  Raises:
    TypeError: if the tree holds something that cannot be saved (the message names
      its path).
    ValueError: if a compressed leaf's static fields do not match its arrays (the
      message names its path and the field).
    FileNotFoundError: if the folder of ``path`` does not exist.
  """
  arrays: dict[str, np.ndarray] = {}
  spec = _encode(packed, "", arrays, {})
  metadata = {"jaxcompress": json.dumps({"version": FORMAT_VERSION, "tree": spec}, separators=(",", ":"))}
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


def load(path: str | os.PathLike[str]) -> Any:
  """Reads a tree written by :func:`save`; the round trip is bit-exact.

  Everything is checked before anything is materialized: the header digest first (before
  any array is read), then each array's dtype and shape against the file's tensor table,
  each array's bytes against its digest, and every field of every compressed leaf against
  the arrays it holds. A loaded leaf's ``materialize()`` therefore allocates what its
  stored arrays describe (a tampered ``dense_shape`` or ``code_shape`` is refused here).

  Args:
    path: the file.

  Returns:
    The packed tree, with NumPy arrays. Containers come back as plain ``dict``,
    ``list`` and ``tuple`` (a Flax NNX ``State`` is saved as the nested dict it holds;
    ``nnx.merge`` and :func:`~jaxcompress.export.materialize_tree` accept it).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    CorruptFileError: if the file is truncated, corrupted (a checksum differs),
      inconsistent (a leaf's field does not match its arrays: the message names the leaf's
      path and the field), of another format version, or not written by :func:`save`; the
      message names the file.
  """
  path = os.fspath(path)
  with open(path, "rb"):  # FileNotFoundError, IsADirectoryError, PermissionError as themselves
    pass
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      metadata = f.metadata() or {}
      table = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
      if "jaxcompress" not in metadata:
        raise CorruptFileError(f"{path} is a safetensors file but was not written by jaxcompress.export.save")
      if DIGEST_KEY not in metadata:
        version = _version(metadata)
        raise CorruptFileError(
          f"{path} has format version {version!r} without a header checksum, expected {FORMAT_VERSION}: "
          "load it with the jaxcompress release that wrote it and save it again"
        )
      if header_digest(metadata, table) != metadata[DIGEST_KEY]:
        raise CorruptFileError(f"{path}: the header does not match its checksum: the file is corrupted or was edited")
      return _read_tree(path, metadata, table, f.get_tensor)
  except (CorruptFileError, FileNotFoundError):
    raise
  except Exception as e:  # safetensors raises its own error types for bad headers and buffers
    raise CorruptFileError(f"{path} is not a readable safetensors file (truncated or corrupted?): {e}") from None


def _read_tree(path: str, metadata: Mapping[str, str], table: Mapping[str, tuple[str, list[int]]], read: Any) -> Any:
  try:
    header = json.loads(metadata["jaxcompress"])
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
      version = header.get("version") if isinstance(header, dict) else None
      raise CorruptFileError(f"has format version {version!r}, expected {FORMAT_VERSION}")
    seen: dict[str, Any] = {}
    _check_arrays(header.get("tree"), "", table, seen)
    if set(table) != set(seen):
      raise CorruptFileError(f"holds tensors the tree does not use: {sorted(set(table) - set(seen))}")
    return _decode(header["tree"], "", read)
  except CorruptFileError as e:
    raise CorruptFileError(f"{path}: {e}") from None
  except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
    raise CorruptFileError(f"{path} has malformed jaxcompress metadata: {e!r}") from None
