import functools
import os

import numpy as np
import pytest

from jaxcompress import export


def packed_tree():
  rng = np.random.default_rng(0)
  w = np.where(rng.random((20, 10)) < 0.2, rng.normal(size=(20, 10)), 0).astype(np.float32)
  codes = rng.integers(-7, 8, size=(10, 3))
  return {
    "dense": {"kernel": export.from_dense(w), "bias": np.ones(10, np.float32)},
    "quant": export.QArray(
      export.store_codes(codes, 4, signed=True), np.full((1, 3), 0.1, np.float32), None, 4, "float32"
    ),
    "book": export.from_assignments(np.array([0.0, 1.5], np.float32), rng.integers(0, 2, size=(4, 4))),
    "lowrank": [export.factorize(np.ones((6, 2), np.float32), np.ones((2, 3), np.float32), (6, 3)), None],
    "step": (np.array(3, np.int32),),
  }


def assert_same(a, b):
  assert type(a) is type(b)
  if isinstance(a, dict):
    assert list(a) == list(b)
    for k in a:
      assert_same(a[k], b[k])
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b)
    for x, y in zip(a, b):
      assert_same(x, y)
  elif a is None:
    assert b is None
  elif isinstance(a, (export.CompressedLeaf, export.BitPacked)):
    import dataclasses

    for f in dataclasses.fields(a):
      assert_same(getattr(a, f.name), getattr(b, f.name))
  elif isinstance(a, (int, str, bool)):
    assert a == b
  else:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
  tree = packed_tree()
  path = tmp_path / "m.safetensors"
  size = export.save(path, tree)
  assert size == os.path.getsize(path)
  assert_same(tree, export.load(path))


def test_truncated_file(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, packed_tree())
  blob = path.read_bytes()
  for cut in (4, len(blob) // 2, len(blob) - 1):
    path.write_bytes(blob[:cut])
    with pytest.raises(export.CorruptFileError, match=str(path)):
      export.load(path)


def test_corrupted_bytes_fail_the_checksum(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, packed_tree())
  blob = bytearray(path.read_bytes())
  blob[-3] ^= 0xFF  # inside the last array's data
  path.write_bytes(bytes(blob))
  with pytest.raises(export.CorruptFileError, match="checksum"):
    export.load(path)


def test_foreign_safetensors_file(tmp_path):
  import safetensors.numpy

  path = tmp_path / "other.safetensors"
  safetensors.numpy.save_file({"x": np.ones(3, np.float32)}, str(path))
  with pytest.raises(export.CorruptFileError, match="not written by jaxcompress"):
    export.load(path)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
  path = tmp_path / "m.safetensors"
  export.save(path, {"a": np.ones(3, np.float32)})
  before = path.read_bytes()

  with pytest.raises(TypeError, match="cannot save object at '/b'"):
    export.save(path, {"a": np.zeros(3, np.float32), "b": object()})

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    export.save(path, {"a": np.zeros(3, np.float32)})
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["m.safetensors"]


def test_low_precision_dtypes_round_trip(tmp_path):
  import jax.numpy as jnp

  tree = {
    "bf16": np.asarray(jnp.arange(5, dtype=jnp.bfloat16) / 3),
    "f8": np.asarray(jnp.array([0.5, -448.0], jnp.float8_e4m3fn)),
    "i4": np.asarray(jnp.array([[-8, 7]], jnp.int4)),
  }
  export.save(tmp_path / "m.safetensors", tree)
  assert_same(tree, export.load(tmp_path / "m.safetensors"))


def test_colliding_paths_and_odd_layouts(tmp_path):
  tree = {"a/b": np.zeros(2, np.float32), "a": {"b": np.ones(2, np.float32)}, "t": np.arange(6.0).reshape(2, 3).T}
  tree["big"] = np.arange(3, dtype=">f4")
  export.save(tmp_path / "m.safetensors", tree)
  loaded = export.load(tmp_path / "m.safetensors")
  np.testing.assert_array_equal(loaded["a/b"], 0.0)
  np.testing.assert_array_equal(loaded["a"]["b"], 1.0)
  np.testing.assert_array_equal(loaded["t"], tree["t"])
  np.testing.assert_array_equal(loaded["big"], [0.0, 1.0, 2.0])


def test_file_mode_and_missing_folder(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, {"a": np.ones(2, np.float32)})
  umask = os.umask(0)
  os.umask(umask)
  assert (os.stat(path).st_mode & 0o777) == 0o666 & ~umask
  with pytest.raises(FileNotFoundError, match=r"the folder .*nowhere.* does not exist"):
    export.save(tmp_path / "nowhere" / "m.safetensors", {"a": np.ones(2, np.float32)})


# --- integrity: the digest covers the header, and every leaf field is checked (issue 9) ---


@functools.cache
def every_leaf_tree():
  """One of each leaf type and variant, as the library's own constructors build them."""
  import jax.numpy as jnp

  rng = np.random.default_rng(1)
  w = np.where(rng.random((20, 10)) < 0.3, rng.normal(size=(20, 10)), 0).astype(np.float32)
  keep = rng.random((8, 6)) < 0.4
  q4 = export.QArray(
    export.store_codes(rng.integers(-7, 8, (8, 6)), 4, signed=True), np.array(0.1, np.float32), None, 4, "float32"
  )
  affine = export.QArray(
    export.store_codes(rng.integers(0, 256, (8, 6)), 8, signed=False),
    np.full((1, 6), 0.02, np.float32),
    np.full((1, 6), 128, np.int32),
    8,
    "bfloat16",
  )
  grouped = export.QArray(
    export.store_codes(rng.integers(-3, 4, (8, 6)), 3, signed=True), np.full((2, 4, 6), 0.5, np.float32)[:, :1], None, 3,
    "float32", group_axis=0, group_size=4,
  )  # fmt: skip
  book = export.from_assignments(np.array([-1.0, 0.0, 2.0], np.float32), rng.integers(0, 3, (8, 6)))
  per_channel = export.from_assignments(rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 5, (8, 6)), axis=1)
  sliced = export.sliced_from_parts(np.full((3, 2), 0.5, np.float32), [np.array([1, 0, 1, 1], bool), None])
  codes = np.zeros((4, 2), np.int32)
  codes[[0, 2, 3]] = 2  # a later stage's QArray of the sliced view (0.5 / 0.25)
  sliced_q = sliced.recompose(
    export.QArray(export.store_codes(codes, 4, signed=True), np.array(0.25, np.float32), None, 4, "float32")
  )
  lowrank = export.factorize(np.ones((6, 2), np.float32), np.ones((2, 8), np.float32), (6, 8))
  return {
    "dense": {"kernel": export.from_dense(w), "bias": np.ones(10, np.float32)},
    "rel": export.from_dense(np.where(rng.random(300) < 0.02, 1.0, 0.0).astype(np.float32), format="relative"),
    "q4": q4,
    "q4_pruned": export.prune(q4, keep),
    "affine": affine,
    "affine_pruned": export.prune(affine, keep),
    "grouped": grouped,
    "book": book,
    "book_pruned": export.prune(book, keep),
    "per_channel": export.prune(per_channel, keep),
    "sliced": sliced,
    "sliced_q": sliced_q,
    "sliced_cols": export.sliced_from_parts(np.ones((2, 3), np.float32), [None, np.array([0, 1, 1, 1, 0], bool)]),
    "masked": export.prune(lowrank, rng.random((6, 8)) < 0.5),
    "bf16": np.asarray(jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3)),
  }


