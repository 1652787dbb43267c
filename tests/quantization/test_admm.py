"""ADMM quantization (Leng et al. 2018): projection optimality, G/U updates, penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import _admm


def grid_error(w, kind, levels):
  """min over a fine grid of alpha of ||w - alpha Q||^2, Q the nearest point of the set."""
  a = np.abs(w.astype(np.float64))
  alphas = np.linspace(1e-4, 2 * a.max(), 20001)
  if kind == "binary":
    return ((a[None, :] - alphas[:, None]) ** 2).sum(1).min()
  pos = np.concatenate([[0.0], _admm.level_values(kind, levels)])
  d = np.abs(a[None, :, None] - alphas[:, None, None] * pos[None, None, :]).min(-1)
  return (d**2).sum(1).min()


def alternating_error(w, kind, levels, iters=50):
  """The paper's alternating minimization from alpha = mean|w|."""
  a = np.abs(w.astype(np.float64))
  pos = np.concatenate([[0.0], _admm.level_values(kind, levels)])
  alpha = a.mean()
  for _ in range(iters):
    q = pos[np.abs(a[:, None] - alpha * pos[None, :]).argmin(1)]
    if (q * q).sum() == 0:
      break
    alpha = (a * q).sum() / (q * q).sum()
  return ((a - alpha * q) ** 2).sum()


@pytest.mark.parametrize(("kind", "levels"), [("binary", 1), ("ternary", 1), ("power_of_two", 2), ("power_of_two", 3)])
def test_projection_is_optimal_against_a_grid_search(kind, levels):
  rng = np.random.default_rng(levels)
  w = rng.standard_t(3, 60).astype(np.float32)  # heavy tails: where a guessed alpha is poor
  alpha, idx = _admm.project(jnp.asarray(w), kind, levels)
  g = float(alpha) * _admm.codebook_values(kind, levels)[np.asarray(idx)]
  err = ((w.astype(np.float64) - g) ** 2).sum()
  assert err <= grid_error(w, kind, levels) * (1 + 1e-6) + 1e-9
  if kind != "binary":
    assert err <= alternating_error(w, kind, levels) * (1 + 1e-6)


def test_projection_of_zeros_and_extremes_is_finite():
  alpha, idx = _admm.project(jnp.zeros((3, 3)), "ternary")
  assert float(alpha) == 0.0 and np.all(np.asarray(idx) == 1)  # every code at 0
  alpha, idx = _admm.project(jnp.asarray([3e38, -3e38, 1.0]), "power_of_two", 3)
  g = float(alpha) * _admm.codebook_values("power_of_two", 3)[np.asarray(idx)]
  np.testing.assert_allclose(g, [3e38, -3e38, 0.0], rtol=1e-6)  # finite, and optimal


def test_g_and_u_updates_every_k_steps_and_the_penalty():
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal((5, 4)).astype(np.float32)
  c = jc.quantization.admm("power_of_two", levels=2, rho=0.3, frequency=2)
  _params, state = c.init({"w": jnp.asarray(w0)})

  project = jax.jit(lambda v: _admm.project(v, "power_of_two", 2))
  update, penalty = jax.jit(c.update), jax.jit(c.penalty)

  def proj(v):
    a, i = project(jnp.asarray(v))
    return float(a) * _admm.codebook_values("power_of_two", 2)[np.asarray(i)]

  g, u = proj(w0), np.zeros_like(w0)
  for step in range(1, 5):
    w = rng.standard_normal(w0.shape).astype(np.float32)  # as if the optimizer moved W
    np.testing.assert_allclose(float(penalty({"w": jnp.asarray(w)}, state)), 0.15 * ((w - g + u) ** 2).sum(), rtol=1e-5)
    _, state = update({"w": jnp.asarray(w)}, state)
    if step % 2 == 0:
      g = proj(w + u)
      u = u + w - g
    leaf = state.leaves["w"]
    got_g = float(leaf.alpha) * _admm.codebook_values("power_of_two", 2)[np.asarray(leaf.indices)]
    np.testing.assert_allclose(got_g, g, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(leaf.dual), u, rtol=1e-5, atol=1e-6)
  packed = c.pack({"w": jnp.asarray(w)}, state)["w"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.indices.bits == 3
  np.testing.assert_allclose(np.asarray(packed.materialize()), g, rtol=1e-6)
  view = jc.quantization.admm("power_of_two", levels=2, view="projection").apply({"w": jnp.asarray(w)}, state)
  np.testing.assert_array_equal(np.asarray(view["w"]), np.asarray(packed.materialize()))


def test_project_from_switches_the_view_to_g():
  w = {"w": jnp.asarray([[1.0, -3.0], [0.5, 3.2]])}
  c = jc.quantization.admm("ternary", project_from=1)
  params, state = c.init(w)
  np.testing.assert_array_equal(np.asarray(c.apply(params, state)["w"]), np.asarray(w["w"]))  # the W-step
  _, state = c.update(params, state)
  np.testing.assert_allclose(np.asarray(c.apply(params, state)["w"]), [[0.0, -3.1], [0.0, 3.1]], rtol=1e-6)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"kind": "quaternary"}, "kind"),
    ({"rho": 0.0}, "rho"),
    ({"frequency": 0}, "frequency"),
    ({"view": "g"}, "view"),
    ({"project_from": -1}, "project_from"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jc.quantization.admm(**kwargs)
