import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.quantization import gradient_compression as gc
from tests import helpers

G = jax.random.normal(jax.random.key(0), (6, 5))


@pytest.mark.parametrize("codec", [gc.qsgd_codec(4), gc.terngrad_codec(clip=None)], ids=["qsgd", "terngrad"])
def test_stochastic_codecs_are_unbiased(codec):
  keys = jax.random.split(jax.random.key(1), 20000)
  decoded = jax.vmap(lambda k: codec.decode(*codec.encode(G, k), G.shape))(keys)
  # the standard error of the mean is at most max-step / sqrt(n) ~ 0.02
  np.testing.assert_allclose(decoded.mean(axis=0), G, atol=0.05)


def test_qsgd_levels_and_norm():
  codes, norm = gc.qsgd_codec(4).encode(G, jax.random.key(2))
  assert codes.dtype == jnp.int8 and int(jnp.abs(codes).max()) <= 4
  assert norm.shape == (1,) and float(norm[0]) == pytest.approx(float(jnp.linalg.norm(G)))


def test_qsgd_buckets_have_their_own_norms_and_cut_the_variance():
  """Alistarh et al. 2017 quantize buckets of d = 512 entries, each by its own norm; one
  norm for a large tensor makes the variance exceed the signal (Lemma 3.1: the bound
  grows as min(n / s^2, sqrt(n) / s))."""
  g = jax.random.normal(jax.random.key(6), (4096,))
  _, norms = gc.qsgd_codec(4).encode(g, jax.random.key(7))
  np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(g).reshape(8, 512), axis=1), rtol=1e-5)
  keys = jax.random.split(jax.random.key(8), 200)
  variance = {}
  signal, s = float(jnp.sum(g**2)), 16
  for bucket in (512, None):
    codec = gc.qsgd_codec(s, bucket)
    decoded = jax.vmap(lambda k, codec=codec: codec.decode(*codec.encode(g, k), g.shape))(keys)
    variance[bucket] = float(jnp.mean(jnp.sum((decoded - g) ** 2, axis=1)))
    d = bucket or g.size
    assert variance[bucket] <= min(d / s**2, np.sqrt(d) / s) * signal  # Lemma 3.1, per bucket
  assert variance[None] > signal > variance[512]  # per-tensor noise swamps the gradient; bucketed does not
  assert gc.bytes_sent({"w": g}, gc.qsgd_codec(s)) == 4096 + 8 * 4  # codes + one norm per bucket
  with pytest.raises(ValueError, match=r"bucket_size must be in \[1, inf\], got 0"):
    gc.qsgd_codec(4, 0)


def test_terngrad_clips_at_two_and_a_half_sigma_and_shares_the_scaler():
  """Wen et al. 2017: gradients clipped to ±2.5σ before ternarizing; one scaler, the
  largest of the devices', for all of them."""
  ndev = jax.device_count()
  per_device = jax.random.normal(jax.random.key(9), (ndev, 64)) * jnp.arange(1.0, ndev + 1)[:, None]
  per_device = per_device.at[0, 0].set(1e3)  # an outlier the clip removes
  transform = gc.terngrad(axis_name="d")
  (out,), _ = _run_pmap(transform, per_device)
  g = np.asarray(per_device)
  bound = 2.5 * g.std(axis=1)
  scaler = np.max(np.minimum(np.abs(g).max(axis=1), bound))  # the shared s: the devices' largest
  # every device's contribution is s * {-1, 0, 1} with the one shared s: the mean is s * k / ndev
  steps = np.asarray(out)[0] * ndev / scaler
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
  assert np.abs(np.asarray(out)[0]).max() <= scaler + 1e-5  # far below the outlier
  own = jax.pmap(
    lambda g: gc.terngrad(axis_name="d", share_scale=False).update(g, gc.terngrad(axis_name="d").init(g))[0],
    axis_name="d",
  )(per_device)
  steps_own = np.asarray(own)[0] * ndev / scaler
  assert not np.allclose(steps_own, np.round(steps_own), atol=1e-4)  # own scalers are not on one grid
  with pytest.raises(ValueError, match="clip must be"):
    gc.terngrad(axis_name="d", clip=0.0)