def test_every_leaf_type_round_trips(tmp_path):
  tree = every_leaf_tree()
  kinds = {type(v).__name__ for v in tree.values()} | {type(tree["masked"].inner).__name__}
  assert kinds >= {"SparseArray", "QArray", "CodebookArray", "SlicedArray", "MaskedArray", "Factorized", "ndarray"}
  assert isinstance(tree["q4_pruned"].codes, export.SparseArray) and tree["rel"].format == "relative"
  assert isinstance(tree["sliced_q"].values, export.QArray)
  export.save(tmp_path / "m.safetensors", tree)
  loaded = export.load(tmp_path / "m.safetensors")
  assert_same(tree, loaded)  # every field bit for bit, so materialize agrees too


def test_every_dtype_round_trips_and_others_are_refused(tmp_path):
  from jaxcompress.export import _io

  tree = {name: np.arange(3).astype(name) for name in _io._SAFETENSORS_DTYPES}
  tree.update(c64=np.ones(2, np.complex64), empty=np.zeros((0, 3), np.float32), scalar=np.array(3.0, np.float32))
  export.save(tmp_path / "m.safetensors", tree)
  assert_same(tree, export.load(tmp_path / "m.safetensors"))
  with pytest.raises(TypeError, match=r"dtype <U1 at '/s'"):
    export.save(tmp_path / "m.safetensors", {"s": np.array(["a"])})


