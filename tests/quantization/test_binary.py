"""BinaryConnect, XNOR-Net scaling and BNN activations against the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import _binary as binary


def _w(seed=0, shape=(6, 4)):
  return jax.random.normal(jax.random.key(seed), shape) * 0.5


def test_sign_maps_zero_to_plus_one_and_binarize_is_straight_through():
  x = jnp.array([-0.5, 0.0, 2.0])
  np.testing.assert_array_equal(binary.sign(x), [-1.0, 1.0, 1.0])
  g = jax.grad(lambda x: (binary.binarize(x) * jnp.array([1.0, 2.0, 3.0])).sum())(x)
  np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])


def test_binary_activation_hardtanh_gradient():
  x = jnp.array([-1.5, -1.0, -0.3, 0.0, 0.99, 1.0, 1.01])
  np.testing.assert_array_equal(binary.binary_activation(x), [-1, -1, -1, 1, 1, 1, 1])
  g = jax.grad(lambda x: binary.binary_activation(x).sum())(x)
  np.testing.assert_array_equal(g, (np.abs(np.asarray(x)) <= 1).astype(np.float32))


def test_stochastic_binarization_probability_is_hard_sigmoid():
  w = jnp.array([-2.0, -0.4, 0.0, 0.3, 1.5])
  noise = jax.random.uniform(jax.random.key(3), (20000, 5))
  frac = np.asarray((binary.binarize_stochastic(jnp.broadcast_to(w, noise.shape), noise) > 0).mean(0))
  np.testing.assert_allclose(frac, np.clip((np.asarray(w) + 1) / 2, 0, 1), atol=0.015)
  g = jax.grad(lambda w: binary.binarize_stochastic(w, noise[0]).sum())(w)
  np.testing.assert_array_equal(g, np.ones(5))


def test_binary_connect_values_clip_and_packed_bits():
  w = _w()
  c = jc.quantization.binary_connect()
  p, s = c.init({"k": w})
  np.testing.assert_array_equal(c.apply(p, s)["k"], np.where(np.asarray(w) >= 0, 1.0, -1.0))
  big, _ = c.update({"k": w * 10}, s)
  assert float(jnp.abs(big["k"]).max()) == 1.0
  packed = c.pack(p, s)["k"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.indices.bits == 1
  assert packed.indices.nbytes == (w.size + 7) // 8
  np.testing.assert_array_equal(packed.materialize(), c.apply(p, s)["k"])


def test_stochastic_binary_connect_samples_per_step_and_is_reproducible():
  c = jc.quantization.binary_connect(stochastic=True, seed=4)
  p, s = c.init({"a": _w(1, (40, 30)), "b": _w(1, (40, 30))})
  first = c.apply(p, s)
  np.testing.assert_array_equal(first["a"], c.apply(p, s)["a"])  # same state, same sample
  assert not np.array_equal(first["a"], first["b"])  # leaves draw independently
  _, s1 = c.update(p, s)
  assert not np.array_equal(first["a"], c.apply(p, s1)["a"])  # a new sample each step
  np.testing.assert_array_equal(c.pack(p, s1)["a"].materialize(), c.apply(p, s1)["a"])


def test_xnor_alpha_is_mean_abs_per_output_channel_and_gradient():
  w = 2.0 * _w(2)  # some |w| > 1, where the paper's sign estimator 1{|w| <= 1} is 0
  c = jc.quantization.xnor_net()
  p, s = c.init({"k": w})
  wn = np.asarray(w)
  alpha = np.abs(wn).mean(0, keepdims=True)
  np.testing.assert_allclose(c.apply(p, s)["k"], alpha * np.where(wn >= 0, 1, -1), rtol=1e-6)
  g = np.asarray(jax.random.normal(jax.random.key(9), w.shape))
  grad = jax.grad(lambda p: (c.apply(p, s)["k"] * g).sum())(p)["k"]
  b = np.where(wn >= 0, 1.0, -1.0)
  inside = np.abs(wn) <= 1
  assert 0 < inside.mean() < 1
  expected = alpha * g * inside + b / w.shape[0] * (g * b).sum(0, keepdims=True)  # Rastegari et al. §3.1
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
  packed = c.pack(p, s)["k"]
  assert packed.codebook.shape == (4, 2) and packed.axis == 1
  np.testing.assert_array_equal(packed.materialize(), c.apply(p, s)["k"])


def test_xnor_per_tensor_alpha():
  w = _w(3)
  c = jc.quantization.xnor_net(per_channel=False)
  p, s = c.init({"k": w})
  np.testing.assert_allclose(jnp.abs(c.apply(p, s)["k"]), jnp.full(w.shape, jnp.abs(w).mean()), rtol=1e-6)


def test_binary_connect_scale_arguments_are_xnor_net():
  w = _w(4)
  for per_channel in (False, True):
    c, x = (
      jc.quantization.binary_connect(scale=True, per_channel=per_channel),
      jc.quantization.xnor_net(per_channel=per_channel),
    )
    np.testing.assert_array_equal(c.apply(*c.init({"k": w}))["k"], x.apply(*x.init({"k": w}))["k"])


def test_binary_activation_rule_binarizes_the_inputs_of_selected_sites():
  params = jc.quantization.binary_connect().init({"fc0": {"kernel": _w(4, (5, 3))}, "fc1": {"kernel": _w(5, (3, 2))}})[
    0
  ]

  def model(p, x):
    return jnp.tanh(x @ p["fc0"]["kernel"]) @ p["fc1"]["kernel"]

  x = jax.random.normal(jax.random.key(6), (4, 5))
  out = jc.graph.rewrite(model, binary.binary_activation_rule(), where="fc1/kernel")(params, x)
  expected = np.where(np.tanh(x @ params["fc0"]["kernel"]) >= 0, 1.0, -1.0) @ params["fc1"]["kernel"]
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match="per_channel=True needs scale=True"):
    jc.quantization.binary_connect(per_channel=True)
  with pytest.raises(ValueError, match="per_channel must be a bool, got 'channel'"):
    jc.quantization.binary_connect(scale=True, per_channel="channel")
  with pytest.raises(ValueError, match=r"axis must be an integer, got 1\.5"):
    jc.quantization.binary_connect(scale=True, per_channel=True, axis=1.5)
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    jc.quantization.xnor_net(axis=2).init({"k": _w()})
  with pytest.raises(ValueError, match="sign_gradient must be 'identity' or 'hardtanh', got 'tanh'"):
    jc.quantization.binary_connect(sign_gradient="tanh")
  with pytest.raises(ValueError, match="sign_gradient='hardtanh' is for deterministic"):
    jc.quantization.binary_connect(sign_gradient="hardtanh", stochastic=True)
