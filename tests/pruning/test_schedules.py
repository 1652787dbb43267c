import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import pruning
from jaxcompress.pruning import polynomial_sparsity


def zhu_gupta(t, s_i, s_f, t0, n, dt):
  """The paper's formula, with t advancing in multiples of dt."""
  if t < t0:
    return s_i
  if t >= t0 + n * dt:
    return s_f
  t = t0 + ((t - t0) // dt) * dt
  return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize("t0,t1,dt,s_i", [(0, 100, 10, 0.0), (5, 50, 5, 0.2), (3, 10, 1, 0.5)])
def test_matches_the_formula(t0, t1, dt, s_i):
  s = polynomial_sparsity(0.9, begin_step=t0, end_step=t1, frequency=dt, initial_sparsity=s_i)
  for t in range(0, t1 + 20):
    assert float(s(t)) == pytest.approx(zhu_gupta(t, s_i, 0.9, t0, (t1 - t0) / dt, dt), abs=1e-6)


def test_monotone_and_ends_at_final():
  s = polynomial_sparsity(0.8, begin_step=0, end_step=7, frequency=3)
  values = [float(s(t)) for t in range(12)]
  assert all(a <= b for a, b in zip(values, values[1:]))
  assert values[7] == pytest.approx(0.8) and values[-1] == pytest.approx(0.8)
  assert np.isclose(values[0], 0.0)


def test_schedules_that_cannot_reach_the_target():
  with pytest.raises(ValueError, match="end_step must be greater than begin_step=10, got end_step=5"):
    polynomial_sparsity(0.9, begin_step=10, end_step=5)
  with pytest.raises(ValueError, match="frequency=200 is larger than the pruning span"):
    polynomial_sparsity(0.9, begin_step=0, end_step=100, frequency=200)
  with pytest.raises(ValueError, match="final_sparsity"):
    polynomial_sparsity(1.0, begin_step=0, end_step=10)
  with pytest.raises(ValueError, match="frequency must be"):
    polynomial_sparsity(0.5, begin_step=0, end_step=10, frequency=0)


def _leaf_counts(state):
  return [int(m.sum()) for m in jax.tree.leaves(state.masks)]


@pytest.mark.parametrize("late, scope", [(1.0, "layer"), (1.5, "global")])
def test_a_schedule_reaching_one_later_keeps_a_weight_in_every_leaf(late, scope):
  params = {"a": jnp.arange(1.0, 9.0).reshape(2, 4), "b": jnp.arange(1.0, 5.0).reshape(2, 2)}
  c = pruning.magnitude(lambda t: jnp.where(t >= 1, late, 0.0), scope=scope)
  p, state = c.init(params)
  p, state = jax.jit(c.update)(p, state)
  assert _leaf_counts(state) == [1, 1]  # the largest |w| of each leaf survives
  assert p["a"][1, 3] == 8.0 and p["b"][1, 1] == 4.0


def test_a_nan_sparsity_holds_the_previous_masks():
  values = jnp.array([0.0, 0.5, jnp.nan, jnp.nan, 0.5])
  params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
  for c in (pruning.magnitude(lambda t: values[t]), pruning.movement(lambda t: values[t])):
    p, state = c.init(params)
    update = jax.jit(lambda p, s, c=c: c.update(p, s, grads=jax.tree.map(lambda w: -w, p)))
    p, state = update(p, state)
    pruned = np.asarray(state.masks["w"])
    for _ in range(3):
      p, state = update(p, state)
      np.testing.assert_array_equal(state.masks["w"], pruned)
    assert int(pruned.sum()) == 4 and not np.asarray(c.apply(p, state)["w"])[~pruned].any()


def test_a_factory_that_knows_the_steps_probes_the_schedule_there():
  bad = lambda t: jnp.where(t >= 600, 1.0, 0.5)
  with pytest.raises(ValueError, match=r"sparsity\(6\d\d\) must be in \[0.0, 1.0\), got 1.0"):
    pruning.magnitude(bad, total_steps=1000)
  pruning.magnitude(bad, total_steps=500)  # never reached in the run
  with pytest.raises(ValueError, match=r"sparsity\(\d+\) must be finite, got nan"):
    pruning.movement(lambda t: jnp.where(t >= 3, jnp.nan, 0.0), total_steps=10)
  with pytest.raises(ValueError, match=r"drop_fraction\(4\) must be in \[0.0, 1.0\], got 2.0"):
    pruning.rigl(0.5, frequency=2, end_step=10, drop_fraction=lambda t: jnp.where(t >= 4, 2.0, 0.3))