def read_file(path):
  """The safetensors header (a dict) and the data bytes of a file."""
  import json
  import struct

  blob = path.read_bytes()
  (n,) = struct.unpack("<Q", blob[:8])
  return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def rewrite(path, edit, *, redigest):
  """Rewrites a saved file's header: ``edit(st_header, tree)`` changes the safetensors tensor
  table (``st_header``) or the jaxcompress tree spec (``tree``) in place. With ``redigest``
  the header digest is recomputed, as someone who knows the recipe would."""
  import json
  import struct

  from jaxcompress.export import _io

  header, data = read_file(path)
  meta = header["__metadata__"]
  doc = json.loads(meta["jaxcompress"])
  edit(header, doc["tree"])
  meta["jaxcompress"] = json.dumps(doc)
  if redigest:
    tensors = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    meta[_io.DIGEST_KEY] = _io.header_digest(meta, tensors)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def rewrite3(path, edit, *, redigest):
  """``rewrite`` for a format-3 file: ``edit(st_header, spec)`` changes the expanded tree
  spec (as format 2 writes it, array keys being indices), which is compacted again. Without
  ``redigest`` the old digest stays."""
  import json

  from jaxcompress.export import _io

  header, blob = read_file(path)
  meta = header["__metadata__"]
  head = json.loads(meta["jaxcompress"])
  doc, data = _io._unpack_v3(head["header"], np.frombuffer(blob, np.uint8), head.get("dict"))
  names = [[_io._DTYPE_NAMES.get(c, c), shape] for c, shape in doc["arrays"]]
  spec = _io._expand(doc["tree"], "", names)
  edit(header, spec)
  arrays = []
  doc["tree"] = _io._compact(spec, arrays, {})
  doc["arrays"] = arrays
  write3(path, doc, data.tobytes(), extra=header["__metadata__"], digest=None if redigest else meta[_io.DIGEST_KEY])


def write3(path, doc, data, *, extra=None, digest=None):
  """Writes a format-3 file of ``doc`` and ``data``, with extra metadata entries and a given digest."""
  import json

  from jaxcompress.export import _io

  blob = _io._pack_v3(doc, data)
  (n,) = __import__("struct").unpack("<Q", blob[:8])
  header = json.loads(blob[8 : 8 + n])
  meta = header["__metadata__"]
  for k, v in (extra or {}).items():
    if k not in ("jaxcompress", _io.DIGEST_KEY):
      meta[k] = v
  tensors = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
  body = blob[8 + n :]
  meta[_io.DIGEST_KEY] = digest or _io.file_digest(meta, tensors, body)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  path.write_bytes(__import__("struct").pack("<Q", len(text)) + text + body)


def rewrite5(path, edit, *, redigest):
  """``rewrite3`` for a format-5 file: ``edit(st_header, spec)`` changes the expanded tree spec,
  which is inlined again. Without ``redigest`` the old digest stays."""
  import json
  import struct

  from jaxcompress.export import _io

  header, blob = read_file(path)
  doc, data = _io._unpack_v5(np.frombuffer(blob, np.uint8))
  names = [[_io._DTYPE_NAMES.get(c, c), shape] for c, shape in doc["arrays"]]
  spec = _io._expand(doc["tree"], "", names)
  edit(header, spec)
  arrays = []
  doc = {"tree": _io._compact(spec, arrays, {}), "arrays": arrays}
  meta = {k: v for k, v in header["__metadata__"].items() if k != "jaxcompress"}
  fresh = _io._pack_v5(doc, data.tobytes(), meta.pop(_io.EXTRAS_KEY, None))
  (n,) = struct.unpack("<Q", fresh[:8])
  new_header = json.loads(fresh[8 : 8 + n])
  new_header["__metadata__"].update(meta)
  body = bytearray(fresh[8 + n :])
  tensors = {"data": ("U8", [len(body)])}
  if redigest:
    body[:32] = bytes.fromhex(_io.file_digest(new_header["__metadata__"], tensors, bytes(body[32:])))
  else:
    body[:32] = blob[:32]
  text = json.dumps(new_header).encode()
  text += b" " * (-len(text) % 8)
  path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(body))


def node(tree, *path):
  """The spec at ``path``: dict keys, then leaf field names."""
  for p in path:
    if tree["kind"] == "dict":
      keys = [k for _, k in tree["keys"]]
      tree = tree["items"][keys.index(p)]
    else:
      tree = tree["fields"][p]
  return tree


def set_meta(*path, **values):
  def edit(header, tree):
    node(tree, *path)["meta"].update(values)

  return edit


def set_array(*path, **values):
  def edit(header, tree):
    node(tree, *path).update(values)

  return edit


def set_tensor(key, **values):
  def edit(header, tree):
    header[key].update(values)

  return edit


def add_metadata(header, tree):
  header["__metadata__"]["note"] = "hello"


