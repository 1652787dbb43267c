"""The moving-average observer of QAT activation ranges and the outlier warning."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.quantization import OutlierRangeWarning, quantize_activations
from jaxcompress.quantization._observer import outliers_set_range

C = 0.25  # a large constant, so three batches move the range visibly


def model(p, x):
  return jnp.maximum(x @ p["w1"], 0.0) @ p["w2"]


def loss(p, x, y):
  return jnp.mean((model(p, x) - y) ** 2)


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  params = {
    "w1": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
    "w2": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
  }
  calib = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  xs = [jnp.asarray(rng.normal(scale=1.0 + i, size=(8, 3)), jnp.float32) for i in range(3)]
  ys = [jnp.asarray(rng.normal(size=(8, 2)), jnp.float32) for _ in range(3)]
  return params, calib, xs, ys


def ema_reference(params_seq, calib_params, calib, xs):
  """NumPy: the first batch (calibration) sets the range, then r <- r + C (batch - r)."""

  def inputs(p, x):
    x, w1 = np.asarray(x, np.float64), np.asarray(p["w1"], np.float64)
    return {"w1": x, "w2": np.maximum(x @ w1, 0.0)}

  r = {k: (v.min(), v.max()) for k, v in inputs(calib_params, calib).items()}
  for p, x in zip(params_seq, xs):
    for k, v in inputs(p, x).items():
      r[k] = (r[k][0] + C * (v.min() - r[k][0]), r[k][1] + C * (v.max() - r[k][1]))
  return r


def run(setup, freeze_step=None):
  params, calib, xs, ys = setup
  c = quantize_activations(
    8, apply_fn=model, batches=[calib], observer="moving_average", averaging_constant=C, freeze_step=freeze_step
  )
  opt = optax.sgd(0.05)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(loss, opt, c))
  seen = []  # update observes each batch with the params after that step's optimizer update
  for x, y in zip(xs, ys):
    state, _ = step(state, x, y)
    seen.append(state.params)
  return state, seen


@pytest.fixture(scope="module")
def single(setup):
  return run(setup)


def test_running_range_is_the_ema_of_three_batches(setup, single):
  params, calib, xs, _ = setup
  state, seen = single
  ref = ema_reference(seen, params, calib, xs)
  for k, (lo, hi) in ref.items():
    np.testing.assert_allclose([float(v) for v in state.cstate.data[k]], [lo, hi], rtol=1e-5, atol=1e-6)
  # the forward fake-quantizes with the running range (here symmetric: scale max|range| / 127), not the batch's own
  c = quantize_activations(8, symmetric=True, apply_fn=model, batches=[calib], observer="moving_average")
  x = np.asarray(xs[2]) * 3.0  # far outside the running range of w1's input: clipped to it

  def fq(v, key):
    s = max(abs(ref[key][0]), abs(ref[key][1])) / 127
    return np.clip(np.round(v / s), -127, 127) * s

  w1, w2 = (np.asarray(state.params[k], np.float64) for k in ("w1", "w2"))
  expect = fq(np.maximum(fq(x, "w1") @ w1, 0.0), "w2") @ w2
  got = c.rewrite(model, state.params, state.cstate)(state.params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-4, atol=1e-4)
  assert np.abs(fq(x, "w1") - x).max() > 1.0  # the clip to the running range is real


def test_frozen_after_freeze_step(setup):
  params, calib, xs, _ = setup
  state, seen = run(setup, freeze_step=1)
  ref = ema_reference(seen[:1], params, calib, xs[:1])  # only the first training batch moved it
  for k, (lo, hi) in ref.items():
    np.testing.assert_allclose([float(v) for v in state.cstate.data[k]], [lo, hi], rtol=1e-5, atol=1e-6)
  assert int(state.cstate.count) == 3


def test_pmap_replicas_equal_the_single_device_run(setup, single):
  params, calib, xs, ys = setup
  n = 4
  single, _ = single
  c = quantize_activations(
    8, apply_fn=model, batches=[calib], observer="moving_average", averaging_constant=C, axis_name="d"
  )
  opt = optax.sgd(0.05)
  state = jax.tree.map(lambda a: jnp.stack([a] * n), jc.train.init(params, opt, c))
  step = jax.pmap(jc.train.make_step(loss, opt, c, axis_name="d"), axis_name="d", devices=jax.devices()[:n])
  for x, y in zip(xs, ys):
    state, _ = step(state, x.reshape(n, -1, 3), y.reshape(n, -1, 2))
  for k, (lo, hi) in single.cstate.data.items():
    rep_lo, rep_hi = np.asarray(state.cstate.data[k][0]), np.asarray(state.cstate.data[k][1])
    assert np.all(rep_lo == rep_lo[0]) and np.all(rep_hi == rep_hi[0])  # replicas do not drift
    np.testing.assert_allclose([rep_lo[0], rep_hi[0]], [float(lo), float(hi)], rtol=1e-5, atol=1e-6)


def test_outlier_warns_once_and_normal_inputs_do_not(setup):
  params, _, xs, _ = setup
  c = quantize_activations(8, outlier_every=100)  # dynamic ranges, checked every 100th step
  f = jax.jit(c.rewrite(model, params, c.init(params)[1]))
  with warnings.catch_warnings():
    warnings.simplefilter("error", OutlierRangeWarning)
    jax.block_until_ready(f(params, xs[0]))  # normal inputs: silent
  x = np.asarray(xs[0]).copy()
  x[3, 1] = 62500.0  # one standardized zero-variance pixel
  with pytest.warns(OutlierRangeWarning, match="'w1'.*outlier"):
    jax.block_until_ready(f(params, jnp.asarray(x)))
  with warnings.catch_warnings():
    warnings.simplefilter("error", OutlierRangeWarning)
    jax.block_until_ready(f(params, jnp.asarray(x)))  # once per site
  one_hot = jnp.eye(2000)[:8]  # sparse, not an outlier: the zeros are left out of the percentile
  assert not bool(outliers_set_range(one_hot, 10.0)[0]) and bool(outliers_set_range(jnp.asarray(x), 10.0)[0])
  state = c.init(params)[1]
  for count, warns in ((1, False), (100, True)):  # checked at the steps whose count is a multiple of 100
    c_warned = quantize_activations(8, outlier_every=100)  # a fresh compressor: its own once-per-site record
    at = jax.jit(c_warned.rewrite(model, params, state._replace(count=jnp.asarray(count, jnp.int32))))
    with warnings.catch_warnings(record=True) as seen:
      warnings.simplefilter("always", OutlierRangeWarning)
      jax.block_until_ready(at(params, jnp.asarray(x)))
    assert any(issubclass(w.category, OutlierRangeWarning) for w in seen) == warns, count
  for silent in (quantize_activations(8, outlier_ratio=None, outlier_every=1), quantize_activations(8)):
    g = jax.jit(silent.rewrite(model, params, silent.init(params)[1]))  # (by default dynamic ranges are unchecked)
    with warnings.catch_warnings():
      warnings.simplefilter("error", OutlierRangeWarning)
      jax.block_until_ready(g(params, jnp.asarray(x)))
  with pytest.raises(ValueError, match="outlier_every must be None or an int >= 1, got 0"):
    quantize_activations(8, outlier_every=0)


def test_observer_checks_outliers_and_bad_arguments(setup):
  params, calib, xs, ys = setup
  c = quantize_activations(8, apply_fn=model, batches=[calib], observer="moving_average")
  opt = optax.sgd(0.0)
  state = jc.train.init(params, opt, c)
  x = np.asarray(xs[0]).copy()
  x[0, 0] = 62500.0
  with pytest.warns(OutlierRangeWarning, match="'w1'"):
    jax.block_until_ready(jax.jit(jc.train.make_step(loss, opt, c))(state, jnp.asarray(x), ys[0]))
  with pytest.raises(ValueError, match="observer"):
    quantize_activations(8, observer="histogram")
  with pytest.raises(ValueError, match="apply_fn"):
    quantize_activations(8, observer="moving_average")
  with pytest.raises(ValueError, match="averaging_constant"):
    quantize_activations(8, apply_fn=model, batches=[calib], observer="moving_average", averaging_constant=0.0)
  with pytest.raises(ValueError, match="freeze_step"):
    quantize_activations(8, apply_fn=model, batches=[calib], observer="moving_average", freeze_step=-1)


def test_sharded_mesh_equals_the_single_device_run(setup, single):
  params, calib, xs, ys = setup
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  c = quantize_activations(8, apply_fn=model, batches=[calib], observer="moving_average", averaging_constant=C)
  opt = optax.sgd(0.05)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(loss, opt, c))
  for x, y in zip(xs, ys):
    state, _ = step(state, jax.device_put(x, shard), jax.device_put(y, shard))
  for k, (lo, hi) in single[0].cstate.data.items():
    np.testing.assert_allclose([float(v) for v in state.cstate.data[k]], [float(lo), float(hi)], rtol=1e-5, atol=1e-6)
