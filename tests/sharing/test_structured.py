"""Block-circulant and Toeplitz layers: nearest structured matrix, FFT products, packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxcompress as jc


def _w(shape=(8, 12), seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def test_nearest_circulant_is_the_mean_along_each_wrapped_diagonal():
  w = np.asarray(_w())
  b = 4
  vectors = np.asarray(jc.sharing.nearest_circulant(jnp.asarray(w), b))
  assert vectors.shape == (2, 3, 4)
  for bi in range(2):
    for bj in range(3):
      block = w[bi * b : (bi + 1) * b, bj * b : (bj + 1) * b]
      expected = [np.mean([block[i, (i - d) % b] for i in range(b)]) for d in range(b)]
      np.testing.assert_allclose(vectors[bi, bj], expected, rtol=1e-5, atol=1e-6)
  dense = np.asarray(jc.export.circulant_dense(jnp.asarray(vectors), w.shape))
  for bi in range(2):
    for bj in range(3):
      peer = scipy.linalg.circulant(vectors[bi, bj])
      np.testing.assert_array_equal(dense[bi * b : (bi + 1) * b, bj * b : (bj + 1) * b], peer)
  # least squares: the residual is orthogonal to every circulant direction
  residual = w - dense
  for d in range(b):
    direction = np.asarray(jc.export.circulant_dense(jnp.asarray(np.eye(b)[d])[None, None], (b, b)))
    assert abs(np.sum(residual[:b, :b] * direction)) < 1e-5


def test_circulant_matmul_equals_the_dense_product():
  vectors = _w((3, 2, 8))
  x = _w((5, 24), seed=1)
  dense = jc.export.circulant_dense(vectors, (24, 16))
  np.testing.assert_allclose(jax.jit(jc.sharing.circulant_matmul)(x, vectors), x @ dense, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="23 features"):
    jc.sharing.circulant_matmul(x[:, :23], vectors)


def test_circulant_gradient_sums_each_wrapped_diagonal():
  c = jc.sharing.circulant(4)
  params, state = c.init({"w": _w()})
  g_view = np.asarray(_w(seed=2))
  g = jax.grad(lambda p: jnp.sum(c.apply(p, state)["w"] * g_view))(params)["w"]
  np.testing.assert_allclose(g, jc.sharing.nearest_circulant(jnp.asarray(g_view), 4) * 4, rtol=1e-5)


def test_circulant_sample_init_keeps_each_blocks_first_column():
  w = _w()
  c = jc.sharing.circulant(4, init="sample")
  view = np.asarray(c.apply(*c.init({"w": w}))["w"])
  np.testing.assert_array_equal(view[:, ::4], np.asarray(w)[:, ::4])


def test_circulant_packs_vectors_and_composes_with_int8():
  params = {"w": _w((32, 32))}
  c = jc.sharing.circulant(8)
  trainable, state = c.init(params)
  leaf = c.pack(trainable, state)["w"]
  assert isinstance(leaf, jc.export.CirculantArray) and leaf.nbytes == 4 * 32 * 32 // 8
  np.testing.assert_array_equal(leaf.materialize(), c.apply(trainable, state)["w"])
  chained = jc.chain(jc.sharing.circulant(8), jc.quantization.fake_quant(8))
  cp, cs = chained.init(params)
  packed = chained.pack(cp, cs)["w"]
  assert isinstance(packed, jc.export.CirculantArray) and packed.nbytes < leaf.nbytes
  np.testing.assert_array_equal(packed.materialize(), chained.apply(cp, cs)["w"])


def test_circulant_bad_block_names_the_value():
  with pytest.raises(ValueError, match="block=5 does not divide the 8 x 12 matrix of leaf 'w'"):
    jc.sharing.circulant(5).init({"w": _w()})
  with pytest.raises(ValueError, match="block"):
    jc.sharing.circulant(0)


def test_nearest_toeplitz_is_the_mean_along_each_diagonal_and_matches_scipy():
  w = np.asarray(_w((5, 7)))
  t = np.asarray(jc.sharing.nearest_toeplitz(jnp.asarray(w)))
  m, n = w.shape
  expected = [np.mean(np.diagonal(w, offset=n - 1 - k)) for k in range(m + n - 1)]
  np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-6)
  dense = np.asarray(jc.export.toeplitz_dense(jnp.asarray(t), (m, n)))
  np.testing.assert_array_equal(dense, scipy.linalg.toeplitz(t[n - 1 :], t[n - 1 :: -1]))
  x = _w((3, 5), seed=1)
  np.testing.assert_allclose(jc.sharing.toeplitz_matmul(x, jnp.asarray(t), n), x @ dense, rtol=1e-4, atol=1e-5)


def test_toeplitz_trains_packs_and_composes_with_int8():
  params = {"w": _w((16, 8))}
  c = jc.sharing.toeplitz()
  trainable, state = c.init(params)
  assert trainable["w"].shape == (23,)
  leaf = c.pack(trainable, state)["w"]
  assert isinstance(leaf, jc.export.ToeplitzArray) and leaf.nbytes == 4 * 23
  np.testing.assert_array_equal(leaf.materialize(), c.apply(trainable, state)["w"])
  g = jax.grad(lambda p: c.apply(p, state)["w"].sum())(trainable)["w"]
  counts = [np.diagonal(np.ones((16, 8)), offset=7 - k).size for k in range(23)]
  np.testing.assert_array_equal(g, counts)  # each diagonal: the summed gradient along it
  sample = jc.sharing.toeplitz(init="sample")
  view = np.asarray(sample.apply(*sample.init(params))["w"])
  np.testing.assert_array_equal(view[0], np.asarray(params["w"])[0])
  np.testing.assert_array_equal(view[:, 0], np.asarray(params["w"])[:, 0])
  with pytest.raises(ValueError, match="init"):
    jc.sharing.toeplitz(init="dense")


def test_fft_rewrite_gives_the_dense_outputs_and_gradients():
  params = {
    "fc0": {"kernel": _w((16, 32)), "bias": jnp.zeros(32)},
    "fc1": {"kernel": _w((32, 8), 1), "bias": jnp.zeros(8)},
  }

  def apply(p, x):
    return jax.nn.relu(x @ p["fc0"]["kernel"] + p["fc0"]["bias"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"]

  x = _w((4, 16), seed=2)
  dense_c = jc.sharing.circulant(8)
  fft_c = jc.sharing.circulant(8, fft=True)
  trainable, state = fft_c.init(params)
  loss = lambda c: jax.jit(lambda t: jnp.sum(c.rewrite(apply, t, state)(c.apply(t, state), x) ** 2))
  np.testing.assert_allclose(loss(fft_c)(trainable), loss(dense_c)(trainable), rtol=1e-5)
  g_fft = jax.jit(jax.grad(loss(fft_c)))(trainable)
  g_dense = jax.jit(jax.grad(loss(dense_c)))(trainable)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_fft, g_dense)
  jaxpr = str(jax.make_jaxpr(fft_c.rewrite(apply, trainable, state))(fft_c.apply(trainable, state), x))
  assert "fft" in jaxpr