# (edit, what load must say once the attacker recomputed the digest; None: a consistent edit)
EDITS = {
  "tensor dtype F32 -> I32": (set_tensor("dense/bias", dtype="I32"), r"'dense/bias' field 'dtype'.*stored as I32"),
  "tensor shape": (set_tensor("dense/bias", shape=[5, 2]), r"'dense/bias' field 'shape'"),
  "array dtype bf16 -> f16": (set_array("bf16", dtype="float16"), r"'bf16' field 'dtype': 'float16' but .* U8"),
  "array dtype unknown": (set_array("bf16", dtype="bfloat17"), r"'bf16' field 'dtype'.*not a known dtype"),
  "array shape": (set_array("bf16", shape=[3, 3]), r"'bf16' field 'shape'"),
  "array digest": (set_array("dense", "bias", sha256="0" * 64), r"'dense/bias' does not match its checksum"),
  "QArray bits": (set_meta("q4", bits=5), r"'q4' \(QArray\) field 'codes'.*expected 5-bit"),
  "BitPacked bits": (set_meta("q4", "codes", bits=5), r"'q4.codes' \(BitPacked\) field 'code_shape'.*bits=5"),
  "BitPacked bits out of range": (set_meta("q4", "codes", bits=17), r"'q4.codes' \(BitPacked\) field 'bits'"),
  "BitPacked code_shape": (
    set_meta("q4", "codes", code_shape=[800, 600]),
    r"'q4.codes' \(BitPacked\) field 'code_shape'",
  ),
  "BitPacked signed": (set_meta("book", "indices", signed=True), r"'book' \(CodebookArray\) field 'indices'.*signed"),
  "QArray dtype": (set_meta("q4", dtype="int32"), r"'q4' \(QArray\) field 'dtype'"),
  "QArray group_size": (set_meta("grouped", group_size=3), r"'grouped' \(QArray\) field 'group_size'"),
  "QArray group_axis": (set_meta("grouped", group_axis=5), r"'grouped' \(QArray\) field 'group_axis'"),
  "SparseArray dense_shape (bitmask)": (
    set_meta("dense", "kernel", dense_shape=[4096, 8192]),
    r"'dense/kernel' \(SparseArray\) field 'dense_shape'",
  ),
  "SparseArray dense_shape (relative)": (
    set_meta("rel", dense_shape=[3]),
    r"'rel' \(SparseArray\) field 'dense_shape'",
  ),
  "SparseArray format": (set_meta("dense", "kernel", format="csr"), r"'dense/kernel' \(SparseArray\) field 'format'"),
  "CodebookArray axis": (set_meta("book", axis=0), r"'book' \(CodebookArray\) field 'axis'"),
  "SlicedArray dense_shape": (
    set_meta("sliced", dense_shape=[400, 2]),
    r"'sliced' \(SlicedArray\) field 'dense_shape'",
  ),
  "Factorized dense_shape": (
    set_meta("masked", "inner", dense_shape=[4096, 4096]),
    r"'masked.inner' \(Factorized\) field 'dense_shape'",
  ),
  "MaskedArray mask shape": (set_meta("masked", "keep", code_shape=[7, 8]), r"'masked.keep' \(BitPacked\)"),
  "extra metadata entry": (add_metadata, None),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_any_header_edit_fails_the_header_checksum(tmp_path, name):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=2)
  rewrite(path, EDITS[name][0], redigest=False)
  with pytest.raises(export.CorruptFileError, match=r"header does not match its checksum"):
    export.load(path)


@pytest.mark.parametrize("name", [k for k, (_, pattern) in EDITS.items() if pattern])
def test_inconsistent_metadata_is_refused_even_with_a_valid_checksum(tmp_path, name):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=2)
  edit, pattern = EDITS[name]
  rewrite(path, edit, redigest=True)
  with pytest.raises(export.CorruptFileError, match=pattern) as info:
    export.load(path)
  assert str(path) in str(info.value)


# format 3 has one data tensor: no per-array table or digest to edit; relabelling bf16 as f16 keeps
# the byte count, so (as in format 2's relabel of both tables) it is a consistent edit
V3_EDITS = [
  k for k, (_, pattern) in EDITS.items() if pattern and not k.startswith(("tensor", "array digest", "array dtype bf16"))
]


@pytest.mark.parametrize("name", list(EDITS))
def test_format3_any_edit_fails_the_checksum(tmp_path, name):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=3)
  rewrite3(path, EDITS[name][0] if name in V3_EDITS or name == "extra metadata entry" else add_metadata, redigest=False)
  with pytest.raises(export.CorruptFileError, match=r"does not match its checksum"):
    export.load(path)


