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
