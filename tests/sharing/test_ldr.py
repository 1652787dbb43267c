"""Toeplitz-like layers of low displacement rank: the displacement operator, generators, FFT products, packing."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxcompress as jc


def _w(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _np_f_circulant(v, f):
  n = len(v)
  return np.array([[v[i - j] if i >= j else f * v[i - j + n] for j in range(n)] for i in range(n)])


def _np_shift(n, f):  # Z_f: ones below the diagonal, f in the top-right corner
  z = np.eye(n, k=-1)
  z[0, -1] = f
  return z


def test_displacement_and_dense_match_the_numpy_formulas():
  n, r = 6, 2
  g, h = np.asarray(_w((r, n))), np.asarray(_w((r, n), 1))
  m = sum(_np_f_circulant(g[k], 1.0) @ _np_f_circulant(h[k], -1.0) for k in range(r))
  np.testing.assert_allclose(jc.export.ldr_dense(jnp.asarray(g), jnp.asarray(h), (n, n)), m, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jc.export.ldr_dense(jnp.asarray(g), jnp.asarray(h), (4, 6)), m[:4], rtol=1e-5, atol=1e-5)
  lm = _np_shift(n, 1.0) @ m - m @ _np_shift(n, -1.0)
  np.testing.assert_allclose(jc.sharing.displacement(jnp.asarray(m)), lm, rtol=1e-5, atol=1e-5)
  assert np.linalg.matrix_rank(lm, tol=1e-4) == r  # the displacement rank is r
  np.testing.assert_allclose(lm, 2 * g.T @ h[:, ::-1], rtol=1e-4, atol=1e-4)  # L[M] = 2 G (J H)^T
  toeplitz = scipy.linalg.toeplitz(np.asarray(_w((n,), 2)), np.asarray(_w((n,), 3)))
  assert np.linalg.matrix_rank(np.asarray(jc.sharing.displacement(jnp.asarray(toeplitz))), tol=1e-4) <= 2


def test_nearest_ldr_is_exact_at_full_rank_and_on_toeplitz_and_optimal_in_displacement():
  w = _w((5, 7))
  g, h = jc.sharing.nearest_ldr(w, 7)
  np.testing.assert_allclose(jc.export.ldr_dense(g, h, (5, 7)), w, rtol=1e-4, atol=1e-4)
  t = jnp.asarray(scipy.linalg.toeplitz(np.asarray(_w((6,), 2)), np.asarray(_w((6,), 3))))
  np.testing.assert_allclose(jc.export.ldr_dense(*jc.sharing.nearest_ldr(t, 2), (6, 6)), t, rtol=1e-4, atol=1e-4)
  # rank 2 of a random square: the displacement error is the tail of L[w]'s singular values (Eckart-Young)
  w = _w((8, 8), 4)
  g, h = jc.sharing.nearest_ldr(w, 2)
  m = jc.export.ldr_dense(g, h, (8, 8))
  s = np.linalg.svd(np.asarray(jc.sharing.displacement(w)), compute_uv=False)
  err = np.linalg.norm(np.asarray(jc.sharing.displacement(w) - jc.sharing.displacement(m)))
  np.testing.assert_allclose(err, np.sqrt(np.sum(s[2:] ** 2)), rtol=1e-4)
  with pytest.raises(ValueError, match="rank=8 exceeds"):
    jc.sharing.nearest_ldr(_w((5, 7)), 8)
  with pytest.raises(ValueError, match=r"rank must be in \[1, inf\], got 0"):
    jc.sharing.nearest_ldr(w, 0)


def test_ldr_matmul_equals_the_dense_product():
  g, h = _w((3, 16)), _w((3, 16), 1)
  x = _w((4, 12), 2)
  dense = jc.export.ldr_dense(g, h, (12, 10))
  np.testing.assert_allclose(jc.sharing.ldr_matmul(x, g, h, 10), x @ dense, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="does not fit"):
    jc.sharing.ldr_matmul(_w((2, 17)), g, h, 10)


def test_ldr_trains_packs_exactly_and_the_fft_rewrite_matches():
  params = {"fc": {"kernel": _w((16, 8)), "bias": jnp.zeros(8)}}
  c = jc.sharing.ldr(2, fft=True)
  trainable, state = c.init(params)
  assert trainable["fc"]["kernel"].g.shape == (2, 16)
  leaf = c.pack(trainable, state)["fc"]["kernel"]
  assert isinstance(leaf, jc.export.DisplacementArray) and leaf.nbytes == 4 * 2 * 2 * 16
  np.testing.assert_array_equal(leaf.materialize(), c.apply(trainable, state)["fc"]["kernel"])
  with tempfile.TemporaryDirectory() as d:  # format 3 knows the leaf, and checks its generators' shapes
    jc.export.save(os.path.join(d, "m.safetensors"), {"w": leaf})
    np.testing.assert_array_equal(
      jc.export.load(os.path.join(d, "m.safetensors"))["w"].materialize(), leaf.materialize()
    )
    bad = jc.export.DisplacementArray(g=leaf.g, h=leaf.h[:, :8], dense_shape=(16, 8))
    with pytest.raises(ValueError, match="needs generators of shape"):
      jc.export.save(os.path.join(d, "bad.safetensors"), {"w": bad})
  apply = lambda p, x: x @ p["fc"]["kernel"] + p["fc"]["bias"]
  x = _w((3, 16), 5)
  fft_loss = lambda t: jnp.sum(c.rewrite(apply, t, state)(c.apply(t, state), x) ** 2)
  dense_loss = lambda t: jnp.sum(apply(c.apply(t, state), x) ** 2)
  np.testing.assert_allclose(jax.jit(fft_loss)(trainable), jax.jit(dense_loss)(trainable), rtol=1e-4)
  g_fft = jax.jit(jax.grad(fft_loss))(trainable)
  g_dense = jax.jit(jax.grad(dense_loss))(trainable)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3), g_fft, g_dense)
  packed = c.pack(trainable, state)
  served = jc.sharing.serve(apply, packed)
  np.testing.assert_allclose(served(x), apply(jc.export.materialize_tree(packed), x), rtol=1e-4, atol=1e-4)
  assert "fft" in str(jax.make_jaxpr(jc.sharing.structured(apply))(packed, x))  # the product runs as FFTs
  fresh = jc.sharing.ldr(2, init="sample")
  view = fresh.apply(*fresh.init(params))["fc"]["kernel"]
  assert 0.3 < float(jnp.std(view)) / float(jnp.std(params["fc"]["kernel"])) < 3  # the variance is kept
  with pytest.raises(ValueError, match="rank=17 exceeds the displacement rank of leaf 'fc/kernel'"):
    jc.sharing.ldr(17).init(params)
  with pytest.raises(ValueError, match="rank"):
    jc.sharing.ldr(0)
  for c in (jc.sharing.ldr(1, where="b"), jc.sharing.toeplitz(where="b")):  # a vector is not a matrix
    with pytest.raises(ValueError, match=r"leaf 'b' has shape \(5,\)"):
      c.init({"b": jnp.ones(5)})
