"""distill.loss through train.make_step: a frozen teacher, any compressor, pmap."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcompress as jc
from tests import helpers

CLASSES = 8


class Teacher(nn.Module):
  """A Linen teacher with BatchNorm and Dropout, applied in inference mode."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(32)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(CLASSES)(x)


@functools.cache  # one init and one compiled apply for the whole module
def _teacher():
  model = Teacher()
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16)))
  rng = np.random.default_rng(0)  # running statistics that matter
  stats = {
    "mean": jnp.asarray(rng.normal(size=32), jnp.float32),
    "var": jnp.asarray(rng.uniform(0.5, 2, 32), jnp.float32),
  }
  variables = {"params": variables["params"], "batch_stats": {"BatchNorm_0": stats}}
  return jax.jit(functools.partial(model.apply, train=False)), variables  # the eval-mode apply


def _student(seed=0, sizes=(16, 32, CLASSES)):
  """helpers.mlp_params' tree, drawn with NumPy (no threefry kernels to compile)."""
  rng = np.random.default_rng(seed)
  return {
    f"fc{i}": {
      "kernel": jnp.asarray(rng.standard_normal((m, n)) / np.sqrt(m), jnp.float32),
      "bias": jnp.full((n,), 0.1, jnp.float32),
    }
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))
  }


def _data(seed, n):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal((n, 16)), jnp.float32), jnp.asarray(rng.integers(0, CLASSES, n), jnp.int32)


def test_teacher_is_frozen_and_gets_no_gradient_under_prune_and_qat():
  teacher_apply, variables = _teacher()
  before = jax.tree.map(np.array, variables)
  kd = jc.distill.loss(helpers.mlp_apply, teacher_apply=teacher_apply, teacher_params=variables)
  c = jc.chain(jc.pruning.magnitude(0.5), jc.quantization.fake_quant(4))
  opt = optax.adam(1e-2)
  state = jc.train.init(_student(), opt, c)
  step = jax.jit(jc.train.make_step(kd, opt, c))
  x, y = _data(1, 16)
  first = None
  for _ in range(3):
    state, value = step(state, x, y)
    first = float(value) if first is None else first
  assert float(value) < first  # the student learns from the teacher
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, variables), before)  # batch_stats too
  # the gradient tree is the student's trainable tree: no teacher leaves
  grads = jax.eval_shape(jax.grad(jc.train.wrap_loss(kd, c)), state.params, state.cstate, x, y)
  assert jax.tree.structure(grads) == jax.tree.structure(state.params)
  assert jax.tree.structure(state.opt_state[0].mu) == jax.tree.structure(state.params)
  # differentiating by the teacher's variables gives exactly zero (stop_gradient)
  by_teacher = jax.jit(
    jax.grad(lambda v, p: jc.distill.loss(helpers.mlp_apply, teacher_apply=teacher_apply, teacher_params=v)(p, x, y))
  )(variables, _student())
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(by_teacher))
  # eval mode: the teacher is deterministic (no dropout noise) and reads its running statistics
  out = teacher_apply(variables, x)
  np.testing.assert_array_equal(out, teacher_apply(variables, x))
  assert not np.allclose(
    out, teacher_apply({**variables, "batch_stats": jax.tree.map(jnp.zeros_like, variables["batch_stats"])}, x)
  )


def test_precomputed_teacher_logits_equal_the_closed_over_teacher():
  teacher_apply, variables = _teacher()
  x, y = _data(2, 16)
  criterion = functools.partial(jc.distill.dkd_loss, beta=4.0)
  closed = jc.distill.loss(
    helpers.mlp_apply, teacher_apply=teacher_apply, teacher_params=variables, criterion=criterion
  )
  pre = jc.distill.loss(helpers.mlp_apply, criterion=criterion)
  params = _student()
  logits = teacher_apply(variables, x)

  @jax.jit
  def both(params, logits):
    return pre(params, x, y, logits), closed(params, x, y), jax.grad(pre, argnums=3)(params, x, y, logits)

  a, b, g = both(params, logits)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not np.any(np.asarray(g))  # teacher outputs are constants


