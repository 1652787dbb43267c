"""LSQ: forward, the paper's step gradient and gradient scale, positivity, activations."""

import importlib
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from tests import helpers

lsqm = importlib.import_module("jaxcompress.quantization._lsq")


def _reference_grads(v, s, qn, qp, g, grad_scale):
  x = v / s
  low, high = x <= -qn, x >= qp
  inside = ~(low | high)
  d = np.where(inside, np.round(x) - x, np.where(low, -qn, qp))
  return np.where(inside, g, 0.0), grad_scale * np.sum(g * d)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (3, False)])
def test_forward_and_gradients_match_the_paper(bits, signed):
  qn, qp = lsqm.lsq_range(bits, signed)
  assert (qn, qp) == ((2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
  v = np.asarray(jax.random.normal(jax.random.key(bits), (64,)))
  g = np.asarray(jax.random.normal(jax.random.key(10 + bits), (64,)))
  s, scale = np.float32(0.37), 0.1
  out = lsqm.lsq_quantize(jnp.asarray(v), jnp.asarray(s), qn, qp, scale)
  np.testing.assert_allclose(out, np.round(np.clip(v / s, -qn, qp)) * s, rtol=1e-6)
  dv, ds = jax.grad(lambda v, s: (lsqm.lsq_quantize(v, s, qn, qp, scale) * g).sum(), (0, 1))(jnp.asarray(v), s)
  ref_dv, ref_ds = _reference_grads(v, s, qn, qp, g, scale)
  np.testing.assert_allclose(dv, ref_dv)
  np.testing.assert_allclose(ds, ref_ds, rtol=1e-4)


def test_weight_compressor_init_gradient_scale_update_and_pack():
  w = jax.random.normal(jax.random.key(0), (16, 8)) * 0.2
  c = jc.quantization.lsq(3)
  p, s = c.init({"k": w})
  qn, qp = 4, 3
  np.testing.assert_allclose(p["k"].step, 2 * np.abs(np.asarray(w)).mean() / math.sqrt(qp), rtol=1e-6)
  g = np.asarray(jax.random.normal(jax.random.key(1), w.shape))
  grads = jax.grad(lambda p: (c.apply(p, s)["k"] * g).sum())(p)["k"]
  _, ref_ds = _reference_grads(np.asarray(w), np.asarray(p["k"].step), qn, qp, g, 1 / math.sqrt(w.size * qp))
  np.testing.assert_allclose(grads.step, ref_ds, rtol=1e-4)
  negative = {"k": p["k"]._replace(step=jnp.float32(-1.0))}
  fixed, _ = c.update(negative, s)
  assert float(fixed["k"].step) > 0
  packed = c.pack(p, s)["k"]
  assert isinstance(packed, jc.export.QArray) and packed.bits == 3
  np.testing.assert_array_equal(packed.materialize(), c.apply(p, s)["k"])


def test_bad_input():
  for bad in (0, 0.0, -0.1):
    with pytest.raises(ValueError, match=f"init_step must be in .*got {float(bad)}"):
      jc.quantization.lsq(4, init_step=bad)
    with pytest.raises(ValueError, match="init_step must be"):
      jc.quantization.lsq_activations(helpers.mlp_apply, 4, inputs=helpers.batch()[:1], init_step=bad)
  with pytest.raises(ValueError, match="bits must be in \\[2, 16\\], got 1"):
    jc.quantization.lsq(1)


def test_activation_steps_init_gradient_and_joint_training():
  params = helpers.mlp_params()
  x, y = helpers.batch(n=32)
  aq = jc.quantization.lsq_activations(helpers.mlp_apply, 2, inputs=(x,), where="fc1/kernel")
  tree, astate = aq.init(params)
  acts = tree.extra
  assert list(acts) == ["fc1/kernel"]
  hidden = jax.nn.relu(x @ params["fc0"]["kernel"] + params["fc0"]["bias"])
  qp = 3
  np.testing.assert_allclose(acts["fc1/kernel"]["step"], 2 * np.abs(hidden).mean() / math.sqrt(qp), rtol=1e-5)

  def quantized(p, a):
    return aq.rewrite(helpers.mlp_apply, jc.Joint(p, a), astate)(p, x)

  step = acts["fc1/kernel"]["step"]
  expected = lsqm.lsq_quantize(hidden, step, 0, qp, 1.0) @ params["fc1"]["kernel"] + params["fc1"]["bias"]
  np.testing.assert_allclose(quantized(params, acts), expected, rtol=1e-5, atol=1e-6)

  # the step's gradient uses the paper's scale 1 / sqrt(N_F * Q_P), N_F = 32 features
  g = jax.random.normal(jax.random.key(2), expected.shape)
  w1, b1 = params["fc1"]["kernel"], params["fc1"]["bias"]
  scale = 1 / math.sqrt(32 * qp)
  ref = jax.grad(lambda a: ((lsqm.lsq_quantize(hidden, a, 0, qp, scale) @ w1 + b1) * g).sum())(step)
  got = jax.grad(lambda a: (quantized(params, {"fc1/kernel": {"step": a}}) * g).sum())(step)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert float(got) != 0.0

  # weights and activation steps in one chain, one optimizer
  c = jc.chain(jc.quantization.lsq(4), aq)
  opt = optax.adam(1e-2)
  state = jc.train.init(params, opt, c)
  assert isinstance(state.params, jc.Joint) and set(state.params.extra) == {"fc1/kernel"}
  loss = lambda p, x, y: jnp.mean((helpers.mlp_apply(p, x) - y) ** 2)
  train_step = jc.train.make_step(loss, opt, c)
  eager, _ = train_step(state, x, y)
  jitted, _ = jax.jit(train_step)(state, x, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager.params, jitted.params)
  assert float(jitted.params.extra["fc1/kernel"]["step"]) != float(acts["fc1/kernel"]["step"])
  packed = c.pack(jitted.params, jitted.cstate)
  assert isinstance(packed["fc0"]["kernel"], jc.export.QArray)
  with tempfile.TemporaryDirectory() as d:
    jc.export.save(os.path.join(d, "m.safetensors"), packed)
    loaded = jc.export.materialize_tree(jc.export.load(os.path.join(d, "m.safetensors")))
  model = c.rewrite(helpers.mlp_apply, jitted.params, jitted.cstate)
  np.testing.assert_array_equal(model(loaded, x), model(c.apply(jitted.params, jitted.cstate), x))


def test_update_keeps_steps_positive():
  aq = jc.quantization.lsq_activations(helpers.mlp_apply, 4, inputs=helpers.batch()[:1], signed=True)
  tree, state = aq.init(helpers.mlp_params())
  bad = jc.Joint(tree.params, jax.tree.map(lambda s: -s, tree.extra))
  fixed, _ = aq.update(bad, state)
  assert all(float(s) > 0 for s in jax.tree.leaves(fixed.extra))