@pytest.mark.parametrize("name", V3_EDITS)
def test_format3_inconsistent_metadata_is_refused_even_with_a_valid_checksum(tmp_path, name):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=3)
  edit, pattern = EDITS[name]
  pattern = {  # format 3 has no tensor table per array: a relabelled array no longer adds up to the data
    "array dtype unknown": r"field 'dtype': 'bfloat17' is not a known dtype code",
    "array shape": r"its arrays need \d+ bytes, its data holds \d+",
  }.get(name, pattern)
  rewrite3(path, edit, redigest=True)
  with pytest.raises(export.CorruptFileError, match=pattern) as info:
    export.load(path)
  assert str(path) in str(info.value)


def test_consistent_edits_with_a_recomputed_checksum_load(tmp_path):
  # the limit of any check: a well-formed file that just says something else (float32 bytes
  # relabelled int32 in both the tree and the tensor table) loads, since nothing contradicts it
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=2)

  def relabel(header, tree):
    set_tensor("dense/bias", dtype="I32")(header, tree)
    set_array("dense", "bias", dtype="int32")(header, tree)

  rewrite(path, relabel, redigest=True)
  assert export.load(path)["dense"]["bias"].dtype == np.int32


def test_tampered_dense_shape_is_refused_before_any_large_allocation(tmp_path):
  import tracemalloc

  w = np.where(np.arange(200).reshape(20, 10) % 7 == 0, 1.5, 0).astype(np.float32)
  path = tmp_path / "m.safetensors"
  export.save(path, {"kernel": export.from_dense(w)}, version=3)
  rewrite3(path, set_meta("kernel", dense_shape=[4096, 8192]), redigest=True)  # 128 MiB of float32
  assert path.stat().st_size < 4096
  tracemalloc.start()
  try:
    with pytest.raises(export.CorruptFileError, match=r"'kernel' \(SparseArray\) field 'dense_shape'"):
      export.load(path)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 2**20


def test_oversized_code_shape_fails_at_load_naming_the_field(tmp_path):
  path = tmp_path / "m.safetensors"
  packed = {
    "q": export.QArray(
      export.store_codes(np.zeros((4, 4), int), 2, signed=True), np.array(1, np.float32), None, 2, "float32"
    )
  }
  export.save(path, packed, version=3)
  rewrite3(path, set_meta("q", "codes", code_shape=[65536, 65536]), redigest=True)
  with pytest.raises(
    export.CorruptFileError, match=r"'q.codes' \(BitPacked\) field 'code_shape'.*needs 1073741824 bytes"
  ):
    export.load(path)


def test_save_refuses_an_inconsistent_leaf(tmp_path):
  bad = export.BitPacked(np.zeros(3, np.uint8), 4, (100,), False)
  with pytest.raises(ValueError, match=r"'b' \(BitPacked\) field 'code_shape'"):
    export.save(tmp_path / "m.safetensors", {"b": bad})
  assert os.listdir(tmp_path) == []


def test_format_version_1_files_are_refused_by_name(tmp_path):
  import json

  import safetensors.numpy

  path = tmp_path / "old.safetensors"
  tree = {"kind": "array", "key": "a", "sha256": "0" * 64}
  meta = {"jaxcompress": json.dumps({"version": 1, "tree": tree})}
  safetensors.numpy.save_file({"a": np.ones(2, np.float32)}, str(path), metadata=meta)
  with pytest.raises(export.CorruptFileError, match="format version 1"):
    export.load(path)


# --- atomic writes: no litter after SIGKILL, mode kept, fsync order (issue 10) ---------

KILLED_SAVES = """
import os, sys, threading, time
import numpy as np
from jaxcompress import export

os.fsync = lambda fd: time.sleep(60)  # hold each save between its writes and its rename
big = threading.Thread(target=export.save, args=(sys.argv[1], {"w": np.full(50 * 2**20 // 4, 2.0, np.float32)}))
big.start()
export.save(sys.argv[2], {"w": np.full(2**18, 2.0, np.float32)})
"""


def temporaries(folder):
  return sorted(n for n in os.listdir(folder) if n.endswith(".jaxcompress-tmp"))


