"""chain(channel_prune, magnitude): the masks magnitude computes on the full-width view reach
the narrowed trainable arrays (``Compressor.pull_masks``), their optimizer moments, and pack."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import export, pruning
from tests import helpers

TX = optax.adamw(3e-2, b1=0.9, weight_decay=0.5)  # momentum and a strong decay: both would revive a weight
X, Y = helpers.batch(n=8)
STEPS = 3


def _chain():
  # a schedule, so masks change between steps: newly pruned weights must lose their moments too
  sparsity = pruning.polynomial_sparsity(0.8, begin_step=0, end_step=2, initial_sparsity=0.4)
  return jc.chain(
    pruning.channel_prune(0.25, apply_fn=helpers.mlp_apply, inputs=[X]),
    pruning.magnitude(sparsity, where=r".*kernel"),
  )


C = _chain()


@pytest.fixture(scope="module")
def history():
  """The states of ``STEPS`` jitted steps, the initial one first."""
  states = [jc.train.init(helpers.mlp_params(), TX, C)]
  step = jax.jit(jc.train.make_step(helpers.mse_loss, TX, C))
  for _ in range(STEPS):
    states.append(step(states[-1], X, Y)[0])
  return states


@pytest.fixture(scope="module")
def trained(history):
  return history[-1]


def _kept_mask(state, path):
  """Magnitude's full-width mask at ``path``, restricted to the kept channels (NumPy)."""
  a, b = path
  mask = np.asarray(C.masks(state.cstate)[a][b])
  kept = state.cstate.stages[0].kept[a][b]
  rows = np.ones(mask.shape[0], bool) if kept[0] is None else np.asarray(kept[0])
  cols = np.ones(mask.shape[1], bool) if kept[1] is None else np.asarray(kept[1])
  return mask[np.ix_(rows, cols)]


@pytest.mark.parametrize("path", [("fc0", "kernel"), ("fc1", "kernel")])
def test_pruned_weights_in_kept_channels_are_zero_in_params_and_moments(trained, path):
  a, b = path
  narrow = np.asarray(trained.params[a][b])
  assert narrow.shape == (16, 24) if a == "fc0" else narrow.shape == (24, 8)  # the channels are gone
  keep = _kept_mask(trained, path)
  assert keep.shape == narrow.shape and 0.1 < keep.mean() < 0.5  # magnitude pruned inside the kept block
  assert not np.any(narrow[~keep]) and np.all(narrow[keep] != 0)
  adam = trained.opt_state[0]  # adamw = chain(scale_by_adam, add_decayed_weights, scale)
  for moment in (adam.mu, adam.nu):
    m = np.asarray(moment[a][b])
    assert not np.any(m[~keep]) and np.any(m[keep] != 0)
  view = np.asarray(C.apply(trained.params, trained.cstate)[a][b])
  np.testing.assert_array_equal(np.count_nonzero(view), np.count_nonzero(narrow))  # the view holds no others


def test_pack_stores_only_the_survivors_of_the_narrowed_arrays(trained):
  packed = C.pack(trained.params, trained.cstate)
  leaf = packed["fc0"]["kernel"]
  assert isinstance(leaf, export.SlicedArray)
  keep = _kept_mask(trained, ("fc0", "kernel"))
  narrow = np.asarray(trained.params["fc0"]["kernel"])
  values = leaf.values
  assert isinstance(values, export.SparseArray)  # sparse inside the narrowed block
  np.testing.assert_array_equal(np.asarray(values.present()), keep)
  np.testing.assert_array_equal(np.asarray(values.materialize()), narrow)
  # the bytes: the survivors (float32) + their positions, plus one bit per original row and column
  assert values.values.shape == (keep.sum(),) and values.values.dtype == np.float32
  assert values.nbytes == export.from_mask(narrow, keep).nbytes
  assert leaf.nbytes == values.nbytes + leaf.kept.nbytes == values.nbytes + -(-(16 + 32) // 8)
  assert values.nbytes < narrow.nbytes
  np.testing.assert_array_equal(
    np.asarray(export.materialize(leaf)), np.asarray(C.apply(trained.params, trained.cstate)["fc0"]["kernel"])
  )


def test_jit_and_eager_steps_agree(history):
  # one eager step after the masks changed (step 1 -> 2 prunes more), against the jitted one
  eager, _ = jc.train.make_step(helpers.mse_loss, TX, C)(history[1], X, Y)
  for got, want in zip(jax.tree.leaves(eager), jax.tree.leaves(history[2])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_pull_masks_is_the_transpose_of_apply():
  """channel_prune's pull_masks gathers what apply scatters: the pulled mask, scattered back,
  is the given mask on the kept channels and False on the removed ones."""
  c = pruning.channel_prune(0.5, apply_fn=helpers.mlp_apply, inputs=[X])
  small, state = c.init(helpers.mlp_params())
  rng = np.random.default_rng(0)
  masks = jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.5), c.apply(small, state))
  masks["fc1"]["bias"] = None  # an unmasked leaf stays unmasked
  pulled = c.pull_masks(small, state, masks)
  assert pulled["fc1"]["bias"] is None
  for a in ("fc0", "fc1"):
    want = np.asarray(masks[a]["kernel"])
    kept = state.kept[a]["kernel"]
    rows = np.ones(want.shape[0], bool) if kept[0] is None else np.asarray(kept[0])
    cols = np.ones(want.shape[1], bool) if kept[1] is None else np.asarray(kept[1])
    np.testing.assert_array_equal(np.asarray(pulled[a]["kernel"]), want[np.ix_(rows, cols)])
