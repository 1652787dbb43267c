"""Replicas never drift: every device holds the same params and compressor state."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import pruning
from jaxcompress.quantization import gradient_compression as gc
from tests import helpers

STEPS = 3


def schedule(step):
  return jnp.minimum(0.2 * jnp.asarray(step, jnp.float32), 0.6)


GRADIENT_PRUNERS = {
  "rigl": lambda: pruning.rigl(0.5, frequency=1, end_step=10),
  "movement": lambda: pruning.movement(schedule),
  "saliency": lambda: pruning.saliency(schedule),
}
COMPRESSED_MEANS = {
  "qsgd": lambda: gc.qsgd(4, axis_name="d"),
  "terngrad": lambda: gc.terngrad(axis_name="d"),
  "sign_ef": lambda: gc.sign_error_feedback(axis_name="d"),
}
PAIRS = list(zip(GRADIENT_PRUNERS, COMPRESSED_MEANS))  # each pruner and each codec once


def assert_replicas_equal(tree, what):
  for path, a in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(a)
    for d in range(1, a.shape[0]):
      np.testing.assert_array_equal(a[d], a[0], err_msg=f"{what} {jax.tree_util.keystr(path)}: device {d} != 0")


@pytest.mark.parametrize("pruner,codec", PAIRS)
def test_gradient_pruners_agree_across_replicas_under_compressed_all_reduce(pruner, codec):
  ndev = jax.device_count()
  c = GRADIENT_PRUNERS[pruner]()
  opt = optax.chain(COMPRESSED_MEANS[codec](), optax.sgd(0.05))
  step = jax.pmap(jc.train.make_step(helpers.mse_loss, opt, c, axis_name="d", reduce_gradients=False), axis_name="d")
  state = jax.tree.map(lambda a: jnp.stack([a] * ndev), jc.train.init(helpers.mlp_params(), opt, c))
  x, y = helpers.batch(n=4 * ndev)  # each device its own batch: its own gradients
  for _ in range(STEPS):
    state, _ = step(state, x.reshape(ndev, 4, -1), y.reshape(ndev, 4, -1))
  assert_replicas_equal(state.params, "params")
  assert_replicas_equal(state.cstate, "compressor state")
  masks = c.masks(jax.tree.map(lambda a: a[0], state.cstate))
  assert any(not bool(np.all(m)) for m in jax.tree.leaves(masks))  # it did prune


def test_an_unused_gradient_all_reduce_is_removed():
  ndev = jax.device_count()
  opt = optax.chain(gc.terngrad(axis_name="d"), optax.sgd(0.05))
  c = pruning.magnitude(0.5)  # update does not read the gradients
  step = jax.pmap(jc.train.make_step(helpers.mse_loss, opt, c, axis_name="d", reduce_gradients=False), axis_name="d")
  state = jax.tree.map(lambda a: jnp.stack([a] * ndev), jc.train.init(helpers.mlp_params(), opt, c))
  x, y = helpers.batch(n=4 * ndev)
  hlo = step.lower(state, x.reshape(ndev, 4, -1), y.reshape(ndev, 4, -1)).compile().as_text()
  # only scalars are all-reduced (the loss, the finiteness flag); the gradients cross as codes
  types = [line.split("=", 1)[1].split("all-reduce(")[0] for line in hlo.splitlines() if "all-reduce(" in line]
  assert types and not [t for t in types if re.search(r"\[\d", t)], types


@pytest.mark.parametrize("pruner", ["movement", "saliency", "rigl"])
def test_a_non_finite_step_leaves_the_compressor_state_as_it_was(pruner):
  c = GRADIENT_PRUNERS[pruner]()
  opt = optax.apply_if_finite(optax.sgd(0.05), max_consecutive_errors=5)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  state = jc.train.init(helpers.mlp_params(), opt, c)
  x, y = helpers.batch(n=8)
  state, _ = step(state, x, y)
  before = state
  state, _ = step(state, x.at[0, 0].set(jnp.nan), y)
  jax.tree.map(np.testing.assert_array_equal, state.cstate, before.cstate)
  jax.tree.map(np.testing.assert_array_equal, state.params, before.params)
  state, _ = step(state, x, y)  # and training goes on from there
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(state.params))