def test_sigkill_mid_save_leaves_the_old_file_and_no_lasting_temporary(tmp_path):
  import signal
  import subprocess
  import sys
  import time

  import jaxcompress

  old = tmp_path / "old.safetensors"
  export.save(old, {"w": np.ones(3, np.float32)})
  fresh = tmp_path / "fresh.safetensors"
  root = os.path.dirname(os.path.dirname(jaxcompress.__file__))
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  child = subprocess.Popen([sys.executable, "-c", KILLED_SAVES, str(old), str(fresh)], env=env)
  try:  # two saves in one process, SIGKILLed as soon as both temporaries exist (the 50 MB one mid-write)
    deadline = time.monotonic() + 60
    while len(temporaries(tmp_path)) < 2 and time.monotonic() < deadline and child.poll() is None:
      time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
  finally:
    child.kill()
  assert child.returncode == -signal.SIGKILL
  assert len(temporaries(tmp_path)) == 2  # killed between creating its temporary and renaming it
  assert_same(export.load(old), {"w": np.ones(3, np.float32)})  # the destination: old content or nothing
  with pytest.raises(FileNotFoundError):
    export.load(fresh)

  export.save(tmp_path / "other.safetensors", {"w": np.zeros(2, np.float32)})  # any later save into the folder
  assert temporaries(tmp_path) == []
  assert sorted(os.listdir(tmp_path)) == ["old.safetensors", "other.safetensors"]


def test_a_save_in_progress_keeps_its_temporary(tmp_path):
  from jaxcompress.export import _io

  with _io._locked_temp(str(tmp_path), str(tmp_path / "m.safetensors")) as (_, busy):
    stale = tmp_path / ".m.safetensors.0123456789abcdef.jaxcompress-tmp"
    stale.write_bytes(b"half a file")  # nobody holds its lock: a dead save's
    export.save(tmp_path / "m.safetensors", {"a": np.ones(2, np.float32)})
    assert temporaries(tmp_path) == [os.path.basename(busy)]
  assert temporaries(tmp_path) == [os.path.basename(busy)]  # the block did not raise: the caller renames it
  os.unlink(busy)


def test_overwrite_keeps_the_file_mode(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, {"a": np.ones(2, np.float32)})
  for mode in (0o640, 0o600, 0o444):
    os.chmod(path, mode)
    export.save(path, {"a": np.zeros(2, np.float32)})
    assert (os.stat(path).st_mode & 0o777) == mode
  assert temporaries(tmp_path) == []


def test_file_then_rename_then_folder_are_synced(tmp_path, monkeypatch):
  import stat

  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
    real_fsync(fd)

  def replace(src, dst):
    events.append("rename")
    real_replace(src, dst)

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(os, "replace", replace)
  export.save(tmp_path / "m.safetensors", {"a": np.ones(2, np.float32)})
  assert events == ["fsync file", "rename", "fsync folder"]


# --- format 3: the compact header (issue 17) ---------------------------------------------


def header_bytes(path):
  import struct

  return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_format2_files_still_load_bit_exact(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=2)
  assert_same(every_leaf_tree(), export.load(path))
  with pytest.raises(ValueError, match="version must be one of"):
    export.save(path, {}, version=1)


def test_format3_header_is_a_fraction_of_format2s(tmp_path):
  v2, v3 = tmp_path / "v2.safetensors", tmp_path / "v3.safetensors"
  export.save(v2, every_leaf_tree(), version=2)
  export.save(v3, every_leaf_tree(), version=3)
  # format 2 spends a SHA-256 and a tensor-table entry per array, and dict keys per node;
  # format 3's overhead beyond the same payload (its zlib'd document and one digest) is a fraction
  payload = v2.stat().st_size - header_bytes(v2) - 8
  assert (v3.stat().st_size - payload) * 10 < v2.stat().st_size - payload


def test_format3_header_uses_its_preset_dictionary_and_loads_files_without_one(tmp_path):
  import json
  import zlib

  from jaxcompress.export import _io

  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), version=3)
  header, blob = read_file(path)
  head = json.loads(header["__metadata__"]["jaxcompress"])
  assert head["dict"] == 1
  doc, data = _io._unpack_v3(head["header"], np.frombuffer(blob, np.uint8), 1)
  text = json.dumps(doc, separators=(",", ":")).encode()
  assert head["header"] < 0.9 * len(zlib.compress(text, 9))  # measured 394 B vs 476 B without the dictionary
  plain = zlib.compress(text, 9)  # a file written before the dictionary: "dict" absent
  old = _io.safetensors.numpy.save(
    {_io._DATA_KEY: np.frombuffer(plain + data.tobytes(), np.uint8)},
    metadata=_with_digest({"jaxcompress": json.dumps({"version": 3, "header": len(plain)})}, plain + data.tobytes()),
  )
  path.write_bytes(old)
  assert_same(export.load(path), every_leaf_tree())
  for bad, message in ((2, r"preset dictionary 2, expected one of \[1\]"), (None, r"not a zlib stream")):
    meta = {"jaxcompress": json.dumps({"version": 3, "header": head["header"], "dict": bad})}
    body = blob if isinstance(blob, bytes) else bytes(blob)
    path.write_bytes(
      _io.safetensors.numpy.save({_io._DATA_KEY: np.frombuffer(body, np.uint8)}, metadata=_with_digest(meta, body))
    )
    with pytest.raises(_io.CorruptFileError, match=message):
      export.load(path)


