import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.quantization import calibration
from jaxcompress.quantization._spec import QuantSpec
from tests import helpers

BATCHES = [np.random.default_rng(i).normal(size=(256,)).astype(np.float32) for i in range(4)]


def run(cal, batches=BATCHES, spec=None):
  spec = spec or QuantSpec(8)
  state = cal.init()
  for b in batches:
    state = cal.update(state, b)
  return [float(v) for v in cal.range(state, spec)]


def test_minmax():
  both = np.concatenate(BATCHES)
  assert run(calibration.minmax()) == [float(both.min()), float(both.max())]


def test_moving_average_formula():
  m = 0.8
  lo, hi = float(BATCHES[0].min()), float(BATCHES[0].max())
  for b in BATCHES[1:]:
    lo, hi = m * lo + (1 - m) * float(b.min()), m * hi + (1 - m) * float(b.max())
  assert run(calibration.moving_average(m)) == pytest.approx([lo, hi])


def test_percentile_clips_outliers():
  batches = [np.append(b, 1000.0).astype(np.float32) for b in BATCHES]
  lo, hi = run(calibration.percentile(99.0), batches)
  both = np.concatenate(batches)
  assert hi == pytest.approx(np.percentile(both, 99.0), rel=1e-6) and hi < 10
  assert lo == pytest.approx(np.percentile(both, 1.0), rel=1e-6)


def test_mse_picks_the_lowest_error_candidate():
  spec = QuantSpec(3)
  batches = [np.append(b, [12.0, -12.0]).astype(np.float32) for b in BATCHES]
  lo, hi = run(calibration.mse(num_candidates=50), batches, spec)
  x = jnp.asarray(np.concatenate(batches))

  def err(lo, hi):
    scale, zp = spec.params_from_range(jnp.float32(lo), jnp.float32(hi))
    return float(jnp.mean((spec.fake_quant(x, scale, zp) - x) ** 2))

  assert hi < 12  # rare outliers are clipped at 3 bits
  for f in np.arange(1, 51) / 50:
    assert err(lo, hi) <= err(-12 * f, 12 * f) + 1e-7


def test_no_batches_is_an_error():
  for cal in (calibration.minmax(), calibration.moving_average(), calibration.percentile(), calibration.mse()):
    with pytest.raises(ValueError, match="no batches"):
      run(cal, [])
  with pytest.raises(ValueError, match="`batches` was empty"):
    calibration.calibrate_activations(helpers.mlp_apply, helpers.mlp_params(), [], QuantSpec(8))


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="momentum must be in"):
    calibration.moving_average(1.0)
  with pytest.raises(ValueError, match="percent must be in"):
    calibration.percentile(40.0)
  with pytest.raises(ValueError, match="num_candidates must be in"):
    calibration.mse(num_candidates=0)


def test_calibrate_activations_of_each_site():
  params = helpers.mlp_params()
  batches = [helpers.batch(seed=i)[0] for i in range(3)]
  ranges = calibration.calibrate_activations(helpers.mlp_apply, params, batches, QuantSpec(8))
  assert sorted(ranges) == ["fc0/kernel", "fc1/kernel"]
  inputs = np.concatenate([np.asarray(b) for b in batches])
  assert [float(v) for v in ranges["fc0/kernel"]] == [float(inputs.min()), float(inputs.max())]
  hidden = np.maximum(inputs @ np.asarray(params["fc0"]["kernel"]) + np.asarray(params["fc0"]["bias"]), 0)
  assert float(ranges["fc1/kernel"][1]) == pytest.approx(float(hidden.max()), rel=1e-5)


def test_non_finite_or_inverted_ranges_are_errors():
  batches = [np.array([[1.0, np.nan]], np.float32)]
  with pytest.raises(ValueError, match=r"site 'fc0/kernel' has a non-finite activation range"):
    calibration.calibrate_activations(helpers.mlp_apply, helpers.mlp_params(sizes=(2, 4, 3)), batches, QuantSpec(8))
  with pytest.raises(ValueError, match="inverted"):
    calibration.check_ranges({"w": (1.0, -1.0)})
