"""Deploying from a file alone: serving parameters, narrowed modules, lazy and placed reads."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxcompress as jc
from jaxcompress import export

X = jax.random.normal(jax.random.key(0), (16, 8))


def mlp(p, x):
  return jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"]) @ p["l2"]["kernel"]


def mlp_params():
  k1, k2 = jax.random.split(jax.random.key(1))
  return {
    "l1": {"kernel": jax.random.normal(k1, (8, 12)), "bias": jnp.linspace(-0.5, 0.5, 12)},
    "l2": {"kernel": jax.random.normal(k2, (12, 3))},
  }


@pytest.fixture(scope="module")
def qat_model():
  c = jc.quantization.qat(8, 8, apply_fn=mlp, batches=[X])
  trainable, cstate = c.init(mlp_params())
  found = jc.quantization.activation_ranges((None, {"nested": cstate}))  # found through any nesting
  assert found.keys() == cstate.stages[1].data.keys()
  assert all(np.array_equal(found[k], cstate.stages[1].data[k]) for k in found)
  with pytest.raises(ValueError, match="no activation ranges"):
    jc.quantization.activation_ranges(jc.quantization.qat(8, 8).init(mlp_params())[1])  # dynamic: kept nowhere
  return c.pack(trainable, cstate), cstate.stages[1].data


def test_qat_w8a8_served_from_the_file_equals_the_in_memory_serve(tmp_path, qat_model):
  packed, ranges = qat_model
  path = tmp_path / "m.safetensors"
  export.save(path, packed, version=4, extras=jc.quantization.serving_extras(ranges, act_bits=8))
  with export.open_file(path) as f:  # the ranges come back bit for bit, as float32
    saved = f.extras["serve"]
  assert set(saved["act_ranges"]) == set(ranges) == {"l1/kernel", "l2/kernel"}
  for key, (lo, hi) in ranges.items():
    assert np.float32(saved["act_ranges"][key][0]) == lo and np.float32(saved["act_ranges"][key][1]) == hi
  expected = jc.quantization.serve(mlp, packed, act_ranges=ranges)(X)
  np.testing.assert_array_equal(jc.quantization.serve_file(path, mlp)(X), expected)


def test_serve_file_without_serving_parameters_and_bad_extras_raise(tmp_path, qat_model):
  path = tmp_path / "m.safetensors"
  export.save(path, qat_model[0], version=4, extras={"note": "no serve entry"})
  with pytest.raises(ValueError, match="holds no serving parameters"):
    jc.quantization.serve_file(path, mlp)
  with pytest.raises(ValueError, match="NaN"):
    export.save(path, qat_model[0], extras={"x": float("nan")})
  with pytest.raises(TypeError, match="cannot store"):
    export.save(path, qat_model[0], extras={"x": object()})
  with pytest.raises(ValueError, match="inverted"):
    jc.quantization.serving_extras({"l1/kernel": (1.0, 0.0)})


def test_a_channel_pruned_linen_model_is_rebuilt_from_the_file_alone(tmp_path):
  """(The NNX module rebuilt from the file is checked by examples/deploy_from_file.py, which CI runs.)"""
  path = tmp_path / "pruned.safetensors"
  module = nn.Sequential([nn.Dense(12), nn.relu, nn.Dense(3)])
  variables = module.init(jax.random.key(0), X)
  c = jc.pruning.channel_prune(0.5, apply_fn=module.apply, inputs=[X])
  small, cstate = c.init(variables)
  export.save(path, c.pack(small, cstate), version=4)
  params = export.materialize_tree(export.narrowed(export.load(path)))
  assert params["params"]["layers_0"]["kernel"].shape == (8, 6)
  np.testing.assert_allclose(
    jc.pruning.narrow_linen(module)(params, X), module.apply(c.apply(small, cstate), X), rtol=1e-6, atol=1e-6
  )


def _corrupt_tensor(path, name):
  """Flips the first byte of tensor ``name`` in place (the header, and its digest, stay as they were)."""
  blob = bytearray(path.read_bytes())
  (n,) = struct.unpack("<Q", blob[:8])
  start = 8 + n + json.loads(blob[8 : 8 + n])[name]["data_offsets"][0]
  blob[start] ^= 0xFF
  path.write_bytes(bytes(blob))


def test_a_lazy_read_touches_only_the_requested_tensors(tmp_path):
  tree = {"a": np.arange(6, dtype=np.float32), "b": {"kernel": np.ones((3, 4), np.float32)}}
  path = tmp_path / "lazy.safetensors"
  export.save(path, tree, version=4)
  _corrupt_tensor(path, "b/kernel")
  with export.open_file(path) as f:  # opening checks the header only
    assert f.paths == ("a", "b/kernel")
    out = f.read("a")
    np.testing.assert_array_equal(out["a"], tree["a"])
    assert out["b"] == {"kernel": None}
    with pytest.raises(export.CorruptFileError, match=r"b/kernel.*checksum"):
      f.read(lambda p: p.startswith("b/"))
    closed = f
  with pytest.raises(ValueError, match="closed"):
    closed.read("a")
  with pytest.raises(export.CorruptFileError, match="checksum"):
    export.load(path)


@pytest.mark.parametrize("version", [3, 4])
def test_extras_are_covered_by_the_checksum(tmp_path, version):
  path = tmp_path / "x.safetensors"
  export.save(path, {"w": np.ones(3, np.float32)}, version=version, extras={"act_bits": 8})
  blob = path.read_bytes()
  path.write_bytes(blob.replace(b'{\\"act_bits\\":8}', b'{\\"act_bits\\":4}'))
  assert path.read_bytes() != blob
  with pytest.raises(export.CorruptFileError, match="checksum"):
    export.open_file(path)


def test_load_places_arrays_on_a_device_or_a_named_sharding(tmp_path, qat_model):
  assert len(jax.devices()) == 8  # conftest's fake CPU devices
  packed = qat_model[0]
  path = tmp_path / "placed.safetensors"
  export.save(path, packed, version=4)
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("x",)), PartitionSpec())
  placed = export.load(path, sharding=sharding)
  arrays = jax.tree.leaves(placed)
  assert arrays and all(isinstance(a, jax.Array) and a.sharding == sharding for a in arrays)
  for a, b in zip(arrays, jax.tree.leaves(packed)):
    np.testing.assert_array_equal(a, b)
  on = export.load(path, device=jax.devices()[3])
  assert {d for a in jax.tree.leaves(on) for d in a.devices()} == {jax.devices()[3]}
  mesh = Mesh(np.array(jax.devices()), ("x",))  # a large model: its kernels split over 8 devices, the rest replicated
  names = []

  def per_tensor(name, a):
    names.append(name)
    return NamedSharding(mesh, PartitionSpec("x") if name == "l1/kernel.codes" else PartitionSpec())

  split = export.load(path, sharding=per_tensor)
  with export.open_file(path) as f:
    assert sorted(names) == sorted(f.names)
  codes = split["l1"]["kernel"].codes
  assert codes.sharding.spec == PartitionSpec("x") and len(codes.addressable_shards) == 8
  assert codes.addressable_shards[0].data.shape == (1, 12)
  np.testing.assert_array_equal(codes, packed["l1"]["kernel"].codes)
  with pytest.raises(ValueError, match="not both"):
    export.load(path, device=jax.devices()[0], sharding=sharding)


def test_a_plain_safetensors_reader_lists_readable_names(tmp_path, qat_model):
  packed = {"params": qat_model[0], "step": np.array(5, np.int32)}
  path = tmp_path / "plain.safetensors"
  export.save(path, packed, version=4)
  with safetensors.safe_open(str(path), framework="numpy") as f:
    names = set(f.keys())
    tensors = json.loads(f.metadata()["jaxcompress.tensors"])
    bias = f.get_tensor("params/l1/bias")
    codes = f.get_tensor("params/l1/kernel.codes")
  assert names == set(tensors) and "params/l1/kernel.scale" in names and "step" in names
  np.testing.assert_array_equal(bias, packed["params"]["l1"]["bias"])
  np.testing.assert_array_equal(codes, packed["params"]["l1"]["kernel"].codes)  # int8 codes, as stored
  assert tensors["params/l1/kernel.codes"].startswith("QArray(bits=8,") and tensors["params/l1/kernel.codes"].endswith(
    "int8[8,12]"
  )
  assert tensors["step"] == "dense int32[]"


def test_format_4_refuses_a_redigested_edit_of_a_static_field_or_a_shape(tmp_path):
  """Someone who recomputes the header digest still cannot make a leaf describe what its arrays do not hold."""
  from jaxcompress.export import _io

  codes = np.arange(-7, 8).reshape(3, 5) % 8
  tree = {
    "q": export.QArray(export.store_codes(codes, 4, signed=True), np.ones((1, 5), np.float32), None, 4, "float32")
  }
  path = tmp_path / "q.safetensors"

  def edited(edit):
    export.save(path, tree, version=4)
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header["__metadata__"]
    doc = json.loads(meta["jaxcompress"])
    edit(doc)
    meta["jaxcompress"] = json.dumps(doc)
    tensors = {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}
    meta[_io.DIGEST_KEY] = _io.header_digest(meta, tensors)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n :])
    return path

  def code_shape(doc):  # the BitPacked codes claim 30 codes, not 15
    doc["tree"]["q"][2][1][1] = [3, 10]

  def array_shape(doc):  # the scale's entry disagrees with the tensor table
    doc["arrays"]["q.scale"][1] = [5]

  with pytest.raises(export.CorruptFileError, match=r"q\.codes"):
    export.load(edited(code_shape))
  with pytest.raises(export.CorruptFileError, match="shape"):
    export.open_file(edited(array_shape))
  assert export.load(edited(lambda doc: None))["q"].bits == 4  # the unedited file reads
