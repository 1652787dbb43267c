"""Zhuang et al. 2018: the DoReFa-style quantizers, bit-width stages (two-stage and
progressive quantization) and guided training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc

q = jc.quantization


def _dorefa_weight_reference(w, bits):
  n = 2**bits - 1
  t = np.tanh(w)
  z = t / (2 * np.abs(t).max()) + 0.5
  return 2 * np.round(n * z) / n - 1


def test_weight_quantizer_and_its_gradient_follow_the_paper():
  w = np.asarray(jax.random.normal(jax.random.key(0), (6, 5)), np.float64)
  g = np.asarray(jax.random.normal(jax.random.key(1), (6, 5)), np.float64)
  for bits in (2, 4):
    out = q.dorefa_weight(jnp.asarray(w, jnp.float32), bits)
    np.testing.assert_allclose(out, _dorefa_weight_reference(w, bits), atol=1e-6)
  grad = jax.grad(lambda w: (q.dorefa_weight(w, 2) * g).sum())(jnp.asarray(w, jnp.float32))
  # straight-through rounding: d(2z - 1)/dw with z = tanh(w) / (2 max|tanh w|) + 1/2
  t = np.tanh(w)
  k = np.unravel_index(np.abs(t).argmax(), t.shape)
  m = np.abs(t[k])
  expected = g * (1 - t**2) / m
  expected[k] -= np.sign(t[k]) * (1 - t[k] ** 2) / m**2 * np.sum(g * t)
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_activation_quantizer_clips_to_unit_range_with_straight_through():
  x = np.linspace(-0.5, 1.5, 41).astype(np.float32)
  out = q.dorefa_activation(jnp.asarray(x), 3)
  np.testing.assert_allclose(out, np.round(np.clip(x, 0, 1) * 7) / 7, atol=1e-7)
  grad = jax.grad(lambda x: q.dorefa_activation(x, 3).sum())(jnp.asarray(x))
  np.testing.assert_array_equal(grad, ((x >= 0) & (x <= 1)).astype(np.float32))


def test_progressive_stages_switch_bits_and_pack_the_current_stage():
  stages = q.progressive_stages(2, (32, 8, 2))
  assert stages == ((0, 32), (2, 8), (4, 2))
  w = jax.random.normal(jax.random.key(2), (8, 4))
  c = q.dorefa(stages)
  params, state = c.init({"w": w})
  apply = jax.jit(c.apply)
  for count, bits in [(0, 32), (1, 32), (2, 8), (3, 8), (4, 2), (9, 2)]:
    s = state._replace(count=jnp.asarray(count, jnp.int32))
    expected = np.asarray(w) if bits == 32 else _dorefa_weight_reference(np.asarray(w, np.float64), bits)
    np.testing.assert_allclose(apply(params, s)["w"], expected, atol=1e-6)
  packed = c.pack(params, state._replace(count=jnp.asarray(4, jnp.int32)))["w"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.nbytes == 4 * 4 + 32 * 2 // 8
  np.testing.assert_array_equal(jc.export.materialize(packed), apply(params, state._replace(count=4))["w"])
  assert not isinstance(c.pack(params, state)["w"], jc.export.CompressedLeaf)  # the float stage


def test_two_stage_quantizes_activations_only_from_the_second_stage():
  model = lambda p, x: x @ p["w"]
  c = jc.chain(q.dorefa(2), q.dorefa_activations(((0, 32), (3, 2))))
  params, state = c.init({"w": jnp.ones((3, 2))})
  x = jnp.array([[0.3, 0.5, 4.0]])

  def run(count):
    st = jc.core._chain.ChainState(
      tuple(s._replace(count=jnp.asarray(count, jnp.int32)) for s in state.stages), state.plan
    )
    return np.asarray(c.rewrite(model, params, st)(c.apply(params, st), x))

  np.testing.assert_allclose(run(2), [[4.8, 4.8]], rtol=1e-6)  # weights at 2 bits are all 1: float inputs
  np.testing.assert_allclose(run(3), [[1 / 3 + 2 / 3 + 1] * 2], rtol=1e-6)


@pytest.mark.parametrize(
  "bits, match",
  [(((1, 4),), "step 0"), (((0, 8), (0, 4)), "increasing"), (((0, 32), (5, 1)), "bits"), (17, "bits"), ("4", "bits")],
)
def test_bad_stages_raise(bits, match):
  with pytest.raises(ValueError, match=match):
    q.dorefa(bits)


def _mlp(p, x):
  return jax.nn.relu(x @ p["a"]) @ p["b"]


def test_guided_loss_is_the_sum_of_both_networks_losses_and_trains_both():
  ka, kb, kx = jax.random.split(jax.random.key(3), 3)
  params = {"a": jax.random.normal(ka, (5, 8)) * 0.5, "b": jax.random.normal(kb, (8, 3)) * 0.5}
  x, y = jax.random.normal(kx, (16, 5)), jnp.arange(16) % 3
  beta = 0.7
  c = q.guided(jc.chain(q.dorefa(2), q.dorefa_activations(2, where="b")))
  loss = q.guided_loss(_mlp, beta=beta)
  tree, state = c.init(params)
  joint = jc.train.wrap_loss(loss, c)

  def ce(z):
    return np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(16), np.asarray(y)])

  low_view = c.apply(tree, state)
  wq = {k: np.asarray(v) for k, v in low_view.items()}
  h = np.round(np.clip(np.maximum(np.asarray(x) @ wq["a"], 0), 0, 1) * 3) / 3
  z_low = h @ wq["b"]
  z_guide = np.asarray(_mlp(params, x))
  expected = ce(z_low) + ce(z_guide) + beta / 2 * np.mean(np.sum((z_low - z_guide) ** 2, -1))
  np.testing.assert_allclose(joint(tree, state, x, y), expected, rtol=1e-5)
  # the guide's gradient is that of its own loss L_W = CE(guide) + beta/2 D (the low-bit outputs fixed)
  g = jax.grad(joint)(tree, state, x, y)
  z_low_j = jnp.asarray(z_low)

  def l_w(p):
    z = _mlp(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean() + beta / 2 * jnp.mean(
      jnp.sum((z - z_low_j) ** 2, -1)
    )

  jax.tree.map(
    lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6), g.extra["guide"], jax.grad(l_w)(params)
  )
  # a plain function (the model's apply at evaluation) gets the low-bit network alone
  np.testing.assert_allclose(c.rewrite(_mlp, tree, state)(low_view, x), z_low, rtol=1e-5, atol=1e-6)
  opt = optax.adam(1e-2)
  st = jc.train.init(params, opt, c)
  st, _ = jax.jit(jc.train.make_step(loss, opt, c))(st, x, y)
  assert not np.allclose(st.params.extra["guide"]["a"], params["a"])  # the guide trains too
  packed = c.pack(st.params, st.cstate)  # the low-bit network only
  assert set(packed) == {"a", "b"} and all(isinstance(v, jc.export.CodebookArray) for v in packed.values())
  with pytest.raises(ValueError, match="beta"):
    q.guided_loss(_mlp, beta=-1.0)
