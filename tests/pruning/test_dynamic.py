"""RigL, SET, lottery tickets and the mask-respecting step."""

import jax
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import pruning
from tests import helpers


def test_rigl_drops_smallest_and_regrows_by_dense_gradient_at_zero():
  params = helpers.mlp_params()
  c = pruning.rigl(0.8, update_every=1, end_step=100, drop_fraction=0.3, allocation="uniform", init_mask="magnitude")
  p, state = c.init(params)
  m0 = np.asarray(state.masks["fc0"]["kernel"])
  # The gradient through apply is dense (identity at pruned weights).
  g = jax.grad(lambda q: helpers.mse_loss(c.apply(q, state), *helpers.batch()))(p)
  dense_g = jax.grad(helpers.mse_loss)(c.apply(p, state), *helpers.batch())
  np.testing.assert_array_equal(g["fc0"]["kernel"], dense_g["fc0"]["kernel"])
  new_p, new_state = c.update(p, state, grads=g)
  m1 = np.asarray(new_state.masks["fc0"]["kernel"])
  w = np.abs(np.asarray(p["fc0"]["kernel"]))
  gabs = np.abs(np.asarray(g["fc0"]["kernel"]))
  active = m0.sum()
  k = int(np.floor(float(pruning.dst.drop_fraction_at(1, 0.3, 100)) * active))
  assert m1.sum() == active and k > 0
  order = np.argsort(-np.where(m0, w, -np.inf), axis=None, kind="stable")
  kept = np.zeros(w.size, bool)
  kept[order[: active - k]] = True  # the active weights that survive the drop
  kept = kept.reshape(w.shape)
  assert (m1 & kept).sum() == active - k
  grown = m1 & ~kept  # may include just-dropped weights with a large gradient
  assert grown.sum() == k
  assert gabs[grown].min() >= gabs[~kept & ~grown].max()
  assert (np.asarray(new_p["fc0"]["kernel"])[grown] == 0).all()
  assert (np.asarray(new_p["fc0"]["kernel"])[~m1] == 0).all()


def test_rigl_cosine_drop_fraction_and_end_step():
  assert float(pruning.dst.drop_fraction_at(0, 0.3, 100)) == pytest.approx(0.3)
  assert float(pruning.dst.drop_fraction_at(50, 0.3, 100)) == pytest.approx(0.15)
  assert float(pruning.dst.drop_fraction_at(100, 0.3, 100)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="update_every=50 is larger than end_step=10"):
    pruning.rigl(0.9, update_every=50, end_step=10)
  with pytest.raises(ValueError, match="drop_fraction"):
    pruning.rigl(0.9, end_step=100, drop_fraction=1.5)


def test_set_keeps_the_count_and_erk_split():
  params = helpers.mlp_params()
  c = pruning.sparse_evolutionary(0.9, update_every=2, end_step=10)
  opt = optax.sgd(0.1, momentum=0.9)
  state = jc.train.init(params, opt, c)
  targets = pruning.erk_sparsities([(16, 32), (32, 8)], 0.9)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  masks = [state.cstate.masks]
  for i in range(4):
    state, _ = step(state, *helpers.batch(seed=i))
    masks.append(state.cstate.masks)
    for k, t in zip(("fc0", "fc1"), targets):
      size = params[k]["kernel"].size
      assert int(state.cstate.masks[k]["kernel"].sum()) == size - round(float(t) * size)
      assert np.count_nonzero(state.params[k]["kernel"]) <= size - round(float(t) * size)
  assert not np.array_equal(masks[0]["fc0"]["kernel"], masks[-1]["fc0"]["kernel"])


def test_make_step_zeroes_moments_of_pruned_weights_and_never_updates_them():
  params = helpers.mlp_params()
  c = pruning.rigl(0.75, update_every=3, end_step=100, allocation="uniform")
  opt = optax.adamw(1e-2, weight_decay=0.1)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  for i in range(6):
    old_mask = state.cstate.masks["fc0"]["kernel"]
    state, _ = step(state, *helpers.batch(seed=i))
    mask = np.asarray(state.cstate.masks["fc0"]["kernel"])
    w = np.asarray(state.params["fc0"]["kernel"])
    mu = np.asarray(state.opt_state[0].mu["fc0"]["kernel"])
    nu = np.asarray(state.opt_state[0].nu["fc0"]["kernel"])
    old = np.asarray(old_mask)
    assert (w[~mask] == 0).all() and mask.sum() == 128
    # pruned during this step: no moment (a weight pruned by this step's update loses its
    # history before the next optimizer update, checked on the next iteration)
    assert (mu[~old] == 0).all() and (nu[~old] == 0).all()
    regrown = ~old & mask
    if regrown.any():  # regrown: weight 0 and fresh moments
      assert (w[regrown] == 0).all()
      assert (mu[regrown] == 0).all() and (nu[regrown] == 0).all()
  assert (i + 1) // 3 == 2


def test_a_chain_reports_its_stages_masks():
  params = helpers.mlp_params()
  c = jc.chain(pruning.magnitude(0.5), jc.quantization.fake_quant(8))
  _, cstate = c.init(params)
  masks = c.masks(cstate)
  assert masks["fc0"]["bias"] is None and masks["fc0"]["kernel"].sum() == 256
  assert jc.identity().masks(jc.identity().init(params)[1]) is None
  # two pruners: the chain ANDs their masks
  both = jc.chain(pruning.magnitude(0.5), pruning.random(0.5, seed=3))
  _, cstate = both.init(params)
  kept = np.asarray(both.masks(cstate)["fc0"]["kernel"])
  first = np.asarray(cstate.stages[0].masks["fc0"]["kernel"])
  second = np.asarray(cstate.stages[1].masks["fc0"]["kernel"])
  np.testing.assert_array_equal(kept, first & second)


def test_lottery_ticket_prunes_per_round_and_rewinds():
  params = helpers.mlp_params()
  c = pruning.lottery_ticket(0.5, rounds=2, round_steps=3, rewind_step=1, total_steps=10)
  opt = optax.sgd(0.1)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  state, _ = step(state, *helpers.batch(seed=0))
  early = np.asarray(state.params["fc0"]["kernel"])  # the weights at step 1
  for i in range(1, 3):
    state, _ = step(state, *helpers.batch(seed=i))
  m = np.asarray(state.cstate.masks["fc0"]["kernel"])
  assert m.sum() == 256
  np.testing.assert_array_equal(np.asarray(state.params["fc0"]["kernel"]), np.where(m, early, 0))
  for i in range(3, 6):
    state, _ = step(state, *helpers.batch(seed=i))
  m2 = np.asarray(state.cstate.masks["fc0"]["kernel"])
  assert m2.sum() == 128 and not (m2 & ~m).any()
  np.testing.assert_array_equal(np.asarray(state.params["fc0"]["kernel"]), np.where(m2, early, 0))
  for i in range(6, 9):  # after the last round: plain training, masks fixed
    state, _ = step(state, *helpers.batch(seed=i))
  np.testing.assert_array_equal(state.cstate.masks["fc0"]["kernel"], m2)


def test_lottery_bad_input():
  with pytest.raises(ValueError, match="ends at step 30, not before the run's total_steps=30"):
    pruning.lottery_ticket(0.2, rounds=3, round_steps=10, total_steps=30)
  with pytest.raises(ValueError, match="rewind_step must be in"):
    pruning.lottery_ticket(0.2, rounds=3, round_steps=10, rewind_step=10)
  with pytest.raises(ValueError, match="rate must be in"):
    pruning.lottery_ticket(1.0, rounds=3, round_steps=10)
