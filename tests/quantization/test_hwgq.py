"""HWGQ (Cai et al. 2017): half-normal levels, the quantizer and its backward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

import jaxcompress as jc

q = jc.quantization


def _bins(levels):
  return np.concatenate([[0.0], (levels[:-1] + levels[1:]) / 2, [np.inf]])


def _mse(levels):
  """E[(z - Q(z))^2 | z > 0] for the unit half-normal, by numerical integration."""
  edges = _bins(levels)
  pdf = stats.halfnorm.pdf
  return sum(
    integrate.quad(lambda z, v=v: (z - v) ** 2 * pdf(z), a, b)[0] for v, a, b in zip(levels, edges[:-1], edges[1:])
  )


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_lloyd_levels_are_the_conditional_means_of_their_bins(bits):
  levels = q.half_normal_levels(bits, "lloyd")
  assert levels.shape == (2**bits - 1,)
  edges = _bins(levels)
  means = [stats.halfnorm.expect(lambda z: z, lb=a, ub=b, conditional=True) for a, b in zip(edges[:-1], edges[1:])]
  np.testing.assert_allclose(levels, means, rtol=1e-6)
  assert _mse(levels) <= _mse(q.half_normal_levels(bits, "uniform")) + 1e-12  # the unconstrained optimum


def test_uniform_step_minimizes_the_error_and_matches_the_paper():
  for bits in (1, 2, 3):
    m = 2**bits - 1
    best = optimize.minimize_scalar(lambda d, m=m: _mse(d * np.arange(1, m + 1)), bounds=(0.05, 2.0), method="bounded")
    levels = q.half_normal_levels(bits)
    np.testing.assert_allclose(levels, levels[0] * np.arange(1, m + 1), rtol=1e-12)
    np.testing.assert_allclose(levels[0], best.x, rtol=1e-4)
  assert round(q.half_normal_levels(2)[0], 3) == 0.539  # the paper's 2-bit step 0.538 (truncated)
  np.testing.assert_allclose(q.half_normal_levels(1), [np.sqrt(2 / np.pi)], rtol=1e-12)  # E[z | z > 0]


def _reference(z, s, levels):
  edges = (levels[:-1] + levels[1:]) / 2 * s
  return np.where(z > 0, s * levels[np.searchsorted(edges, z, side="left")], 0.0)


def test_forward_and_both_backward_passes():
  z = np.asarray(jax.random.normal(jax.random.key(0), (400,)) * 1.5, np.float32)
  g = np.asarray(jax.random.normal(jax.random.key(1), (400,)), np.float32)
  s, levels = 1.3, q.half_normal_levels(2, "lloyd")
  out = q.hwgq_quantize(jnp.asarray(z), s, levels)
  np.testing.assert_allclose(out, _reference(z, s, levels), rtol=1e-6)
  top = s * levels[-1]
  clipped = jax.grad(lambda z: (q.hwgq_quantize(z, s, levels) * g).sum())(jnp.asarray(z))
  np.testing.assert_array_equal(clipped, np.where((z > 0) & (z <= top), g, 0.0))
  logt = jax.grad(lambda z: (q.hwgq_quantize(z, s, levels, "log_tailed") * g).sum())(jnp.asarray(z))
  tau = levels[-1] - 1
  expected = np.where((z > 0) & (z <= top), g, np.where(z > top, g / (z / s - tau), 0.0))
  np.testing.assert_allclose(logt, expected, rtol=1e-5)
  assert np.any(z > top)


def test_compressor_scales_levels_by_the_batch_statistics_and_chains_with_binary_weights():
  model = lambda p, x: jax.nn.relu(x @ p["a"]) @ p["b"]
  kx, ka, kb = jax.random.split(jax.random.key(2), 3)
  params = {"a": jax.random.normal(ka, (6, 16)), "b": jax.random.normal(kb, (16, 3))}
  x = jax.random.normal(kx, (32, 6))
  c = jc.chain(q.xnor_net(), q.hwgq_activations(2, where="b"))
  tree, state = c.init(params)
  out = c.rewrite(model, tree, state)(c.apply(tree, state), x)
  w = {k: np.sign(np.asarray(v)) * np.abs(np.asarray(v)).mean(0, keepdims=True) for k, v in params.items()}
  h = np.maximum(np.asarray(x) @ w["a"], 0)
  s = np.sqrt(np.mean(h[h > 0] ** 2))
  np.testing.assert_allclose(out, _reference(h, s, q.half_normal_levels(2)) @ w["b"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(q.positive_rms(jnp.asarray(h)), s, rtol=1e-5)


def test_extremes_and_bad_arguments():
  big = jnp.asarray([0.0, 3e38, 1e38, -3e38], jnp.float32)
  assert np.isfinite(float(q.positive_rms(big)))
  assert float(q.positive_rms(jnp.zeros(4))) > 0
  out = q.hwgq_quantize(big, q.positive_rms(big), q.half_normal_levels(2))
  assert np.all(np.isfinite(np.asarray(out)))
  with pytest.raises(ValueError, match="bits"):
    q.hwgq_activations(9)
  with pytest.raises(ValueError, match=r"levels|kind"):
    q.hwgq_activations(2, levels="gaussian")
  with pytest.raises(ValueError, match="backward"):
    q.hwgq_activations(2, backward="relu")
