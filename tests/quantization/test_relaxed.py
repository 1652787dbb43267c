"""Relaxed Quantization (Louizos et al. 2019): the grid categorical, its concrete relaxation,
the deterministic end and the compressors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from tests import helpers

q = jc.quantization


def _sigmoid(z):
  return 0.5 * (1 + np.tanh(z / 2))


def _reference_probabilities(x, alpha, beta, sigma, bits):
  """The paper's Eq. 3 in float64, truncated to the grid's range and renormalized."""
  g = beta + alpha * np.arange(2**bits)
  p = _sigmoid((g + alpha / 2 - x[:, None]) / sigma) - _sigmoid((g - alpha / 2 - x[:, None]) / sigma)
  return p / p.sum(-1, keepdims=True)


def test_probabilities_follow_the_paper_and_sum_to_one():
  x = np.linspace(-1.5, 2.5, 41)
  alpha, beta, sigma, bits = 0.4, -0.6, 0.15, 3
  logp = q.relaxed_log_probabilities(jnp.asarray(x, jnp.float32), alpha, beta, sigma, bits)
  p = np.exp(np.asarray(logp, np.float64))
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(p, _reference_probabilities(x, alpha, beta, sigma, bits), atol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_extreme_inputs_give_finite_probabilities_and_samples(dtype):
  big = float(jnp.finfo(dtype).max)
  x = jnp.asarray([-big, -1.0, 0.0, big], dtype)
  logp = q.relaxed_log_probabilities(x, 0.5, -1.0, 1e-6, 2)
  assert np.all(np.isfinite(np.asarray(logp)))
  p = np.exp(np.asarray(logp))
  np.testing.assert_allclose(p[[0, -1]].argmax(-1), [0, 3])  # far outside: the end points
  out = q.relaxed_sample(x, 0.5, -1.0, 1e-6, 2, 0.5, jax.random.key(0))
  assert out.dtype == dtype and np.all(np.isfinite(np.asarray(out)))


def test_hard_rounding_as_temperature_and_sigma_go_to_zero():
  x = jax.random.uniform(jax.random.key(1), (500,), minval=-2.0, maxval=2.0)
  alpha, beta, bits = 0.3, -1.2, 3
  nearest = beta + alpha * np.clip(np.round((np.asarray(x) - beta) / alpha), 0, 7)
  out = q.relaxed_sample(x, alpha, beta, 1e-4, bits, 1e-3, jax.random.key(2))
  np.testing.assert_allclose(out, nearest, atol=1e-5)
  np.testing.assert_allclose(q.relaxed_round(x, alpha, beta, bits), nearest, atol=1e-6)
  # at a large sigma and temperature the sample is spread out, far from the nearest point
  far = q.relaxed_sample(x, alpha, beta, 0.5, bits, 1.0, jax.random.key(2))
  assert np.mean(np.abs(np.asarray(far) - nearest)) > 0.05


def test_low_temperature_draws_follow_the_categorical():
  x = jnp.full((20000,), 0.17)
  alpha, beta, sigma, bits = 0.25, -0.5, 0.2, 2
  out = np.asarray(q.relaxed_sample(x, alpha, beta, sigma, bits, 1e-3, jax.random.key(3)))
  codes = np.round((out - beta) / alpha).astype(int)
  freq = np.bincount(codes, minlength=4) / codes.size
  np.testing.assert_allclose(freq, _reference_probabilities(np.array([0.17]), alpha, beta, sigma, bits)[0], atol=0.015)


def test_sample_gradients_match_finite_differences():
  x = jnp.asarray([-0.3, 0.1, 0.45, 0.8], jnp.float32)
  key = jax.random.key(4)
  f = lambda params: q.relaxed_sample(x, params[0], params[1], params[2], 2, 0.7, key).sum()
  p0 = np.array([0.3, -0.6, 0.2])
  grad = np.asarray(jax.grad(f)(jnp.asarray(p0, jnp.float32)))
  f64 = lambda p: float(f(jnp.asarray(p, jnp.float32)))
  eps = 1e-3
  fd = [(f64(p0 + eps * e) - f64(p0 - eps * e)) / (2 * eps) for e in np.eye(3)]
  np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-3)
  assert np.all(np.abs(grad) > 1e-3)  # the grid and sigma are trained


def test_compressor_trains_relaxed_then_deploys_the_rounding():
  c = q.relaxed_quantization(2, total_steps=2, temperature=1.0, seed=3)
  params = helpers.mlp_params()
  tree, state = c.init(params)
  node = tree["fc0"]["kernel"]
  w = np.asarray(params["fc0"]["kernel"])
  amax = np.abs(w).max()
  np.testing.assert_allclose([node.scale, node.offset, node.sigma], [amax, -2 * amax, amax / 3], rtol=1e-6)
  relaxed = np.asarray(c.apply(tree, state)["fc0"]["kernel"])
  nearest = node.offset + node.scale * np.clip(np.round((w - node.offset) / node.scale), 0, 3)
  assert np.abs(relaxed - nearest).max() > 1e-3  # a noisy, relaxed sample while training
  deployed = state._replace(count=jnp.asarray(2, jnp.int32))
  np.testing.assert_allclose(c.apply(tree, deployed)["fc0"]["kernel"], nearest, atol=1e-6)
  packed = c.pack(tree, deployed)["fc0"]["kernel"]
  assert isinstance(packed, jc.export.CodebookArray)
  assert packed.nbytes == 4 * 4 + w.size * 2 // 8  # 4 float32 grid values + 2-bit indices
  np.testing.assert_array_equal(jc.export.materialize(packed), c.apply(tree, deployed)["fc0"]["kernel"])


def test_activations_use_the_learned_grid():
  model = lambda p, x: x @ p["w"]
  x0 = jnp.array([[0.0, 0.7, 3.0]])
  c = q.relaxed_activations(model, 2, inputs=(x0,), total_steps=5, temperature=0.5)
  tree, state = c.init({"w": jnp.ones((3, 1))})
  assert tree.extra["w"]["scale"] == pytest.approx(1.0) and tree.extra["w"]["offset"] == 0.0
  x = jnp.array([[0.4, 1.6, 9.0]])
  deployed = state._replace(count=jnp.asarray(5, jnp.int32))
  assert c.rewrite(model, tree, deployed)(c.apply(tree, deployed), x).tolist() == [[5.0]]
  train = c.rewrite(model, tree, state)(c.apply(tree, state), x)
  assert float(train[0, 0]) != 5.0
  g = jax.grad(lambda t: c.rewrite(model, t, state)(c.apply(t, state), x).sum())(tree)
  assert abs(float(g.extra["w"]["sigma"])) > 0 and abs(float(g.extra["w"]["scale"])) > 0


def _reference_mse_grid(x, bits, signed):
  """The least-squares grid with 0 on it over spacings k/100 of the range init's, in float64."""
  top = np.abs(x).max() / (2 ** (bits - 1) - 1) if signed else x.max() / (2**bits - 1)
  first = -(2 ** (bits - 1)) if signed else 0
  best = None
  for k in range(1, 101):
    a = top * k / 100
    err = np.sum((first * a + np.clip(np.round(x / a - first), 0, 2**bits - 1) * a - x) ** 2)
    best = (err, a) if best is None or err < best[0] else best
  return best[1], first * best[1]


