"""jc.graph on the model zoo of tests/graph/models.py: sites, identity rewrite, FLOPs, dependency groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcompress import accounting, graph
from jaxcompress.core.tree import map_with_path
from tests.graph import models as M

ZOO = {
  "mlp": (M.MLP, (8, 64)),
  "residual_conv": (M.ResidualConvNet, (2, 8, 8, 1)),
  "depthwise_separable": (M.DepthwiseSeparable, (2, 9, 9, 3)),
  "inception": (M.Inception, (2, 6, 6, 3)),
  "transformer": (M.TransformerBlock, (2, 5, 16)),
  "scanned": (M.ScannedMLP, (3, 16)),
}


def build(name):
  cls, shape = ZOO[name]
  apply_fn, variables = M.nnx_apply(cls(nnx.Rngs(0)))
  return apply_fn, variables, jax.random.normal(jax.random.key(1), shape)


def conv_macs(x_shape, k_shape, **kw):
  flops, _ = accounting.conv_flops(x_shape, k_shape, bias=False, count_padding=False, **kw)
  return flops // 2


# name -> [(path, contracted axes, feature axes, in_loop, MACs)], analytic
EXPECTED_SITES = {
  "mlp": [
    ("layers/0/kernel", (0,), (1,), False, 8 * 64 * 300),
    ("layers/1/kernel", (0,), (1,), False, 8 * 300 * 100),
    ("layers/2/kernel", (0,), (1,), False, 8 * 100 * 10),
  ],
  "residual_conv": [
    ("stem/kernel", (2, 0, 1), (3,), False, conv_macs((2, 8, 8, 1), (3, 3, 1, 8))),
    ("conv1/kernel", (2, 0, 1), (3,), False, conv_macs((2, 8, 8, 8), (3, 3, 8, 8))),
    ("conv2/kernel", (2, 0, 1), (3,), False, conv_macs((2, 8, 8, 8), (3, 3, 8, 8))),
    ("head/kernel", (0,), (1,), False, 2 * 128 * 10),
  ],
  "depthwise_separable": [
    ("conv/kernel", (2, 0, 1), (3,), False, conv_macs((2, 9, 9, 3), (3, 3, 3, 6), strides=2)),
    (
      "depthwise/kernel",
      (2, 0, 1),
      (3,),
      False,
      conv_macs((2, 5, 5, 6), (3, 3, 1, 6), padding="VALID", feature_group_count=6),
    ),
    ("pointwise/kernel", (2, 0, 1), (3,), False, conv_macs((2, 3, 3, 6), (1, 1, 6, 12))),
    ("head/kernel", (0,), (1,), False, 2 * 12 * 10),
  ],
  "inception": [
    ("branch_a/kernel", (2, 0, 1), (3,), False, conv_macs((2, 6, 6, 3), (1, 1, 3, 4))),
    ("branch_b/kernel", (2, 0, 1), (3,), False, conv_macs((2, 6, 6, 3), (3, 3, 3, 6))),
    ("merge/kernel", (2, 0, 1), (3,), False, conv_macs((2, 6, 6, 10), (1, 1, 10, 5))),
  ],
  "transformer": [
    ("wq", (0,), (1, 2), False, 2 * 5 * 16 * 16),
    ("wk", (0,), (1, 2), False, 2 * 5 * 16 * 16),
    ("wv", (0,), (1, 2), False, 2 * 5 * 16 * 16),
    ("wo", (0, 1), (2,), False, 2 * 5 * 16 * 16),
    ("fc1/kernel", (0,), (1,), False, 2 * 5 * 16 * 32),
    ("fc2/kernel", (0,), (1,), False, 2 * 5 * 32 * 16),
  ],
  "scanned": [("w", (0,), (1,), True, 4 * 3 * 16 * 16)],
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_sites_and_flops(name):
  apply_fn, variables, x = build(name)
  sites = graph.trace(apply_fn, variables, x)
  got = [(s.path, s.contracted_axes, s.feature_axes, s.in_loop, graph.macs(s) * (s.trip_count or 1)) for s in sites]
  assert got == EXPECTED_SITES[name]
  assert all(s.activation_dtype == jnp.float32 for s in sites)
  total = graph.flops(apply_fn, variables, x)
  attention = 2 * (2 * 2 * 5 * 5 * 8) if name == "transformer" else 0  # q k^T and att v, in MACs
  assert total["macs"] == sum(row[-1] for row in EXPECTED_SITES[name]) + attention
  assert total["flops"] == 2 * total["macs"]


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"scanned"}))
def test_flops_cross_check_xla(name):
  """XLA also counts elementwise work (bias, BN, activations): ours is 80-100% of its total."""
  apply_fn, variables, x = build(name)
  cost = jax.jit(apply_fn).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert 0.8 * cost["flops"] <= graph.flops(apply_fn, variables, x)["flops"] <= cost["flops"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_identity_rewrite_is_bitwise_equal(name):
  apply_fn, variables, x = build(name)
  same = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w))
  np.testing.assert_array_equal(same(variables, x), apply_fn(variables, x))
  np.testing.assert_array_equal(jax.jit(same)(variables, x), jax.jit(apply_fn)(variables, x))


def test_rewrite_under_grad_and_vmap_and_selection():
  apply_fn, variables, x = build("mlp")
  loss = lambda f: lambda v: f(v, x).sum()
  same = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w))
  g1, g2 = jax.grad(loss(apply_fn))(variables), jax.grad(loss(same))(variables)
  jax.tree.map(np.testing.assert_array_equal, g1, g2)
  np.testing.assert_array_equal(
    jax.vmap(same, (None, 0))(variables, x[:, None]), jax.vmap(apply_fn, (None, 0))(variables, x[:, None])
  )
  # Only the selected site changes: scale the last layer's output by 2.
  doubled = graph.rewrite(apply_fn, lambda site, a, w: 2 * site.compute(a, w), where="layers/2/kernel")
  bias = variables["layers"][2]["bias"][...]
  np.testing.assert_allclose(doubled(variables, x) - bias, 2 * (apply_fn(variables, x) - bias), rtol=1e-5, atol=1e-5)


def test_sites_in_nested_calls_are_found_and_rewritten():
  @jax.custom_vjp
  def custom(x, w):
    return x @ w

  custom.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))

  def f(p, x):
    x = jax.jit(lambda x: x @ p["jit"])(x)
    x = jax.checkpoint(lambda x: jnp.tanh(x @ p["remat"]))(x)
    x = custom(x, p["custom_vjp"])
    x = jax.nn.relu(x)  # relu is a custom_jvp function
    x = jax.lax.cond(x.sum() > 0, lambda x: x @ p["cond"], lambda x: -x, x)
    x = jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.tanh(c[0] @ p["while"]), c[1] + 1), (x, 0))[0]
    return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, p["scan"])[0]

  keys = jax.random.split(jax.random.key(0), 7)
  p = {k: jax.random.normal(keys[i], (4, 4)) / 2 for i, k in enumerate(["jit", "remat", "custom_vjp", "cond", "while"])}
  p["scan"] = jax.random.normal(keys[5], (3, 4, 4)) / 2
  x = jax.random.normal(keys[6], (2, 4))
  sites = graph.trace(f, p, x)
  assert [(s.path, s.in_loop, s.trip_count) for s in sites] == [
    ("jit", False, 1), ("remat", False, 1), ("custom_vjp", False, 1), ("cond", False, 1), ("while", True, None), ("scan", True, 3)
  ]  # fmt: skip
  assert sites[3].scopes == ("cond",) and sites[5].scopes == ("scan",)
  same = graph.rewrite(f, lambda site, a, w: site.compute(a, w))
  np.testing.assert_array_equal(same(p, x), f(p, x))
  np.testing.assert_array_equal(jax.jit(same)(p, x), jax.jit(f)(p, x))
  # a rule applied inside the loop bodies changes the result
  zeroed = graph.rewrite(f, lambda site, a, w: jnp.zeros_like(site.compute(a, w)), where="scan")
  np.testing.assert_array_equal(zeroed(p, x), jnp.zeros((2, 4)))


def test_capture_inputs_and_outputs():
  apply_fn, variables, x = build("mlp")
  out, captured = jax.jit(graph.capture(apply_fn, where=r"layers/[01]/kernel"))(variables, x)
  np.testing.assert_array_equal(out, apply_fn(variables, x))
  assert sorted(captured) == ["layers/0/kernel", "layers/1/kernel"]
  first = captured["layers/0/kernel"]
  np.testing.assert_array_equal(first["input"], x)
  np.testing.assert_allclose(first["output"], x @ variables["layers"][0]["kernel"][...], rtol=1e-6)
  assert captured["layers/1/kernel"]["input"].shape == (8, 300)
  # a leaf used twice gets a key per use
  shared = lambda p, x: jnp.tanh(x @ p["w"]) @ p["w"]
  _, cap = graph.capture(shared)({"w": jnp.eye(3)}, jnp.ones((1, 3)))
  assert sorted(cap) == ["w", "w#1"]


def test_sown_intermediates_from_nnx_and_linen():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      h = self.fc(x)
      self.sow(nnx.Intermediate, "features", h)
      return h

  x = jnp.ones((2, 4))
  out, intermediates = nnx.capture(Block(nnx.Rngs(0)), nnx.Intermediate)(x)
  feats = graph.sown(intermediates)
  np.testing.assert_array_equal(feats["features/0"], out)

  from flax import linen

  class LinenBlock(linen.Module):
    @linen.compact
    def __call__(self, x):
      h = linen.Dense(3)(x)
      self.sow("intermediates", "features", h)
      return h

  variables = LinenBlock().init(jax.random.key(0), x)
  out, state = LinenBlock().apply(variables, x, mutable=["intermediates"])
  np.testing.assert_array_equal(graph.sown(state["intermediates"])["features/0"], out)


def test_linen_and_plain_functions():
  module = M.LinenCNN()
  variables = module.init(jax.random.key(0), jnp.ones((1, 6, 6, 1)))
  apply_fn = lambda v, x: module.apply(v, x)
  x = jnp.ones((2, 6, 6, 1))
  assert [s.path for s in graph.trace(apply_fn, variables, x)] == ["params/conv/kernel", "params/dense/kernel"]
  groups = {g.size: g for g in graph.dependency_groups(apply_fn, variables, x)}
  conv = groups[4]
  assert conv.paths() == [("params/conv/bias", 0), ("params/conv/kernel", 3), ("params/dense/kernel", 0)]
  flat = conv.members[2].index_map  # flatten of (6, 6, 4): channel c owns rows c, c + 4, ...
  np.testing.assert_array_equal(flat[1], np.arange(1, 144, 4))
  same = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w))
  np.testing.assert_array_equal(same(variables, x), apply_fn(variables, x))


EXPECTED_GROUPS = {
  "residual_conv": {
    (
      ("bn2/bias", 0), ("bn2/mean", 0), ("bn2/scale", 0), ("bn2/var", 0), ("conv1/kernel", 2), ("conv2/bias", 0),
      ("conv2/kernel", 3), ("head/kernel", 0), ("stem/bias", 0), ("stem/kernel", 3), ("stem_bn/bias", 0),
      ("stem_bn/mean", 0), ("stem_bn/scale", 0), ("stem_bn/var", 0),
    ): (8, True),
    (("bn1/bias", 0), ("bn1/mean", 0), ("bn1/scale", 0), ("bn1/var", 0), ("conv1/bias", 0), ("conv1/kernel", 3), ("conv2/kernel", 2)): (8, True),
    (("head/bias", 0), ("head/kernel", 1)): (10, False),
  },
  "depthwise_separable": {
    (("conv/bias", 0), ("conv/kernel", 3), ("depthwise/bias", 0), ("depthwise/kernel", 3), ("pointwise/kernel", 2)): (6, True),
    (("head/kernel", 0), ("pointwise/bias", 0), ("pointwise/kernel", 3)): (12, True),
    (("head/bias", 0), ("head/kernel", 1)): (10, False),
  },
  "inception": {
    (("branch_a/bias", 0), ("branch_a/kernel", 3), ("merge/kernel", 2)): (4, True),
    (("branch_b/bias", 0), ("branch_b/kernel", 3), ("merge/kernel", 2)): (6, True),
    (("merge/bias", 0), ("merge/kernel", 3)): (5, False),
  },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_dependency_groups_of_conv_models(name):
  apply_fn, variables, x = build(name)
  groups = graph.dependency_groups(apply_fn, variables, x)
  assert {tuple(g.paths()): (g.size, g.prunable) for g in groups} == EXPECTED_GROUPS[name]
  by_path = {(g.paths()[0], m.path, m.axis): m.index_map for g in groups for m in g.members}
  if name == "residual_conv":  # flatten of the 4x4x8 pooled map: channel c owns rows c, c + 8, ...
    np.testing.assert_array_equal(by_path[(("bn2/bias", 0), "head/kernel", 0)][3], np.arange(3, 128, 8))
  if name == "inception":  # concatenation shifts branch b by branch a's 4 channels
    np.testing.assert_array_equal(by_path[(("branch_b/bias", 0), "merge/kernel", 2)][:, 0], np.arange(4, 10))


def _zero_and_remove(variables, group, channel):
  members = {}
  for m in group.members:
    members.setdefault(m.path, []).append(m)

  def zero(path, x):
    x = np.array(x)
    for m in members.get(path, []):
      index = [slice(None)] * x.ndim
      index[m.axis] = m.index_map[channel]
      x[tuple(index)] = 0
    return jnp.asarray(x)

  def remove(path, x):
    x = np.array(x)
    for m in members.get(path, []):
      x = np.delete(x, m.index_map[channel], axis=m.axis)
    return jnp.asarray(x)

  return map_with_path(zero, variables), map_with_path(remove, variables)


CASES = [(name, *build(name)) for name in ("mlp", "residual_conv", "inception", "transformer")]
CASES.append(
  ("plain_depthwise", M.plain_depthwise, M.plain_depthwise_params(jax.random.key(0)), jnp.ones((2, 7, 7, 3)))
)


@pytest.mark.parametrize("name,apply_fn,variables,x", CASES, ids=[c[0] for c in CASES])
def test_removing_a_dead_channel_from_every_member_keeps_the_output(name, apply_fn, variables, x):
  """The groups are right exactly when deleting a zeroed channel from all members is exact."""
  groups = [g for g in graph.dependency_groups(apply_fn, variables, x) if g.prunable]
  assert groups
  for group in groups:
    for channel in (0, group.size - 1):
      zeroed, removed = _zero_and_remove(variables, group, channel)
      np.testing.assert_allclose(apply_fn(removed, x), apply_fn(zeroed, x), rtol=1e-5, atol=1e-5)


def test_bad_input():
  apply_fn, variables, x = build("mlp")
  with pytest.raises(ValueError, match=r"could not trace .* input shapes \[\(8, 65\)\]"):
    graph.trace(apply_fn, variables, jnp.ones((8, 65)))

  def branchy(p, x):
    return x @ p["w"] if x.sum() > 0 else x  # Python control flow on a traced value

  with pytest.raises(ValueError, match="could not trace"):
    graph.trace(branchy, {"w": jnp.ones((2, 2))}, jnp.ones((1, 2)))
  with pytest.raises(ValueError, match=r"never uses these param leaves: \['unused'\]"):
    graph.trace(lambda p, x: x @ p["w"], {"w": jnp.ones((2, 2)), "unused": jnp.ones(3)}, jnp.ones((1, 2)))
  bad_shape = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w)[:, :1])
  with pytest.raises(
    ValueError, match=r"returned float32\[8, 1\] at site 'layers/0/kernel' .* computes float32\[8, 300\]"
  ):
    bad_shape(variables, x)
  bad_dtype = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w).astype(jnp.bfloat16))
  with pytest.raises(ValueError, match="returned bfloat16"):
    bad_dtype(variables, x)
  with pytest.raises(ValueError, match="selects no site"):
    graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w), where="conv.*")(variables, x)
  with pytest.raises(ValueError, match="no matmul or convolution"):
    graph.trace(lambda p, x: x * p["w"], {"w": jnp.ones(2)}, jnp.ones(2))


def test_weight_as_left_operand():
  p = {"w": jax.random.normal(jax.random.key(0), (3, 4))}
  f = lambda p, x: p["w"] @ x
  x = jnp.ones((4, 2))
  (site,) = graph.trace(f, p, x)
  assert (site.weight_operand, site.contracted_axes, site.feature_axes, site.activation_shape) == (
    0,
    (1,),
    (0,),
    (4, 2),
  )
  np.testing.assert_array_equal(graph.rewrite(f, lambda s, a, w: s.compute(a, w))(p, x), f(p, x))


def test_equinox_when_installed():
  eqx = pytest.importorskip("equinox")
  model = eqx.nn.MLP(4, 3, 8, depth=2, key=jax.random.key(0))
  params, static = eqx.partition(model, eqx.is_array)
  apply_fn = lambda p, x: jax.vmap(eqx.combine(p, static))(x)
  x = jnp.ones((5, 4))
  sites = graph.trace(apply_fn, params, x)
  assert [s.path for s in sites] == ["layers/0/weight", "layers/1/weight", "layers/2/weight"]
  same = graph.rewrite(apply_fn, lambda site, a, w: site.compute(a, w))
  np.testing.assert_array_equal(same(params, x), apply_fn(params, x))
  assert graph.flops(apply_fn, params, x)["macs"] == 5 * (4 * 8 + 8 * 8 + 8 * 3)


def test_flips_keep_the_leaf_axes_unless_they_reverse_the_features():
  w = jnp.ones((3, 4))
  (spatial,) = graph.trace(lambda p, x: x @ jnp.flip(p["w"], 0), {"w": w}, jnp.ones((2, 3)))
  (features,) = graph.trace(lambda p, x: x @ jnp.flip(p["w"], 1), {"w": w}, jnp.ones((2, 3)))
  assert spatial.leaf_axes == (0, 1)  # a flip of the contracted axis: per-feature scales unchanged
  assert features.leaf_axes is None  # per-feature scales would be reversed
