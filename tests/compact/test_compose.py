"""Compact models with the rest of the library: channel pruning through depthwise, grouped
and shuffled convs and residual adds (pruned == masked original), QAT with served int8, KD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress import compact
from jaxcompress.graph import _deps as deps

X = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 8, 1)))


def _mobilenet_v2(norm=True):
  blocks = ((1, 8, 1, 1), (4, 8, 2, 2))  # a linear bottleneck, a strided block, a residual add
  return compact.MobileNetV2(
    classes=10, in_channels=1, stem=(8, 1), blocks=blocks, last=16, dropout=0.0, norm=norm, rngs=nnx.Rngs(0)
  )


def _shufflenet_v2():
  return compact.ShuffleNetV2(
    classes=10,
    in_channels=1,
    channels=(8, 16, 32),
    repeats=(2,),
    stem_stride=1,
    stem_pool=False,
    rngs=nnx.Rngs(0),
  )


class _Grouped(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.g = compact.GroupConvShuffle(8, 12, groups=4, rngs=rngs)
    self.fc = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc(self.g(nnx.relu(self.a(x))).mean((1, 2)))


def _perturb(variables):
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return treedef.unflatten([x + 0.2 * jax.random.uniform(k, x.shape) for x, k in zip(leaves, keys)])


def _functional(model):
  """Eval-mode model as ``apply(variables, x)`` over params and BatchNorm statistics, the
  statistics perturbed so that pruning them matters."""
  model.eval()
  graphdef, state, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  variables = jax.jit(_perturb)(state.to_pure_dict())  # one compile, not two per leaf

  def apply(v, x):
    s = jax.tree.map(lambda a: a, state)
    nnx.replace_by_pure_dict(s, v)
    return nnx.merge(graphdef, s, rest)(x)

  return apply, variables


@pytest.mark.parametrize(
  "build", [_mobilenet_v2, _shufflenet_v2, _Grouped], ids=["mobilenet_v2", "shufflenet_v2", "grouped"]
)
def test_pruned_model_runs_and_equals_the_masked_original(build):
  model = build(nnx.Rngs(0)) if build is _Grouped else build()
  apply, variables = _functional(model)
  c = jc.pruning.channel_prune(0.5, apply_fn=apply, inputs=[X])
  small, state = c.init(variables)
  masked = c.apply(small, state)  # the original shapes, pruned channels zero in every member
  narrow = jc.pruning.narrow_nnx(model, state, small)
  np.testing.assert_allclose(narrow(jnp.asarray(X)), apply(masked, X), rtol=1e-5, atol=1e-5)
  count = lambda t: sum(np.size(x) for x in jax.tree.leaves(t))
  assert count(small) < 0.75 * count(variables)
  # the pruned channels were live: zeroing them changed the output
  assert not np.allclose(apply(masked, X), apply(variables, X), atol=1e-3)


def test_shuffle_ties_the_same_offset_in_every_group_and_split_halves():
  apply, variables = _functional(_shufflenet_v2())
  groups = {g.paths()[0]: g for g in jc.graph.dependency_groups(apply, variables, X) if g.prunable}
  # the stride-1 unit's branch output channel j is shuffled next to the pass-through half's
  # channel j, so both are one dependency channel: the group has members in both
  unit = [g for g in groups.values() if ("blocks/1/branch/layers/2/conv/kernel", 3) in g.paths()]
  assert len(unit) == 1 and ("blocks/0/branch/layers/2/conv/kernel", 3) in unit[0].paths()


def test_reshape_blocks_and_unmodelled_slices_pin():
  assert deps._reshape_blocks((2, 8, 8, 16), (2, 8, 8, 2, 8)) == [([0], [0]), ([1], [1]), ([2], [2]), ([3], [3, 4])]
  assert deps._reshape_blocks((2, 1, 1, 16), (2, 16)) == [([0, 1, 2], [0]), ([3], [1])]
  v = {"a": jnp.ones((3, 8)), "b": jnp.ones((3, 3)), "c": jnp.ones((4, 3))}
  cases = {
    "not an equal piece": lambda v, x: jax.nn.relu(x @ v["a"])[:, :3] @ v["b"] + 0 * v["c"].sum(),  # fixed count
    "split over several axes": lambda v, x: jax.nn.relu(x @ v["a"]).reshape(1, 2, 4).sum(1) @ v["c"] + 0 * v["b"].sum(),
  }
  for reason, f in cases.items():
    groups = [g for g in jc.graph.dependency_groups(f, v, jnp.ones((1, 3))) if ("a", 1) in g.paths()]
    assert groups and all(not g.prunable and reason in g.reasons[0] for g in groups), (reason, groups)


def test_qat_int8_and_served_int8_on_mobilenet_v2():
  model = _mobilenet_v2(norm=False)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  p = params.to_pure_dict()
  apply = lambda q, x: nnx.merge(graphdef, _state(params, q), rest)(x)
  c = jc.quantization.qat(8, 8, apply_fn=apply, batches=[X])
  trainable, cstate = c.init(p)
  fq = jax.jit(c.rewrite(apply, c.apply(trainable, cstate), cstate))
  served = jc.quantization.serve(apply, c.pack(trainable, cstate), act_ranges=cstate.stages[1].data)
  ref = apply(p, X)
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(served(X), fq(c.apply(trainable, cstate), X), atol=0.02 * scale)
  assert float(jnp.abs(served(X) - ref).max()) < 0.1 * scale
  sites = jc.graph.trace(apply, p, X)
  assert {s.params["feature_group_count"] for s in sites if s.op != "dot_general"} > {1}  # depthwise sites quantized


def _state(template, pure):
  s = jax.tree.map(lambda a: a, template)
  nnx.replace_by_pure_dict(s, pure)
  return s


def test_distillation_step_trains_a_compact_student():
  student = _mobilenet_v2(norm=False)
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)
  apply = lambda q, x: nnx.merge(graphdef, _state(params, q), rest)(x)
  p = params.to_pure_dict()
  teacher = lambda t, x: t * x.reshape(x.shape[0], -1)[:, :10]
  loss = jc.distill.loss(apply, teacher_apply=teacher, teacher_params=jnp.float32(3.0))
  opt = optax.adam(1e-2)
  state = jc.train.init(p, opt, jc.identity())
  step = jax.jit(jc.train.make_step(loss, opt, jc.identity()))
  y = jnp.zeros(2, jnp.int32)
  first = float(loss(p, X, y))
  for _ in range(2):
    state, _ = step(state, X, y)
  assert float(loss(state.params, X, y)) < first
