import numpy as np
import pytest

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
