"""K-means codebook quantization: Lloyd's algorithm, initializations, centroid gradients."""

import importlib
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

km = importlib.import_module("jaxcompress.quantization._kmeans")


def _w(seed=0, shape=(12, 10)):
  return jax.random.normal(jax.random.key(seed), shape) * 0.3


def _lloyd(x, c, iterations):
  for _ in range(iterations):
    idx = np.abs(x[:, None] - c[None]).argmin(1)
    c = np.array([x[idx == j].mean() if (idx == j).any() else c[j] for j in range(len(c))], np.float32)
  return c, np.abs(x[:, None] - c[None]).argmin(1)


def test_kmeans_matches_lloyd_in_numpy():
  x = np.asarray(_w().reshape(-1))
  init = np.linspace(x.min(), x.max(), 6).astype(np.float32)
  c, idx = km.kmeans_1d(jnp.asarray(x), jnp.asarray(init), 7)
  c_ref, idx_ref = _lloyd(x, init, 7)
  np.testing.assert_allclose(c, c_ref, rtol=1e-5)
  np.testing.assert_array_equal(idx, idx_ref)


def test_initializations():
  x = _w(1).reshape(-1)
  np.testing.assert_allclose(km.init_centroids(x, 5, "linear"), np.linspace(x.min(), x.max(), 5), atol=1e-7)
  density = km.init_centroids(x, 5, "density")
  np.testing.assert_allclose(density, np.quantile(x, np.linspace(0, 1, 5)), rtol=1e-5, atol=1e-7)
  pp = np.asarray(km.init_centroids(x, 5, "kmeans++", jax.random.key(0)))
  assert np.all(np.isin(pp, np.asarray(x))) and np.all(np.diff(pp) >= 0)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    km.init_centroids(x, 5, "kmeans++")