def test_sign_codec_packs_one_bit_and_scales_by_mean_abs():
  data, scale = gc.sign_codec().encode(G, None)
  assert data.dtype == jnp.uint8 and data.size == -(-G.size // 8)
  np.testing.assert_allclose(
    gc.sign_codec().decode(data, scale, G.shape), jnp.where(G >= 0, 1.0, -1.0) * jnp.abs(G).mean()
  )


def _run_pmap(transform, grads_per_device, steps=1):
  def body(g):
    state = transform.init(g)
    outs = []
    for _ in range(steps):
      out, state = transform.update(g, state)
      outs.append(out)
    return outs, state

  return jax.pmap(body, axis_name="d")(grads_per_device)


def test_mean_over_devices_of_decoded_codes():
  ndev = jax.device_count()
  per_device = jax.random.normal(jax.random.key(3), (ndev, 4, 3))
  # the deterministic codec gives the exact expected mean: each device's sign(g) * mean|g|
  (out,), _ = _run_pmap(gc.compressed_mean(gc.sign_codec(), axis_name="d"), per_device)
  out = np.asarray(out)  # on the host: eager indexing of a pmap output can abort XLA's CPU runtime
  g = np.asarray(per_device)
  decoded = np.where(g >= 0, 1.0, -1.0) * np.abs(g).mean(axis=(1, 2), keepdims=True)
  for d in range(ndev):  # every device gets the mean of all devices' decoded gradients
    np.testing.assert_allclose(out[d], decoded.mean(axis=0), rtol=1e-6, atol=1e-7)
  assert not np.allclose(decoded.mean(axis=0), decoded[0])  # a device's own would not pass
  # terngrad: each device's contribution is s_d * {-1, 0, 1}, so the mean lies on that grid / ndev
  (out,), _ = _run_pmap(gc.terngrad(axis_name="d"), per_device)
  out = np.asarray(out)
  np.testing.assert_array_equal(out[0], out[-1])
  scales = np.abs(g).max(axis=(1, 2))
  assert bool(np.all(np.abs(out[0]) <= scales.sum() / ndev + 1e-6))


def test_error_feedback_telescopes():
  """What the transform returned, summed over steps, plus the devices' mean final residual
  equals the devices' mean summed gradient (the error-feedback identity, exactly)."""
  ndev = jax.device_count()
  g = jax.random.normal(jax.random.key(4), (ndev, 7))
  transform = gc.sign_error_feedback(axis_name="d")

  def body(g):
    state = transform.init(g)
    returned = jnp.zeros_like(g)
    for t in range(5):
      out, state = transform.update(g * (t + 1), state)
      returned = returned + out
    return returned, state.error

  returned, error = (np.asarray(a) for a in jax.pmap(body, axis_name="d")(g))
  expected = np.asarray(g).mean(axis=0) * 15
  np.testing.assert_allclose(returned[0] + error.mean(axis=0), expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(returned[0], expected, atol=1e-3)  # the residual is not negligible: the test can fail


def test_only_codes_cross_devices():
  ndev = jax.device_count()
  per_device = jnp.ones((ndev, 64))
  step = jax.pmap(lambda g: gc.terngrad(axis_name="d").update(g, gc.terngrad(axis_name="d").init(g))[0], axis_name="d")
  hlo = step.lower(per_device).compile().as_text()
  gathers = [line for line in hlo.splitlines() if "all-gather(" in line]
  assert gathers and any("u8[" in g for g in gathers)
  # the only all-reduce is the shared scaler's pmax, a scalar: no float gradient crosses devices
  reduces = [line.split("=", 1)[1].split("all-reduce(")[0] for line in hlo.splitlines() if "all-reduce(" in line]
  assert reduces and not [t for t in reduces if re.search(r"\[\d", t)], reduces


def test_training_step_with_compressed_all_reduce():
  ndev = jax.device_count()
  params = helpers.mlp_params()
  opt = optax.chain(gc.qsgd(16, axis_name="d"), optax.sgd(0.05))
  c = jc.identity()
  step = jax.pmap(jc.train.make_step(helpers.mse_loss, opt, c, axis_name="d", reduce_gradients=False), axis_name="d")
  state = jax.tree.map(lambda a: jnp.stack([a] * ndev), jc.train.init(params, opt, c))
  x, y = helpers.batch(n=8 * ndev)
  losses = []
  for _ in range(20):
    state, loss = step(state, x.reshape(ndev, 8, -1), y.reshape(ndev, 8, -1))
    losses.append(float(np.asarray(loss)[0]))
  assert losses[-1] < 0.8 * losses[0]
  jax.tree.map(lambda a: np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(a)[-1]), state.params)


def test_bytes_sent():
  params = {"w": jnp.ones((100, 10)), "b": jnp.ones(10)}
  assert gc.bytes_sent(params, None) == 4 * 1010
  assert gc.bytes_sent(params, gc.sign_codec()) == (125 + 4) + (2 + 4)
  assert gc.bytes_sent(params, gc.terngrad_codec()) == (250 + 4) + (3 + 4)
  assert gc.bytes_sent(params, gc.qsgd_codec(4)) == (1000 + 4 * 2) + (10 + 4)
  with pytest.raises(ValueError, match="levels must be in"):
    gc.qsgd(200, axis_name="d")


def test_under_shard_map():
  from jax.sharding import Mesh
  from jax.sharding import PartitionSpec as P

  ndev = jax.device_count()
  mesh = Mesh(np.array(jax.devices()), ("d",))
  per_device = jax.random.normal(jax.random.key(5), (ndev, 3, 4))
  transform = gc.qsgd(8, axis_name="d")

  def body(g):
    g = g[0]
    out, _ = transform.update(g, transform.init(g))
    return out[None]

  out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d")))(per_device)
  (pmapped,), _ = _run_pmap(transform, per_device)
  np.testing.assert_allclose(np.asarray(out), np.asarray(pmapped), rtol=1e-6, atol=1e-6)
