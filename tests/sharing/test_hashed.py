"""HashedNets: the hash, the least-squares init, gradients through the gather, the packed leaf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc


def _w(shape=(12, 10), seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def test_murmur3_matches_the_reference_vectors():
  # SMHasher's MurmurHash3_x86_32 vectors for 4-byte keys (little-endian).
  vectors = [(0, 0, 0x2362F9DE), (0x87654321, 0, 0xF55B516B), (0x87654321, 0x5082EDEE, 0x2362F9DE)]
  vectors.append((0xFFFFFFFF, 0, 0x76293B50))
  for key, seed, expected in vectors:
    assert int(jc.export.murmur3_32(jnp.uint32(key), jnp.uint32(seed))) == expected


def test_hash_is_deterministic_jittable_and_spread():
  seed = jnp.uint32(7)
  index, negative = jc.export.hash_coordinates(seed, 4096, 64)
  jitted = jax.jit(jc.export.hash_coordinates, static_argnums=(1, 2))(seed, 4096, 64)
  np.testing.assert_array_equal(index, jitted[0])
  np.testing.assert_array_equal(negative, jitted[1])
  counts = np.bincount(np.asarray(index), minlength=64)
  assert counts.min() > 30 and counts.max() < 110  # 64 expected per bucket
  assert 0.45 < float(np.mean(negative)) < 0.55
  other, _ = jc.export.hash_coordinates(jnp.uint32(8), 4096, 64)
  assert np.mean(np.asarray(other) == np.asarray(index)) < 0.05


def test_least_squares_init_is_the_signed_bucket_mean():
  w = _w()
  c = jc.sharing.hashed(buckets=9)
  params, state = c.init({"w": w})
  seed = state.leaves["w"].seed
  index, negative = (np.asarray(a) for a in jc.export.hash_coordinates(seed, w.size, 9))
  x = np.where(negative, -1.0, 1.0) * np.asarray(w).reshape(-1)
  expected = [x[index == k].mean() for k in range(9)]
  np.testing.assert_allclose(params["w"], expected, rtol=1e-5, atol=1e-7)
  # least squares: no other values are closer to w
  view = np.asarray(c.apply(params, state)["w"])
  err = np.sum((view - np.asarray(w)) ** 2)
  bumped = params["w"].at[3].add(0.01)
  assert np.sum((np.asarray(c.apply({"w": bumped}, state)["w"]) - np.asarray(w)) ** 2) > err


def test_sample_init_agrees_with_w_at_the_first_coordinate_of_each_bucket():
  w = _w()
  c = jc.sharing.hashed(buckets=20, init="sample")
  params, state = c.init({"w": w})
  index, _ = jc.export.hash_coordinates(state.leaves["w"].seed, w.size, 20)
  view = np.asarray(c.apply(params, state)["w"]).reshape(-1)
  for k in range(20):
    first = np.flatnonzero(np.asarray(index) == k)[0]
    assert view[first] == np.asarray(w).reshape(-1)[first]


def test_gradient_is_the_signed_scatter_add_of_the_virtual_gradients():
  w = _w()
  c = jc.sharing.hashed(ratio=0.05)
  params, state = c.init({"w": w})
  assert params["w"].shape == (6,)
  g_view = _w(seed=3)
  g = jax.grad(lambda p: jnp.sum(c.apply(p, state)["w"] * g_view))(params)["w"]
  index, negative = (np.asarray(a) for a in jc.export.hash_coordinates(state.leaves["w"].seed, 120, 6))
  expected = np.zeros(6, np.float32)
  np.add.at(expected, index, np.where(negative, -1.0, 1.0) * np.asarray(g_view).reshape(-1))
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)


def test_pack_stores_k_values_and_the_seed_only():
  params = {"a": _w((16, 8)), "b": _w((8, 4), seed=1)}
  c = jc.sharing.hashed(1 / 8)
  trainable, state = c.init(params)
  packed = c.pack(trainable, state)
  for name, k in (("a", 16), ("b", 4)):
    leaf = packed[name]
    assert isinstance(leaf, jc.export.HashedArray)
    assert leaf.nbytes == 4 * k + 4 and leaf.seed.dtype == np.uint32 and leaf.seed.shape == ()
    np.testing.assert_array_equal(leaf.materialize(), c.apply(trainable, state)[name])
  assert int(packed["a"].seed) != int(packed["b"].seed)  # each layer its own hash


def test_pruning_a_hashed_leaf_falls_back_to_a_masked_array():
  c = jc.sharing.hashed(buckets=8)
  trainable, state = c.init({"w": _w()})
  leaf = c.pack(trainable, state)["w"]
  mask = np.asarray(_w(seed=5)) > 0
  pruned = jc.export.prune(leaf, mask)
  assert isinstance(pruned, jc.export.MaskedArray)
  np.testing.assert_array_equal(pruned.materialize(), np.where(mask, leaf.materialize(), 0))


def test_chain_with_int8_keeps_the_hashed_structure_and_shrinks():
  params = {"w": _w((64, 64))}
  c = jc.chain(jc.sharing.hashed(1 / 4), jc.quantization.fake_quant(8))
  packed = c.pack(*c.init(params))["w"]
  alone = jc.sharing.hashed(1 / 4)
  assert isinstance(packed, jc.export.HashedArray) and isinstance(packed.values, jc.export.CodebookArray)
  assert packed.nbytes < alone.pack(*alone.init(params))["w"].nbytes / 2
  np.testing.assert_array_equal(packed.materialize(), c.apply(*c.init(params))["w"])


def test_bad_inputs_name_the_value():
  with pytest.raises(ValueError, match="buckets=121 is larger than the 120 weights of leaf 'w'"):
    jc.sharing.hashed(buckets=121).init({"w": _w()})
  with pytest.raises(ValueError, match="exactly one of ratio and buckets"):
    jc.sharing.hashed(0.5, buckets=3)
  with pytest.raises(ValueError, match="exactly one"):
    jc.sharing.hashed()
  with pytest.raises(ValueError, match="ratio"):
    jc.sharing.hashed(1.5)
  with pytest.raises(ValueError, match="init"):
    jc.sharing.hashed(0.5, init="zeros")
  c = jc.sharing.hashed(buckets=4)
  _, state = c.init({"w": _w()})
  with pytest.raises(ValueError, match="pass the tree that init returned"):
    c.apply({"w": _w()}, state)