def test_centroid_gradient_is_the_sum_of_assigned_weight_gradients():
  c = jc.quantization.kmeans(8, iterations=5)
  p, s = c.init({"k": _w(2), "b": jnp.ones(3)})
  idx = np.asarray(s.leaves["k"].indices)
  g = np.asarray(jax.random.normal(jax.random.key(3), idx.shape))
  grad = jax.grad(lambda p: (c.apply(p, s)["k"] * g).sum())(p)["k"]
  np.testing.assert_allclose(grad, np.bincount(idx.reshape(-1), g.reshape(-1), minlength=8), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(c.apply(p, s)["k"], np.asarray(p["k"])[idx])


@pytest.mark.parametrize("method", km.CENTROID_INITS)
def test_fewer_distinct_values_than_clusters(method):
  w = jnp.array([[0.5, -1.0, 0.5, 2.0], [2.0, -1.0, -1.0, 0.5]])
  c = jc.quantization.kmeans(8, centroid_init=method)
  p, s = c.init({"k": w})
  assert np.all(np.isfinite(np.asarray(p["k"])))
  np.testing.assert_array_equal(c.apply(p, s)["k"], w)


def test_per_channel_codebooks_and_packing():
  w = _w(4, (20, 3))
  c = jc.quantization.kmeans(4, per_channel=True, centroid_init="kmeans++", seed=2)
  p, s = c.init({"k": w})
  assert p["k"].shape == (3, 4)
  out = np.asarray(c.apply(p, s)["k"])
  for j in range(3):
    assert set(out[:, j]) <= set(np.asarray(p["k"])[j])
  packed = c.pack(p, s)["k"]
  assert packed.axis == 1 and packed.indices.bits == 2
  np.testing.assert_array_equal(packed.materialize(), out)
  with tempfile.TemporaryDirectory() as d:
    jc.export.save(os.path.join(d, "m.safetensors"), {"k": packed})
    loaded = jc.export.load(os.path.join(d, "m.safetensors"))["k"]
  assert loaded.axis == 1
  np.testing.assert_array_equal(loaded.materialize(), out)


def test_packs_at_log2_k_bits_and_init_is_jittable():
  c = jc.quantization.kmeans(16)
  params = {"k": _w(5, (40, 20))}
  p, s = c.init(params)
  pj, sj = jax.jit(c.init)(params)
  np.testing.assert_allclose(p["k"], pj["k"], rtol=1e-6)
  np.testing.assert_array_equal(s.leaves["k"].indices, sj.leaves["k"].indices)
  packed = c.pack(p, s)["k"]
  assert packed.indices.bits == 4 and packed.indices.nbytes == 800 * 4 // 8


def test_bad_input():
  for bad in (1, 0, -3):
    with pytest.raises(ValueError, match=f"clusters must be in \\[2, inf\\], got {bad}"):
      jc.quantization.kmeans(bad)
  with pytest.raises(ValueError, match="clusters=16 is larger than the 12 weights"):
    jc.quantization.kmeans(16).init({"k": _w(0, (3, 4))})
  with pytest.raises(ValueError, match="clusters=4 is larger than the 3 weights per codebook"):
    jc.quantization.kmeans(4, per_channel=True).init({"k": _w(0, (3, 4))})
  with pytest.raises(ValueError, match="centroid_init must be one of"):
    jc.quantization.kmeans(4, centroid_init="random")
  c = jc.quantization.kmeans(4)
  _, s = c.init({"k": _w()})
  with pytest.raises(ValueError, match="expected a codebook of shape"):
    c.apply({"k": _w()}, s)


def test_per_channel_codebook_array_validation():
  with pytest.raises(ValueError, match=r"per-channel codebook must have shape \(3, k >= 1\)"):
    jc.export.from_assignments(np.zeros((2, 4), np.float32), np.zeros((5, 3), np.int32), axis=1)


def test_half_codebooks_are_what_apply_trains_and_the_file_stores(tmp_path):
  # Deep Compression keeps float32 centroids; codebook_dtype='float16' rounds each (NumPy's
  # float16 conversion is the reference), saturating at float16's largest finite value
  w = {"k": _w(3, (12, 10)), "big": jnp.array([[3e38, -3e38], [1.0, 2.0]], jnp.float32)}
  full, half = jc.quantization.kmeans(4), jc.quantization.kmeans(4, codebook_dtype="float16")
  p, s = half.init(w)  # the same clustering as full's: only apply and pack round
  book = np.asarray(p["k"])
  want = book.astype(np.float16).astype(np.float32)[np.asarray(s.leaves["k"].indices)]
  dense = half.apply(p, s)
  np.testing.assert_array_equal(dense["k"], want)
  assert not np.array_equal(want, full.apply(p, s)["k"])  # the rounding is visible
  big = np.asarray(dense["big"])
  assert np.isfinite(big).all() and np.abs(big).max() == 65504.0
  # straight through: each centroid's gradient is still the sum over its weights (Eq. 3)
  g = jax.grad(lambda q: jnp.sum(half.apply(q, s)["k"] * jnp.arange(120.0).reshape(12, 10)))(p)["k"]
  idx = np.asarray(s.leaves["k"].indices).reshape(-1)
  np.testing.assert_allclose(g, [np.arange(120.0)[idx == j].sum() for j in range(4)], rtol=1e-6)
  packed = half.pack(p, s)
  assert packed["k"].codebook.dtype == np.float16 and packed["k"].dtype == "float32"
  assert packed["k"].nbytes == full.pack(p, s)["k"].nbytes - 8
  for version in (2, 4, 5):
    path = tmp_path / f"m{version}.safetensors"
    jc.export.save(path, packed, version=version)
    back = jc.export.materialize_tree(jc.export.load(path))
    for k in w:
      assert back[k].dtype == jnp.float32
      np.testing.assert_array_equal(back[k], dense[k])
  with pytest.raises(ValueError, match="codebook_dtype must be None or a floating dtype name"):
    jc.quantization.kmeans(4, codebook_dtype="int8")
  with pytest.raises(ValueError, match="dtype must be a floating dtype"):
    jc.export.from_assignments(np.zeros(4, np.float16), np.zeros(3, np.int32), dtype="int32")
  same = jc.export.from_assignments(np.zeros(4, np.float16), np.zeros(3, np.int32), dtype="float16")
  assert same.dtype is None  # the codebook's own dtype is not stored
