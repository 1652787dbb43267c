"""PACT: clipping, quantization and the clip's gradient, for activations and weights."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from tests import helpers

pactm = importlib.import_module("jaxcompress.quantization._pact")


def test_activation_forward_and_gradients_match_the_paper():
  x = np.asarray(jax.random.normal(jax.random.key(0), (200,)) * 2)
  g = np.asarray(jax.random.normal(jax.random.key(1), (200,)))
  alpha, bits = np.float32(1.3), 3
  n = 2**bits - 1
  out = pactm.pact_quantize(jnp.asarray(x), alpha, bits)
  np.testing.assert_allclose(out, np.round(np.clip(x, 0, alpha) / (alpha / n)) * (alpha / n), rtol=1e-6)
  dx, dalpha = jax.grad(lambda x, a: (pactm.pact_quantize(x, a, bits) * g).sum(), (0, 1))(jnp.asarray(x), alpha)
  np.testing.assert_array_equal(dx, np.where((x >= 0) & (x < alpha), g, 0.0))
  np.testing.assert_allclose(dalpha, g[x >= alpha].sum(), rtol=1e-5)  # Choi et al. Eq. 3


def test_weight_compressor_gradient_update_and_pack():
  w = jax.random.normal(jax.random.key(2), (16, 8)) * 0.3
  c = jc.quantization.pact(3)
  p, s = c.init({"k": w})
  assert float(p["k"].alpha) == float(jnp.abs(w).max())
  p = {"k": p["k"]._replace(alpha=jnp.float32(0.25))}
  wn = np.asarray(w)
  out = np.asarray(c.apply(p, s)["k"])
  np.testing.assert_allclose(out, np.round(np.clip(wn, -0.25, 0.25) / (0.25 / 3)) * (0.25 / 3), rtol=1e-6)
  g = np.asarray(jax.random.normal(jax.random.key(3), w.shape))
  grads = jax.grad(lambda p: (c.apply(p, s)["k"] * g).sum())(p)["k"]
  np.testing.assert_array_equal(grads.weight, np.where(np.abs(wn) < 0.25, g, 0.0))
  clipped = np.abs(wn) >= 0.25
  np.testing.assert_allclose(grads.alpha, (g * np.sign(wn))[clipped].sum(), rtol=1e-5)
  fixed, _ = c.update({"k": p["k"]._replace(alpha=jnp.float32(-2.0))}, s)
  assert float(fixed["k"].alpha) > 0
  packed = c.pack(p, s)["k"]
  assert packed.bits == 3
  np.testing.assert_array_equal(packed.materialize(), out)


def test_activation_quantizer_init_and_update():
  params = helpers.mlp_params()
  x, _ = helpers.batch(n=16)
  aq = jc.quantization.pact_activations(helpers.mlp_apply, 4, inputs=(x,), where="fc1/kernel", alpha_decay=0.5)
  tree, state = aq.init(params)
  hidden = jax.nn.relu(x @ params["fc0"]["kernel"] + params["fc0"]["bias"])
  np.testing.assert_allclose(tree.extra["fc1/kernel"]["alpha"], hidden.max(), rtol=1e-6)
  fixed, _ = aq.update(jc.Joint(params, {"fc1/kernel": {"alpha": jnp.float32(-1.0)}}), state)
  assert float(fixed.extra["fc1/kernel"]["alpha"]) > 0
  # the paper's L2 on alpha comes through the loss seam
  np.testing.assert_allclose(aq.penalty(tree, state), 0.5 * hidden.max() ** 2, rtol=1e-6)
  zero_loss = lambda p, x: 0.0 * helpers.mlp_apply(p, x).sum()  # only the penalty has a gradient
  loss = jc.train.wrap_loss(zero_loss, aq)
  np.testing.assert_allclose(jax.grad(loss)(tree, state, x).extra["fc1/kernel"]["alpha"], hidden.max(), rtol=1e-6)


def test_pact_weight_clip_penalty():
  c = jc.quantization.pact(4, init_alpha=2.0, alpha_decay=0.1)
  tree, state = c.init(helpers.mlp_params())
  np.testing.assert_allclose(c.penalty(tree, state), 0.1 * (4.0 + 4.0), rtol=1e-6)
  assert jc.quantization.pact(4).penalty(tree, state) is None


def test_bad_input():
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match=f"init_alpha must be .*got {bad}"):
      jc.quantization.pact(4, init_alpha=bad)
    with pytest.raises(ValueError, match=f"init_alpha must be .*got {bad}"):
      jc.quantization.pact_activations(helpers.mlp_apply, 4, inputs=helpers.batch()[:1], init_alpha=bad)
  with pytest.raises(ValueError, match="bits must be in \\[2, 16\\], got 1"):
    jc.quantization.pact(1)