def test_mse_scale_init_minimizes_the_rounding_error():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((40, 30)).astype(np.float32)
  tree, _ = q.relaxed_quantization(2, total_steps=1, scale_init="mse").init({"w": jnp.asarray(w)})
  scale, offset = _reference_mse_grid(w.astype(np.float64), 2, True)
  np.testing.assert_allclose([tree["w"].scale, tree["w"].offset], [scale, offset], rtol=1e-5)
  assert scale < 0.6 * np.abs(w).max()  # a Gaussian's 2-bit least-squares step is well inside its range
  model = lambda p, x: x @ p["w"]
  x0 = np.abs(rng.standard_normal((8, 40))).astype(np.float32)
  c = q.relaxed_activations(model, 2, inputs=(jnp.asarray(x0),), total_steps=1, scale_init="mse")
  tree, _ = c.init({"w": jnp.asarray(w)})
  scale, offset = _reference_mse_grid(x0.astype(np.float64), 2, False)
  np.testing.assert_allclose([tree.extra["w"]["scale"], tree.extra["w"]["offset"]], [scale, offset], rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": lambda s: 1.0 - s / 5}, r"temperature\(5\)|temperature"),
    ({"bits": 9}, "bits"),
    ({"total_steps": 0}, "total_steps"),
    ({"sigma_ratio": 0.0}, "sigma_ratio"),
    ({"scale_init": "max"}, "scale_init"),
  ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  kwargs = {"total_steps": 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    q.relaxed_quantization(**kwargs)


def test_gradient_stays_finite_when_sigma_collapses():
  x = jnp.linspace(-1.0, 1.0, 9)
  f = lambda p: q.relaxed_sample(x, p[0], p[1], p[2], 2, 0.5, jax.random.key(0)).sum()
  grad = np.asarray(jax.grad(f)(jnp.asarray([0.3, -0.6, 1e-38])))  # training floored sigma at tiny
  assert np.all(np.isfinite(grad)) and grad[2] == 0.0  # below the floor sigma gets no gradient
