"""The distillation losses against their papers' formulas, and their bad inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import distill as _distill


class distill:  # the losses, jitted: one compile each instead of one per primitive (eager)
  kl_divergence = jax.jit(_distill.kl_divergence, static_argnames="temperature")
  hinton_loss = jax.jit(_distill.hinton_loss, static_argnames=("temperature", "soft_weight"))
  dkd_terms = jax.jit(_distill.dkd_terms, static_argnames="temperature")
  dkd_loss = jax.jit(_distill.dkd_loss, static_argnames=("alpha", "beta", "temperature", "ce_weight"))
  dist_loss = jax.jit(_distill.dist_loss, static_argnames=("beta", "gamma", "temperature", "ce_weight"))
  pearson_distance = jax.jit(_distill.pearson_distance, static_argnames="axis")
  attention_transfer_loss = jax.jit(_distill.attention_transfer_loss, static_argnames=("beta", "p"))
  fitnets_loss = staticmethod(_distill.fitnets_loss)


def _logits(seed=0, batch=8, classes=10, scale=3.0):
  rng = np.random.default_rng(seed)  # NumPy draws: no threefry kernels to compile
  return tuple(jnp.asarray(scale * rng.standard_normal((batch, classes)), jnp.float32) for _ in range(2))


def _softmax_np(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_kl_is_a_sum_over_classes_averaged_over_the_batch():
  s, t = _logits()
  temperature = 2.0
  ps, pt = _softmax_np(s / temperature), _softmax_np(t / temperature)
  kl = (pt * (np.log(pt) - np.log(ps))).sum(-1)  # summed over classes, per example
  np.testing.assert_allclose(distill.kl_divergence(s, t, temperature=temperature), kl, rtol=1e-5)
  soft = distill.hinton_loss(s, t, temperature=temperature, soft_weight=1.0)
  np.testing.assert_allclose(soft, temperature**2 * kl.mean(), rtol=1e-5)


def test_hinton_weights_soft_and_hard_terms():
  s, t = _logits(1)
  y = jnp.arange(8) % 10
  ce = -np.log(_softmax_np(s)[np.arange(8), np.asarray(y)]).mean()
  soft = distill.hinton_loss(s, t, temperature=3.0, soft_weight=1.0)
  np.testing.assert_allclose(distill.hinton_loss(s, t, y, temperature=3.0, soft_weight=0.0), ce, rtol=1e-5)
  np.testing.assert_allclose(
    distill.hinton_loss(s, t, y, temperature=3.0, soft_weight=0.7), 0.7 * soft + 0.3 * ce, rtol=1e-5
  )


def test_student_equal_to_teacher_has_zero_soft_loss_and_gradient():
  s, _ = _logits(2)
  for temperature in (0.5, 20.0):
    f = functools.partial(distill.hinton_loss, temperature=temperature, soft_weight=1.0)
    assert abs(float(f(s, s))) < 1e-6
    assert float(jnp.abs(jax.jit(jax.grad(f))(s, s)).max()) < 1e-6


def test_t_squared_keeps_the_soft_gradient_magnitude_across_temperatures():
  s, t = _logits(3, scale=1.0)

  def grad_norm(temperature, squared=True):
    soft = lambda z: jnp.mean(distill.kl_divergence(z, t, temperature=temperature))
    g = jax.jit(jax.grad(soft))(s) * (temperature**2 if squared else 1.0)
    return float(jnp.linalg.norm(g))

  scaled = [grad_norm(T) for T in (20.0, 40.0, 80.0)]
  np.testing.assert_allclose(scaled, scaled[0], rtol=0.02)  # ~ |s - t| / classes, whatever T
  raw = [grad_norm(T, squared=False) for T in (20.0, 40.0, 80.0)]
  np.testing.assert_allclose(np.array(raw[:2]) / np.array(raw[1:]), 4.0, rtol=0.05)  # 1/T² without it
  # the analytic limit: T (p_s - p_t) -> (centered s - centered t) / classes, over the batch mean
  limit = ((s - s.mean(-1, keepdims=True)) - (t - t.mean(-1, keepdims=True))) / s.shape[1] / s.shape[0]
  np.testing.assert_allclose(scaled[-1], float(jnp.linalg.norm(limit)), rtol=0.01)


def test_dkd_decomposition_identity_and_weighting():
  s, t = _logits(4)
  y = jnp.array([0, 3, 9, 1, 1, 5, 7, 2])
  for temperature in (1.0, 4.0):
    tckd, nckd = distill.dkd_terms(s, t, y, temperature=temperature)
    pt = _softmax_np(t / temperature)[np.arange(8), np.asarray(y)]
    kl = distill.kl_divergence(s, t, temperature=temperature)
    np.testing.assert_allclose(tckd + (1 - pt) * nckd, kl, rtol=1e-5, atol=1e-6)  # KD = TCKD + (1 - p_t) NCKD
    # TCKD is the binary KL, NCKD the KL of the renormalized non-target distribution
    ps_full = _softmax_np(s / temperature)
    ps = ps_full[np.arange(8), np.asarray(y)]
    np.testing.assert_allclose(
      tckd, pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)), rtol=1e-4, atol=1e-6
    )
    pt_full = _softmax_np(t / temperature)
    keep = ~np.eye(10, dtype=bool)[np.asarray(y)]
    hat_t = np.where(keep, pt_full, 0) / (1 - pt)[:, None]
    hat_s = np.where(keep, ps_full, 0) / (1 - ps)[:, None]
    ref = np.where(keep, hat_t * np.log(np.where(keep, hat_t, 1) / np.where(keep, hat_s, 1)), 0).sum(-1)
    np.testing.assert_allclose(nckd, ref, rtol=1e-4, atol=1e-6)
    dkd = distill.dkd_loss(s, t, y, alpha=1.0, beta=2.0, temperature=temperature, ce_weight=0.0)
    np.testing.assert_allclose(dkd, temperature**2 * np.mean(tckd + 2.0 * nckd), rtol=1e-5)
    # alpha = 1 and beta = 1 - p_t per example is classical KD
    kd = distill.hinton_loss(s, t, temperature=temperature, soft_weight=1.0)
    np.testing.assert_allclose(temperature**2 * np.mean(tckd + (1 - pt) * nckd), kd, rtol=1e-5)


def test_dkd_gradients_are_finite_with_a_confident_teacher():
  s, _ = _logits(5)
  t = jnp.zeros((8, 10)).at[:, 0].set(60.0)  # p_target ~ 1 at T = 1
  y = jnp.zeros(8, jnp.int32)
  g = jax.jit(jax.grad(lambda z: distill.dkd_loss(z, t, y, temperature=1.0)))(s)
  assert bool(jnp.all(jnp.isfinite(g)))
  assert abs(float(distill.dkd_loss(t, t, y, ce_weight=0.0))) < 1e-6


def test_dist_zero_for_identical_logits_and_relation_invariance():
  s, t = _logits(6)
  assert abs(float(distill.dist_loss(t, t))) < 1e-6
  g = jax.jit(jax.grad(lambda z: distill.dist_loss(z, t)))(t)
  assert bool(jnp.all(jnp.isfinite(g)))
  # the relation d_p is invariant to positive affine maps of the predictions (Eq. 5)
  ps, pt = jax.nn.softmax(s), jax.nn.softmax(t)
  for a, b in ((2.0, 0.3), (0.5, -1.0)):
    np.testing.assert_allclose(
      distill.pearson_distance(a * ps + b, pt, axis=1), distill.pearson_distance(ps, pt, axis=1), atol=1e-4
    )
    np.testing.assert_allclose(
      distill.pearson_distance(a * ps + b, pt, axis=0), distill.pearson_distance(ps, pt, axis=0), atol=1e-4
    )
  # on logits: a per-example shift leaves the softmax, so the loss, unchanged
  shift = jnp.arange(8.0)[:, None]
  np.testing.assert_allclose(distill.dist_loss(s + shift, t), distill.dist_loss(s, t), rtol=1e-5)
  # the formula: T² (beta inter + gamma intra)
  temperature = 2.0
  ps, pt = _softmax_np(s / temperature), _softmax_np(t / temperature)

  def corr(u, v, axis):
    u, v = u - u.mean(axis, keepdims=True), v - v.mean(axis, keepdims=True)
    return (u * v).sum(axis) / np.sqrt((u * u).sum(axis) * (v * v).sum(axis))

  inter, intra = (1 - corr(ps, pt, 1)).mean(), (1 - corr(ps, pt, 0)).mean()
  got = distill.dist_loss(s, t, beta=2.0, gamma=0.5, temperature=temperature)
  np.testing.assert_allclose(got, temperature**2 * (2.0 * inter + 0.5 * intra), rtol=1e-4)


def test_attention_transfer_formula():
  rng = np.random.default_rng(7)
  fs, ft = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((4, 5, 5, 3), (4, 5, 5, 16)))
  qs = (np.asarray(fs) ** 2).sum(-1).reshape(4, -1)
  qt = (np.asarray(ft) ** 2).sum(-1).reshape(4, -1)
  qs, qt = qs / np.linalg.norm(qs, axis=1, keepdims=True), qt / np.linalg.norm(qt, axis=1, keepdims=True)
  ref = 1000.0 / 2 * np.linalg.norm(qs - qt, axis=1).mean()
  np.testing.assert_allclose(distill.attention_transfer_loss(fs, ft), ref, rtol=1e-5)
  np.testing.assert_allclose(distill.attention_transfer_loss([fs, fs], [ft, ft], beta=2.0), 2 * ref / 500, rtol=1e-5)
  g = jax.jit(jax.grad(lambda f: distill.attention_transfer_loss(f, f)))(fs)
  assert bool(jnp.all(g == 0))  # zero, not NaN, at a perfect match


def test_fitnets_formula():
  rng = np.random.default_rng(8)
  fs, ft, w = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((4, 3, 3, 6), (4, 3, 3, 10), (6, 10)))
  ref = 0.5 * ((np.asarray(ft) - np.asarray(fs) @ np.asarray(w)) ** 2).reshape(4, -1).sum(-1).mean()
  np.testing.assert_allclose(distill.fitnets_loss(fs, ft, w), ref, rtol=1e-5)
  np.testing.assert_allclose(distill.fitnets_loss(fs, ft, lambda f: f @ w), ref, rtol=1e-5)
  assert float(distill.fitnets_loss(ft, ft)) == 0.0


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_names_the_value(temperature):
  s, t = _logits()
  y = jnp.zeros(8, jnp.int32)
  for f in (distill.hinton_loss, distill.dkd_loss, distill.dist_loss):
    with pytest.raises(ValueError, match="temperature"):
      f(s, t, y, temperature=temperature)


def test_mismatched_shapes_name_the_values():
  s, t = _logits()
  y = jnp.zeros(8, jnp.int32)
  with pytest.raises(ValueError, match="class counts differ: student 10, teacher 9"):
    distill.hinton_loss(s, t[:, :9], y)
  with pytest.raises(ValueError, match="batch sizes differ: student 8, teacher 4"):
    distill.dkd_loss(s, t[:4], y)
  with pytest.raises(ValueError, match="batch sizes differ"):
    distill.dist_loss(s, t[:4])
  with pytest.raises(ValueError, match=r"labels must be integers of shape \(8,\)"):
    distill.hinton_loss(s, t, y[:3])
  with pytest.raises(ValueError, match="soft_weight"):
    distill.hinton_loss(s, t, y, soft_weight=1.5)
  with pytest.raises(ValueError, match="beta"):
    distill.dkd_loss(s, t, y, beta=-1.0)
  with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
    distill.hinton_loss(s[0], t[0])
  with pytest.raises(ValueError, match=r"\(batch, h, w\)"):
    distill.attention_transfer_loss(jnp.ones((2, 4, 4, 3)), jnp.ones((2, 2, 2, 3)))
  with pytest.raises(ValueError, match="feature maps"):
    distill.attention_transfer_loss([jnp.ones((2, 4, 4, 3))], [])
  with pytest.raises(ValueError, match="regressor kernel"):
    distill.fitnets_loss(jnp.ones((2, 6)), jnp.ones((2, 10)), jnp.ones((5, 10)))
  with pytest.raises(ValueError, match="regressed student features"):
    distill.fitnets_loss(jnp.ones((2, 6)), jnp.ones((2, 10)))
