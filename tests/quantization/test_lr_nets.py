"""LR-Nets (Shayer et al. 2018): the ternary parameterization, its initialization, the
local reparameterization against Monte-Carlo sampling of the weights, and deployment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

q = jc.quantization


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_parameterization_and_initialization_follow_the_paper():
  a = np.linspace(-3, 3, 7)[:, None] * np.ones((1, 5))
  b = np.linspace(-2, 2, 5)[None, :] * np.ones((7, 1))
  pm, p0, pp = (np.asarray(p) for p in q.ternary_probabilities(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(p0, _sigmoid(a), rtol=1e-6)
  np.testing.assert_allclose(pp, (1 - _sigmoid(a)) * _sigmoid(b), rtol=1e-5)
  np.testing.assert_allclose(pm + p0 + pp, 1.0, rtol=1e-6)
  mean, var = q.ternary_moments(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(mean, pp - pm, atol=1e-6)
  np.testing.assert_allclose(var, pp + pm - (pp - pm) ** 2, atol=1e-6)
  w = np.linspace(-0.8, 0.8, 17)
  a0, b0 = q.ternary_init_logits(jnp.asarray(w))
  np.testing.assert_allclose(_sigmoid(np.asarray(a0)), 0.95 - 0.9 * np.abs(w), rtol=1e-5)
  p0 = 0.95 - 0.9 * np.abs(w)
  p1 = np.clip(0.5 * (1 + w / (1 - p0)), 0.05, 0.95)
  np.testing.assert_allclose(_sigmoid(np.asarray(b0)), p1, rtol=1e-5)
  mean = np.asarray(q.ternary_moments(a0, b0)[0])
  np.testing.assert_allclose(mean, (1 - p0) * (2 * p1 - 1), atol=1e-5)
  inside = (p1 > 0.05) & (p1 < 0.95)
  assert inside.sum() >= 5
  np.testing.assert_allclose(mean[inside], w[inside], atol=1e-5)  # E[w] = w where the clips do not bind


def test_local_reparameterization_matches_monte_carlo_over_the_weights():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(6, 4)).astype(np.float32) * 0.5
  x = rng.normal(size=(3, 6)).astype(np.float32)
  model = lambda p, x: x @ p["w"]
  c = q.lr_nets(total_steps=10**6, seed=1)
  tree, state = c.init({"w": jnp.asarray(w)})
  node, s = tree["w"], float(state.leaves["w"].scale)
  pm, p0, _ = (np.asarray(p, np.float64) for p in q.ternary_probabilities(node.a, node.b))
  # Monte Carlo over the categorical weights themselves
  u = rng.random((20000, *w.shape))
  samples = s * (np.where(u < pm, -1.0, 0.0) + np.where(u > pm + p0, 1.0, 0.0))
  y = np.einsum("bi,nio->nbo", x.astype(np.float64), samples)
  mean, var = y.mean(0), y.var(0)
  e_w, v_w = (np.asarray(m, np.float64) for m in q.ternary_moments(node.a, node.b))
  np.testing.assert_allclose(x @ (s * e_w), mean, atol=0.03)
  np.testing.assert_allclose((x**2) @ (s * s * v_w), var, rtol=0.05)
  # the compressor's sampled pre-activations have the same mean and variance
  view = c.apply(tree, state)

  def sample(count):
    st = state._replace(count=count)
    return c.rewrite(model, tree, st)(view, jnp.asarray(x))

  out = np.asarray(jax.jit(jax.vmap(sample))(jnp.arange(4000, dtype=jnp.int32)), np.float64)
  np.testing.assert_allclose(out.mean(0), x @ (s * e_w), atol=0.06)
  np.testing.assert_allclose(out.var(0), (x**2) @ (s * s * v_w), rtol=0.1)


def test_deployment_takes_the_most_probable_values_and_packs_them():
  w = jax.random.normal(jax.random.key(2), (8, 4)) * 0.3
  c = q.lr_nets(total_steps=2, logit_decay=1e-3)
  tree, state = c.init({"w": w})
  node, s = tree["w"], state.leaves["w"].scale
  probs = np.stack([np.asarray(p) for p in q.ternary_probabilities(node.a, node.b)])
  deployed = state._replace(count=jnp.asarray(2, jnp.int32))
  view = c.apply(tree, deployed)["w"]
  np.testing.assert_array_equal(np.asarray(view), np.asarray(s) * (probs.argmax(0) - 1.0))
  model = lambda p, x: x @ p["w"]
  x = jnp.ones((2, 8))
  np.testing.assert_array_equal(c.rewrite(model, tree, deployed)({"w": view}, x), x @ view)  # no noise
  packed = c.pack(tree, deployed)["w"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.nbytes == 3 * 4 + 32 * 2 // 8
  np.testing.assert_array_equal(jc.export.materialize(packed), view)
  expected = 1e-3 * (np.sum(np.asarray(node.a) ** 2) + np.sum(np.asarray(node.b) ** 2))
  np.testing.assert_allclose(c.penalty(tree, state), expected, rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"total_steps": 0}, "total_steps"),
    ({"logit_decay": -1.0}, "logit_decay"),
    ({"p_min": 0.0}, "p_min"),
    ({"p_max": 1.0}, "p_max"),
    ({"p_min": 0.6, "p_max": 0.5}, "p_min"),
  ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    q.lr_nets(**{"total_steps": 5, **kwargs})