def _with_digest(metadata, body):
  from jaxcompress.export import _io

  metadata[_io.DIGEST_KEY] = _io.file_digest(metadata, {_io._DATA_KEY: ("U8", [len(body)])}, body)
  return metadata


def test_format3_refuses_unused_arrays_bad_bools_and_a_zlib_bomb(tmp_path):
  import zlib

  path = tmp_path / "m.safetensors"
  data = np.ones(3, np.float32).tobytes() + b"\x01\x00"
  write3(path, {"arrays": [["f4", [3]], ["b1", [2]]], "tree": {"a": 0}}, data)  # the bool array is unused
  with pytest.raises(export.CorruptFileError, match=r"arrays the tree does not use: \['1'\]"):
    export.load(path)
  write3(path, {"arrays": [["b1", [2]]], "tree": {"b": 0}}, b"\x01\x02")
  with pytest.raises(export.CorruptFileError, match="bool but holds a byte other than 0 or 1"):
    export.load(path)
  write3(path, {"arrays": [["f4", [3]]], "tree": {"a": 0}}, data)
  with pytest.raises(export.CorruptFileError, match="its arrays need 12 bytes, its data holds 14"):
    export.load(path)
  from jaxcompress.export import _io

  bomb = zlib.compress(b" " * (_io._MAX_HEADER + 1), 9)
  with pytest.raises(export.CorruptFileError, match="inflating to at most 64 MiB"):
    _io._unpack_v3(len(bomb), np.frombuffer(bomb, np.uint8))


def test_format5_is_the_default_smaller_than_format3_and_round_trips(tmp_path):
  from jaxcompress.export import _io

  v3, v5 = tmp_path / "v3.safetensors", tmp_path / "v5.safetensors"
  tree = {**every_leaf_tree(), "tied": [np.arange(4.0, dtype=np.float32)] * 2, "keys": {3: np.ones(2, np.int8)}}
  n3, n5 = export.save(v3, tree, version=3), export.save(v5, tree)
  with export.open_file(v5) as f:
    assert f.version == 5 and f.names == ("data",)
    assert_same(f.read(), tree)
  assert_same(export.load(v3), tree)
  header, blob = read_file(v5)
  assert header["__metadata__"] == {"jaxcompress": '{"version":5}'}  # no digest text, no lengths
  doc, data = _io._unpack_v5(np.frombuffer(blob, np.uint8))
  assert blob.endswith(data.tobytes()) and data.size < len(blob) - 32  # digest, length, document, then the arrays
  assert doc["arrays"].count(["f4", [4]]) == 1  # the tied array is stored once
  # the digest moved into the data (32 raw bytes instead of 64 hex characters and its key), the
  # document's length into a varint and its arrays inline: 144 B off this tree (measured)
  assert n5 < n3 - 100


