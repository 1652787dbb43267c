"""Structured channel pruning: groups, criteria, physical shrinking, NNX narrowing."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress import pruning
from jaxcompress.pruning import _channels as channels
from tests import helpers
from tests import test_conformance as conformance
from tests.graph import models


def _mlp_channel(s=0.5, **kw):
  return pruning.channel_prune(s, apply_fn=helpers.mlp_apply, inputs=[jnp.ones((1, 16))], **kw)


@pytest.mark.parametrize(
  "check",
  [
    conformance.test_jit_equals_eager,
    conformance.test_no_recompilation_on_second_step,
    conformance.test_works_inside_chain,
    conformance.test_pmap_and_sharded_jit_equal_single_device,
    conformance.test_checkpoint_round_trip_resumes_identically,
    conformance.test_pack_then_materialize_equals_apply,
  ],
)
def test_conformance(check, monkeypatch):
  """Every conformance check but "unselected leaves untouched": removing a channel
  removes its bias entry too, by design."""
  monkeypatch.setitem(conformance.CASES, "channel_prune", _mlp_channel)
  check("channel_prune")


def test_mlp_l1_keeps_the_largest_filters_and_shrinks_the_tree():
  params = helpers.mlp_params()
  small, state = _mlp_channel(0.25).init(params)
  norms = np.abs(np.asarray(params["fc0"]["kernel"])).sum(0)
  keep = np.sort(np.argsort(-norms, kind="stable")[:24])
  np.testing.assert_array_equal(small["fc0"]["kernel"], np.asarray(params["fc0"]["kernel"])[:, keep])
  np.testing.assert_array_equal(small["fc0"]["bias"], np.asarray(params["fc0"]["bias"])[keep])
  np.testing.assert_array_equal(small["fc1"]["kernel"], np.asarray(params["fc1"]["kernel"])[keep])
  assert small["fc1"]["kernel"].shape == (24, 8) and small["fc1"]["bias"].shape == (8,)
  x = helpers.batch()[0]
  narrow = helpers.mlp_apply(small, x)
  np.testing.assert_allclose(narrow, helpers.mlp_apply(_mlp_channel(0.25).apply(small, state), x), atol=1e-6)


def test_optimizer_state_is_sliced_to_match():
  params = helpers.mlp_params()
  opt = optax.adam(1e-2)
  full = jc.train.init(params, opt, jc.identity())
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, jc.identity()))
  full, _ = step(full, *helpers.batch())
  c = _mlp_channel(0.5)
  small, state = c.init(full.params)
  sliced = pruning.shrink(opt, full.opt_state, state)
  assert jax.tree.map(jnp.shape, sliced) == jax.tree.map(jnp.shape, opt.init(small))
  keep = np.flatnonzero(np.asarray(state.kept["fc0"]["kernel"][1]))
  np.testing.assert_array_equal(
    sliced[0].mu["fc0"]["kernel"], np.asarray(full.opt_state[0].mu["fc0"]["kernel"])[:, keep]
  )
  np.testing.assert_array_equal(sliced[0].nu["fc1"]["kernel"], np.asarray(full.opt_state[0].nu["fc1"]["kernel"])[keep])


def _nnx(model_cls, shape, **kw):
  model = model_cls(nnx.Rngs(0), **kw)
  graphdef, variables = nnx.split(model)
  apply_fn = lambda v, x: nnx.merge(graphdef, v)(x)
  return model, graphdef, variables, apply_fn, jax.random.normal(jax.random.key(1), shape)


@pytest.mark.parametrize(
  "model_cls,shape",
  [(models.ResidualConvNet, (2, 8, 8, 1)), (models.DepthwiseSeparable, (2, 9, 9, 3)), (models.Inception, (2, 5, 5, 3))],
)
def test_removing_zeroed_channels_leaves_the_output_unchanged(model_cls, shape):
  model, _graphdef, variables, apply_fn, x = _nnx(model_cls, shape)
  c = pruning.channel_prune(0.5, apply_fn=apply_fn, inputs=[x])
  small, state = c.init(variables)
  zeroed = c.apply(small, state)  # the original network with the pruned channels zeroed
  # Re-pruning the zeroed network by L1 removes exactly those (all-zero) channels ...
  _small2, state2 = c.init(zeroed)
  jax.tree.map(np.testing.assert_array_equal, state2.kept, state.kept)
  # ... and the physically narrower NNX model computes the same output.
  narrow = pruning.narrow_nnx(model, state2, zeroed)
  np.testing.assert_allclose(narrow(x), apply_fn(zeroed, x), rtol=1e-5, atol=1e-5)
  n_small = sum(v.size for v in jax.tree.leaves(nnx.state(narrow, nnx.Param)))
  n_full = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n_small < n_full


def test_depthwise_conv_is_narrowed_consistently():
  model, _graphdef, variables, apply_fn, x = _nnx(models.DepthwiseSeparable, (2, 9, 9, 3))
  c = pruning.channel_prune(0.5, apply_fn=apply_fn, inputs=[x])
  small, state = c.init(variables)
  narrow = pruning.narrow_nnx(model, state, variables)
  assert narrow.depthwise.in_features == narrow.depthwise.feature_group_count == narrow.conv.out_features == 3
  assert narrow.pointwise.in_features == 3 and narrow.pointwise.out_features == 6
  np.testing.assert_allclose(narrow(x), apply_fn(c.apply(small, state), x), rtol=1e-5, atol=1e-5)


def test_taylor_and_bn_scale_criteria_follow_their_formulas():
  params = helpers.mlp_params()
  grads = jax.grad(helpers.mse_loss)(params, *helpers.batch())
  groups = jc.graph.dependency_groups(helpers.mlp_apply, params, jnp.ones((1, 16)))
  (hidden,) = [g for g in groups if g.prunable]
  got = channels.group_importance(params, hidden, "taylor", grads)
  wg = lambda k, axis: np.asarray(params[k[0]][k[1]]) * np.asarray(grads[k[0]][k[1]])
  expected = (wg(("fc0", "kernel"), 1).sum(0) + wg(("fc0", "bias"), 0) + wg(("fc1", "kernel"), 0).sum(1)) ** 2
  np.testing.assert_allclose(got, expected, rtol=1e-5)

  _model, _graphdef, variables, apply_fn, x = _nnx(models.ResidualConvNet, (2, 8, 8, 1))
  variables["bn1"]["scale"].set_value(jnp.arange(8.0) - 3.5)  # |gamma| smallest at 3 and 4
  _small, state = pruning.channel_prune(0.25, apply_fn=apply_fn, inputs=[x], criterion="bn_scale", scope="layer").init(
    variables
  )
  kept = np.asarray(state.kept["bn1"]["scale"][0])
  assert kept.tolist() == [True, True, True, False, False, True, True, True]


def test_pack_is_smaller_dense_arrays_that_round_trip():
  c = _mlp_channel(0.5)
  small, state = c.init(helpers.mlp_params())
  packed = c.pack(small, state)
  leaf = packed["fc0"]["kernel"]
  assert isinstance(leaf, jc.export.SlicedArray) and leaf.values.shape == (16, 16)
  assert leaf.nbytes == 16 * 16 * 4 + (16 + 32 + 7) // 8
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.safetensors")
    jc.export.save(path, packed)
    jax.tree.map(np.testing.assert_array_equal, jc.export.materialize_tree(jc.export.load(path)), c.apply(small, state))


def test_slimming_penalty_and_bad_input():
  p = {"bn": {"scale": jnp.array([1.0, -2.0, 0.5])}, "conv": {"kernel": jnp.ones((2, 2))}}
  g = jax.grad(lambda q: pruning.slimming_penalty(q, 0.1))(p)
  np.testing.assert_allclose(g["bn"]["scale"], [0.1, -0.1, 0.1])
  assert (g["conv"]["kernel"] == 0).all()
  with pytest.raises(ValueError, match="strength must be in"):
    pruning.slimming_penalty(p, -1.0)
  with pytest.raises(ValueError, match="criterion must be one of"):
    _mlp_channel(0.5, criterion="l3")
  with pytest.raises(ValueError, match="needs grads"):
    _mlp_channel(0.5, criterion="taylor")
  with pytest.raises(ValueError, match="sparsity must be in"):
    _mlp_channel(1.0)
  with pytest.raises(ValueError, match="no prunable channel group"):
    _mlp_channel(0.5, where="fc1/bias").init(helpers.mlp_params())
  with pytest.raises(ValueError, match="grads does not match"):
    _mlp_channel(0.5, criterion="taylor", grads={"fc0": {}}).init(helpers.mlp_params())


def test_narrow_linen_runs_the_module_at_the_pruned_widths():
  from flax import linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(8, (3, 3))(x))
      x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=8)(x))  # depthwise
      x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.relu(nn.Conv(6, (1, 1))(x))
      x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
      return nn.Dense(10)(x)

  module = Net()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 1))
  variables = module.init(jax.random.key(0), x)
  c = pruning.channel_prune(0.5, apply_fn=module.apply, inputs=[x])
  small, state = c.init(variables)
  assert small["params"]["Conv_1"]["kernel"].shape == (3, 3, 1, 4)
  assert small["batch_stats"]["BatchNorm_0"]["mean"].shape == (4,)
  np.testing.assert_allclose(
    pruning.narrow_linen(module)(small, x), module.apply(c.apply(small, state), x), rtol=1e-5, atol=1e-5
  )


def test_narrow_nnx_takes_the_values_of_the_params_it_is_given():
  """The module keeps its initial weights; the trained (pruned) params are what the narrow
  module must hold."""
  model, _graphdef, variables, apply_fn, x = _nnx(models.ResidualConvNet, (2, 8, 8, 1))
  c = pruning.channel_prune(0.5, apply_fn=apply_fn, inputs=[x])
  small, state = c.init(variables)
  trained = jax.tree.map(lambda v: v * 1.5 + 0.01, small)  # stands for fine-tuning
  narrow = pruning.narrow_nnx(model, state, trained)
  np.testing.assert_allclose(narrow(x), apply_fn(c.apply(trained, state), x), rtol=1e-5, atol=1e-5)


def _two_bn_layers(gamma1, gamma2):
  """x -> Dense -> BN(gamma1) -> relu -> Dense -> BN(gamma2) -> relu -> Dense: two slimmable layers."""
  k = jax.random.split(jax.random.key(0), 3)
  params = {
    "l1": {"kernel": jax.random.normal(k[0], (4, 8))},
    "bn1": {"scale": jnp.asarray(gamma1), "bias": jnp.zeros(8)},
    "l2": {"kernel": jax.random.normal(k[1], (8, 8))},
    "bn2": {"scale": jnp.asarray(gamma2), "bias": jnp.zeros(8)},
    "out": {"kernel": jax.random.normal(k[2], (8, 2))},
  }

  def apply_fn(p, x):
    h = jax.nn.relu((x @ p["l1"]["kernel"]) * p["bn1"]["scale"] + p["bn1"]["bias"])
    h = jax.nn.relu((h @ p["l2"]["kernel"]) * p["bn2"]["scale"] + p["bn2"]["bias"])
    return h @ p["out"]["kernel"]

  return params, apply_fn


def test_network_slimming_prunes_by_one_global_threshold_on_gamma():
  """Liu et al. 2017: one threshold over all BN scales, so the layer of tiny gammas loses
  its channels and the layer of gammas near 1 loses none; never a whole layer."""
  tiny = jnp.linspace(0.01, 0.08, 8)
  near_one = jnp.linspace(0.9, 1.1, 8)
  params, apply_fn = _two_bn_layers(tiny, near_one)
  x = jnp.ones((1, 4))
  kept = lambda kept_tree, k: np.asarray(kept_tree[k]["scale"][0]) if kept_tree[k]["scale"] else np.ones(8, bool)
  assert channels.default_scope("bn_scale") == "global" and channels.default_scope("l1") == "layer"
  groups = jc.graph.dependency_groups(apply_fn, params, x)
  plan = lambda s, scope: channels.plan(params, groups, s, "bn_scale", scope=scope)[0]
  quarter = plan(0.25, "global")  # 4 of 16 channels: all from bn1
  assert kept(quarter, "bn1").tolist() == [False] * 4 + [True] * 4 and kept(quarter, "bn2").all()
  half = plan(0.5, "global")  # 8 of 16: bn1 keeps its largest, bn2 gives the 8th
  assert kept(half, "bn1").tolist() == [False] * 7 + [True] and kept(half, "bn2").tolist() == [False] + [True] * 7
  per_layer = plan(0.25, "layer")  # the per-layer variant: 2 from each
  assert kept(per_layer, "bn1").sum() == 6 and kept(per_layer, "bn2").sum() == 6
  with pytest.raises(ValueError, match="scope must be one of"):
    pruning.channel_prune(0.25, apply_fn=apply_fn, inputs=[x], scope="tree")
