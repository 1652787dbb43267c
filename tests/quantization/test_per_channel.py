"""Per-channel and per-group LSQ, TTQ, PACT and power-of-two: each block is quantized as the
per-tensor method quantizes it alone (values, learned scales, gradients), and packs exactly."""

import jax
import numpy as np
import pytest

import jaxcompress as jc

q = jc.quantization
W = jax.random.normal(jax.random.key(0), (8, 3)) * 0.3
G = jax.random.normal(jax.random.key(1), (8, 3))

# (name, factory, kwargs, blocks): blocks maps each block to (its slice of the weight, the
# index of its learned scale in the per-channel node's scale array).
COLUMNS = [((slice(None), slice(j, j + 1)), (0, j)) for j in range(3)]
ROWS = [((slice(i, i + 1), slice(None)), (i, 0)) for i in range(0, 8, 3)]
GROUPS = [((slice(4 * g, 4 * g + 4), slice(j, j + 1)), (g, 0, j)) for g in range(2) for j in range(3)]
SCALES = {q.lsq: ("step",), q.pact: ("alpha",), q.ttq: ("positive", "negative"), q.power_of_two: ()}
CASES = {
  "lsq_channel": (lambda **k: q.lsq(3, **k), q.lsq, {"per_channel": True}, COLUMNS),
  "lsq_rows": (lambda **k: q.lsq(2, **k), q.lsq, {"per_channel": True, "axis": 0}, ROWS),
  "lsq_group": (lambda **k: q.lsq(4, **k), q.lsq, {"group_size": 4}, GROUPS),
  "pact_channel": (lambda **k: q.pact(3, **k), q.pact, {"per_channel": True}, COLUMNS),
  "pact_group": (lambda **k: q.pact(4, **k), q.pact, {"group_size": 4}, GROUPS),
  "ttq_channel": (lambda **k: q.ttq(0.3, **k), q.ttq, {"per_channel": True}, COLUMNS),
  "power_of_two_channel": (lambda **k: q.power_of_two(3, **k), q.power_of_two, {"per_channel": True}, COLUMNS),
}


def _run(c, w):
  p, s = c.init({"k": w})
  out = c.apply(p, s)["k"]
  grads = jax.grad(lambda p: (c.apply(p, s)["k"] * G[tuple(slice(0, n) for n in w.shape)]).sum())(p)["k"]
  return p["k"], s, out, grads, c.pack(p, s)["k"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_block_is_the_per_tensor_method_on_that_block(name):
  make, factory, kwargs, blocks = CASES[name]
  node, _, out, grads, packed = _run(make(**kwargs), W)
  np.testing.assert_array_equal(jc.export.materialize(packed), out)  # pack stores the scales exactly
  for where, index in (blocks[0], blocks[-1]):  # the first and last block: enough to catch a layout error
    block = W[where]
    c = make()
    p, s = c.init({"k": block})
    g = jax.grad(lambda p, c=c, s=s, where=where: (c.apply(p, s)["k"] * G[where]).sum())(p)["k"]
    np.testing.assert_allclose(out[where], c.apply(p, s)["k"], rtol=1e-6, atol=1e-7)
    for field in SCALES[factory]:
      np.testing.assert_allclose(getattr(node, field)[index], getattr(p["k"], field), rtol=1e-6)
      np.testing.assert_allclose(getattr(grads, field)[index], getattr(g, field), rtol=1e-4, atol=1e-6)
    if SCALES[factory]:
      np.testing.assert_allclose(grads.weight[where], g.weight, rtol=1e-5, atol=1e-6)


def test_lsq_per_channel_init_and_gradient_scale_follow_the_paper():
  bits, qp = 3, 3
  node, _, _, _, _ = _run(q.lsq(bits, per_channel=True), W)
  np.testing.assert_allclose(node.step[0], 2 * np.abs(np.asarray(W)).mean(axis=0) / np.sqrt(qp), rtol=1e-6)
  # g = 1 / sqrt(N_channel * Q_P): a per-channel step of an (8, 3) kernel has N = 8
  c = q.lsq(bits, per_channel=True)
  p, s = c.init({"k": W})
  ds = jax.grad(lambda p: (c.apply(p, s)["k"] * G).sum())(p)["k"].step[0]
  x = np.asarray(W) / np.asarray(node.step)
  d = np.where(x <= -4, -4.0, np.where(x >= qp, qp, np.round(x) - x))
  np.testing.assert_allclose(ds, (np.asarray(G) * d).sum(axis=0) / np.sqrt(8 * qp), rtol=1e-4)


def test_per_channel_init_scale_shapes_and_update():
  p, _ = q.lsq(2, per_channel=True, init_step=0.25).init({"k": W})
  assert p["k"].step.shape == (1, 3) and float(p["k"].step.max()) == 0.25
  p, _ = q.ttq(per_channel=True, init_scale=0.5).init({"k": W})
  assert p["k"].positive.shape == p["k"].negative.shape == (1, 3)
  c = q.pact(4, per_channel=True, init_alpha=1.0)
  p, s = c.init({"k": W})
  fixed, _ = c.update({"k": p["k"]._replace(alpha=p["k"].alpha.at[0, 2].set(-1.0))}, s)
  assert fixed["k"].alpha.shape == (1, 3) and float(fixed["k"].alpha.min()) > 0
  packed = c.pack(p, s)["k"]
  assert packed.scale.shape == (1, 3)


@pytest.mark.parametrize("factory", [q.lsq, q.ttq, q.pact, q.power_of_two])
def test_bad_axis_and_granularity_args(factory):
  with pytest.raises(ValueError, match="axis=2 is out of range for leaf 'k'"):
    factory(per_channel=True, axis=2).init({"k": W})
  with pytest.raises(ValueError, match="per_channel must be a bool"):
    factory(per_channel=1)
  with pytest.raises(ValueError, match="axis must be an integer"):
    factory(per_channel=True, axis=1.0)


@pytest.mark.parametrize("factory", [q.lsq, q.pact])
def test_bad_groups(factory):
  with pytest.raises(ValueError, match="group_size=3 does not divide axis 0 of size 8"):
    factory(group_size=3).init({"k": W})
  with pytest.raises(ValueError, match="group_size must be in"):
    factory(group_size=0)