def test_format5_any_edit_fails_the_checksum(tmp_path):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree(), extras={"act_bits": 8})
  good = path.read_bytes()
  _, blob = read_file(path)
  start = len(good) - len(blob)
  for at in (start, start + 31, start + 32, start + 40, len(good) - 1, len(good) // 2):  # digest, length, doc, arrays
    bad = bytearray(good)
    bad[at] ^= 1
    path.write_bytes(bytes(bad))
    with pytest.raises(export.CorruptFileError, match=r"does not match its checksum"):
      export.load(path)
  for edit in (add_metadata, set_meta("q4", bits=5)):
    path.write_bytes(good)
    rewrite5(path, edit, redigest=False)
    with pytest.raises(export.CorruptFileError, match=r"does not match its checksum"):
      export.load(path)
  path.write_bytes(good)
  rewrite5(path, add_metadata, redigest=True)  # a consistent edit with its digest recomputed loads
  assert_same(export.load(path), every_leaf_tree())
  with export.open_file(path) as f:
    assert f.extras == {"act_bits": 8}


@pytest.mark.parametrize("name", [n for n in V3_EDITS if not n.startswith("array")])
def test_format5_inconsistent_metadata_is_refused_even_with_a_valid_checksum(tmp_path, name):
  path = tmp_path / "m.safetensors"
  export.save(path, every_leaf_tree())
  edit, pattern = EDITS[name]
  rewrite5(path, edit, redigest=True)
  with pytest.raises(export.CorruptFileError, match=pattern) as info:
    export.load(path)
  assert str(path) in str(info.value)


def test_format5_refuses_malformed_documents(tmp_path):
  import json
  import zlib

  from jaxcompress.export import _io

  def write(text, *, length=None, tail=b""):
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _io._ZDICT5)
    document = deflate.compress(text.encode()) + deflate.flush() + tail
    rest = _io._varint(len(document) if length is None else length) + document + np.ones(2, np.float32).tobytes()
    meta = {"jaxcompress": _io._V5_META}
    digest = bytes.fromhex(_io.file_digest(meta, {"data": ("U8", [32 + len(rest)])}, rest))
    path = tmp_path / "m.safetensors"
    path.write_bytes(_io.safetensors.numpy.save({"data": np.frombuffer(digest + rest, np.uint8)}, metadata=meta))
    return path

  assert export.load(write(json.dumps({"a": ["f4", [2]]}))) == {"a": pytest.approx(np.ones(2))}
  cases = [
    (json.dumps({"a": 0}), {}, r"index 0 refers to none of the 0 arrays"),
    (json.dumps({"a": ["f4", [2], 1]}), {}, r"'a': malformed entry"),
    (json.dumps({"a": ["f4", [1]]}), {}, r"its arrays need 4 bytes, its data holds 8"),
    (json.dumps({"a": ["f4", [2]]}), {"length": 10**6}, r"header length 1000000 does not fit"),
    (json.dumps({"a": ["f4", [2]]}), {"tail": b"x"}, r"not one DEFLATE stream"),
  ]
  for text, kw, pattern in cases:
    with pytest.raises(export.CorruptFileError, match=pattern):
      export.load(write(text, **kw))


def test_a_static_field_added_later_is_stored_by_name_and_older_files_load(tmp_path, monkeypatch):
  import dataclasses

  from jaxcompress.export import _checks, _io

  codes = np.random.default_rng(2).choice(4, size=(9, 7), p=[0.7, 0.1, 0.1, 0.1])
  stream = export.pack_bits(codes, 2, signed=False)
  old = {"one": export.HuffmanArray.encode(stream), "ext": export.HuffmanArray.encode(stream, 3, "product")}
  paths = {v: tmp_path / f"v{v}.safetensors" for v in (2, 3, 4, 5)}
  for v, p in paths.items():
    export.save(p, old, version=v)  # written before the field existed
  before = paths[5].read_bytes()

  @dataclasses.dataclass(frozen=True)
  class Grown(export.HuffmanArray):  # HuffmanArray as a later version might declare it
    note: int | None = None

  Grown.__name__ = Grown.__qualname__ = "HuffmanArray"
  monkeypatch.setitem(_io._LEAF_TYPES, "HuffmanArray", Grown)
  monkeypatch.setitem(_checks._CHECKS, Grown, _checks._CHECKS[export.HuffmanArray])
  monkeypatch.setitem(_io._NAMED_META, "HuffmanArray", {"note": None})
  monkeypatch.setitem(_io._META_FIELDS, "HuffmanArray", _io._POSITIONAL_META["HuffmanArray"] + ("note",))
  grown = {k: Grown(**{f.name: getattr(x, f.name) for f in dataclasses.fields(x)}) for k, x in old.items()}
  for p in paths.values():
    assert_same(export.load(p), grown)  # the older files load, the new field at its default
  export.save(paths[5], grown)
  assert paths[5].read_bytes() == before  # at its default the field is not stored: the same bytes
  noted = {k: dataclasses.replace(x, note=7) for k, x in grown.items()}
  for v, p in paths.items():
    export.save(p, noted, version=v)
    back = export.load(p)
    assert_same(back, noted)  # stored by position, 7 would have read back as "one"'s block
    assert (back["one"].block, back["ext"].block, back["one"].note) == (1, 3, 7)
  doc, data = _io._tree_document(noted)
  assert doc["tree"]["one"][1] == [2, [9, 7], False, None, {"note": 7}]  # block 1 left out, as before
  assert doc["tree"]["ext"][1] == [2, [9, 7], False, None, 3, {"note": 7}]
  for named, message in (({"colour": 1}, r"named static fields \['colour'\]"), ({}, r"named static fields \[\]")):
    doc["tree"]["one"][1][-1] = named
    write3(paths[3], doc, data)
    with pytest.raises(export.CorruptFileError, match=message + r", expected one or more of \['note'\]"):
      export.load(paths[3])
  monkeypatch.undo()
  tree = _io._tree_document(old)[0]["tree"]  # without the field: the static lists as before, no object
  assert (tree["one"][1], tree["ext"][1]) == ([2, [9, 7], False, None], [2, [9, 7], False, None, 3])