def test_pmap_and_sharded_distilled_steps_equal_single_device():
  teacher_apply, variables = _teacher()
  kd = jc.distill.loss(helpers.mlp_apply, teacher_apply=teacher_apply, teacher_params=variables)
  c = jc.pruning.magnitude(0.5)
  opt = optax.sgd(0.1)
  state = jc.train.init(_student(), opt, c)
  ndev = jax.device_count()
  assert ndev == 8
  single_step = jax.jit(jc.train.make_step(kd, opt, c))
  pstep = jax.pmap(jc.train.make_step(kd, opt, c, axis_name="data"), axis_name="data")
  single, pstate = state, jax.tree.map(lambda a: jnp.stack([a] * ndev), state)
  for i in range(2):
    x, y = _data(10 + i, 32)
    single, loss = single_step(single, x, y)
    pstate, ploss = pstep(pstate, x.reshape(ndev, -1, 16), y.reshape(ndev, -1))
  replicas = jax.tree.map(np.asarray, pstate)
  np.testing.assert_allclose(np.asarray(ploss), float(loss), rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a[0], b, atol=1e-5, rtol=1e-5), replicas, jax.tree.map(np.asarray, single)
  )
  # a sharded mesh: the batch split over the 8 devices, the teacher's params replicated
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(state, NamedSharding(mesh, P()))
  for i in range(2):
    x, y = _data(10 + i, 32)
    batch = NamedSharding(mesh, P("data"))
    sharded, _ = single_step(sharded, jax.device_put(x, batch), jax.device_put(y, batch))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5), sharded, single
  )


def test_bad_arguments_name_the_value():
  teacher_apply, variables = _teacher()
  with pytest.raises(ValueError, match="only teacher_params"):
    jc.distill.loss(helpers.mlp_apply, teacher_params=variables)
  with pytest.raises(ValueError, match="only teacher_apply"):
    jc.distill.loss(helpers.mlp_apply, teacher_apply=teacher_apply)
  with pytest.raises(ValueError, match="criterion must be callable, got 3"):
    jc.distill.loss(helpers.mlp_apply, criterion=3)
  with pytest.raises(ValueError, match="class counts differ: student 8, teacher 4"):
    jax.eval_shape(jc.distill.loss(helpers.mlp_apply), _student(), *_data(0, 4), jnp.zeros((4, 4)))


def test_rewrite_quantizes_the_student_not_the_teacher():
  teacher_apply, variables = _teacher()
  kd = jc.distill.loss(helpers.mlp_apply, teacher_apply=teacher_apply, teacher_params=variables)
  c = jc.quantization.qat(4, 4, integer=False)  # dynamic activation ranges
  params, cstate = c.init(_student())
  x, y = _data(3, 16)

  @jax.jit
  def both(params):
    view = c.apply(params, cstate)
    rewritten_loss = c.rewrite(kd, params, cstate)(view, x, y)
    student = c.rewrite(helpers.mlp_apply, params, cstate)(view, x)  # the quantized student alone
    return rewritten_loss, jc.distill.hinton_loss(student, teacher_apply(variables, x), y), kd(view, x, y)

  rewritten, by_hand, float_acts = both(params)
  np.testing.assert_allclose(rewritten, by_hand, rtol=1e-6)  # the teacher's matmuls stay float
  assert not np.isclose(rewritten, float_acts)  # and the student's activations were quantized


def test_hint_features_through_capture_and_a_missing_site_named():
  # FitNets' hints read through graph.capture: the captured guided layer is x @ kernel, and a
  # hint site the student lacks is a ValueError naming it
  params, x = _student(), _data(0, 4)[0]
  _, captured = jc.graph.capture(helpers.mlp_apply, where="fc0/kernel")(params, x)
  np.testing.assert_allclose(captured["fc0/kernel"]["output"], x @ params["fc0"]["kernel"], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="where='fc9/kernel' selects no site"):
    jc.graph.capture(helpers.mlp_apply, where="fc9/kernel")(params, x)
