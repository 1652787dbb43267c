"""RigL, SET, lottery tickets and the mask-respecting step."""

import jax
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import pruning
from tests import helpers


def _none(x):
  return x is None


def test_rigl_drops_smallest_and_regrows_by_dense_gradient_at_zero():
  params = helpers.mlp_params()
  c = pruning.rigl(0.8, frequency=1, end_step=100, drop_fraction=0.3, allocation="uniform", init_mask="magnitude")
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
  k = int(np.floor(float(pruning._dst.drop_fraction_at(1, 0.3, 100)) * active))
  assert m1.sum() == active and k > 0
  order = np.argsort(-np.where(m0, w, -np.inf), axis=None, kind="stable")
  kept = np.zeros(w.size, bool)
  kept[order[: active - k]] = True  # the active weights that survive the drop
  kept = kept.reshape(w.shape)
  assert (m1 & kept).sum() == active - k
  grown = m1 & ~kept  # may include just-dropped weights with a large gradient
  assert grown.sum() == k
  assert gabs[grown].min() >= gabs[~kept & ~grown].max()
  assert (np.asarray(new_p["fc0"]["kernel"])[grown & ~m0] == 0).all()  # new connections start at 0
  np.testing.assert_array_equal(new_p["fc0"]["kernel"][grown & m0], p["fc0"]["kernel"][grown & m0])
  assert (np.asarray(new_p["fc0"]["kernel"])[~m1] == 0).all()


def test_rigl_keeps_the_value_of_a_connection_dropped_and_regrown():
  """The reference implementation (reinit_when_same=False): only connections that were
  inactive before the update are new; one dropped and regrown at once keeps its value."""
  c = pruning.rigl(0.5, frequency=1, end_step=1000, drop_fraction=1.0, init_mask="magnitude", allocation="uniform")
  p, state = c.init({"w": jax.numpy.array([[4.0, 3.0, 2.0, 1.0]])})
  p, state = c.update(p, state, grads={"w": jax.numpy.array([[0.0, 9.0, 0.5, 0.0]])})  # drop 3.0, regrow it
  assert state.masks["w"].tolist() == [[True, True, False, False]]
  assert p["w"].tolist() == [[4.0, 3.0, 0.0, 0.0]]


def test_set_regrows_random_values_with_a_constant_zeta():
  """Mocanu et al. 2018: new connections get random weights, and zeta stays constant."""
  w = jax.random.normal(jax.random.key(0), (8, 8))
  c = pruning.sparse_evolutionary(0.5, frequency=2, end_step=10, drop_fraction=0.5, allocation="uniform")
  p, state = c.init({"w": w})
  update = jax.jit(c.update)
  for step in range(1, 9):
    before = np.asarray(state.masks["w"])
    p, state = update(p, state)
    if step % 2 == 0:
      after = np.asarray(state.masks["w"])
      new = after & ~before
      # 16 = floor(0.5 * 32) dropped every time (a cosine would drop 1 at step 8); the
      # random regrowth may pick a just-dropped weight back, so at most 16 are new
      assert 8 <= new.sum() <= 16
      grown = np.asarray(p["w"])[new]
      assert (grown != 0).all() and 0.2 < grown.std() / np.asarray(p["w"])[after & before & (p["w"] != 0)].std() < 5


def test_rigl_cosine_drop_fraction_and_end_step():
  assert float(pruning._dst.drop_fraction_at(0, 0.3, 100)) == pytest.approx(0.3)
  assert float(pruning._dst.drop_fraction_at(50, 0.3, 100)) == pytest.approx(0.15)
  assert float(pruning._dst.drop_fraction_at(100, 0.3, 100)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="frequency=50 is larger than end_step=10"):
    pruning.rigl(0.9, frequency=50, end_step=10)
  with pytest.raises(ValueError, match="drop_fraction"):
    pruning.rigl(0.9, end_step=100, drop_fraction=1.5)


def test_set_keeps_the_count_and_erk_split():
  params = helpers.mlp_params()
  c = pruning.sparse_evolutionary(0.9, frequency=2, end_step=10)
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
  c = pruning.rigl(0.75, frequency=3, end_step=100, allocation="uniform")
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
  c = pruning.lottery_ticket(0.5, rounds=2, frequency=3, rewind_step=1, total_steps=10)
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
    pruning.lottery_ticket(0.2, rounds=3, frequency=10, total_steps=30)
  with pytest.raises(ValueError, match="rewind_step must be in"):
    pruning.lottery_ticket(0.2, rounds=3, frequency=10, rewind_step=10)
  with pytest.raises(ValueError, match="rate must be in"):
    pruning.lottery_ticket(1.0, rounds=3, frequency=10)


@pytest.mark.parametrize("factory", [pruning.rigl, pruning.sparse_evolutionary])
def test_an_optax_schedule_drives_the_drop_fraction(factory):
  params = helpers.mlp_params()
  schedule = optax.linear_schedule(0.5, 0.1, transition_steps=4)
  c = factory(
    0.5,
    frequency=1,
    end_step=100,
    drop_fraction=schedule,
    allocation="uniform",
    init_mask="magnitude",
    grow_init="zeros",
  )
  _, state = c.init(params)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  update = jax.jit(c.update)
  active = int(state.masks["fc0"]["kernel"].sum())
  for step in range(1, 5):
    # The dense params are nonzero, so the new connections are the active zeros after the
    # update; with no gradient at the active weights, RigL never regrows a dropped one.
    g = jax.tree.map(lambda m, x: x if m is None else jax.numpy.where(m, 0.0, x), state.masks, grads, is_leaf=_none)
    new_p, state = update(params, state, grads=g)
    mask = np.asarray(state.masks["fc0"]["kernel"])
    regrown = int((mask & (np.asarray(new_p["fc0"]["kernel"]) == 0)).sum())
    assert mask.sum() == active
    n_drop = int(np.floor(float(schedule(step)) * active))
    if factory is pruning.rigl:
      assert regrown == n_drop > 0
    else:  # SET may regrow a just-dropped weight (it keeps its value)
      assert 0 < regrown <= n_drop


def test_a_constant_drop_fraction_decays_along_the_cosine():
  params = helpers.mlp_params()
  kwargs = dict(frequency=1, end_step=8, allocation="uniform", init_mask="magnitude")
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
  c = pruning.rigl(0.5, drop_fraction=0.4, **kwargs)
  c_schedule = pruning.rigl(0.5, drop_fraction=lambda t: pruning._dst.drop_fraction_at(t, 0.4, 8), **kwargs)
  (_, s), (_, s2) = c.init(params), c_schedule.init(params)
  for _ in range(3):
    (_, s), (_, s2) = c.update(params, s, grads=grads), c_schedule.update(params, s2, grads=grads)
    np.testing.assert_array_equal(s.masks["fc0"]["kernel"], s2.masks["fc0"]["kernel"])


@pytest.mark.parametrize(
  "bad, message",
  [
    (lambda step: "0.3", "drop_fraction schedule must return a number"),
    (lambda step: np.array([0.1, 0.2]), r"drop_fraction schedule must return a scalar, got shape \(2,\)"),
    (lambda step: 1.5, r"drop_fraction\(0\) must be in \[0.0, 1.0\], got 1.5"),
  ],
)
@pytest.mark.parametrize("factory", [pruning.rigl, pruning.sparse_evolutionary])
def test_a_bad_drop_fraction_schedule_is_rejected_by_name(factory, bad, message):
  with pytest.raises(ValueError, match=message):
    factory(0.9, end_step=100, drop_fraction=bad)


def test_lottery_ticket_follows_a_schedule_of_rates():
  params = {"w": jax.random.normal(jax.random.key(0), (8, 16))}  # 128 weights
  rate = optax.piecewise_constant_schedule(0.5, {3: 0.5})  # 0.5 up to step 3, then 0.25
  c = pruning.lottery_ticket(rate, rounds=3, frequency=2)
  _, state = c.init(params)
  update = jax.jit(c.update)
  kept = []
  for _ in range(8):
    _, state = update(params, state)
    kept.append(int(state.masks["w"].sum()))
  # rounds end at steps 2, 4, 6 with rates 0.5, 0.25, 0.25: 128 -> 64 -> 48 -> 36, then fixed
  assert kept == [128, 64, 64, 48, 48, 36, 36, 36]
  np.testing.assert_allclose(float(pruning._lottery.round_sparsity(np.array([0.5, 0.25, 0.25]), 3)), 1 - 36 / 128)


@pytest.mark.parametrize(
  "bad, message",
  [
    (lambda step: "x", "rate schedule must return a number"),
    (lambda step: np.ones(3) * 0.2, r"rate schedule must return a scalar, got shape \(3,\)"),
    (lambda step: 0.0, r"rate\(0\) must be in \(0.0, 1.0\), got 0.0"),
    (optax.linear_schedule(0.5, 1.0, 20), r"rate\(20\) must be in \(0.0, 1.0\), got 1.0"),
  ],
)
def test_a_bad_rate_schedule_is_rejected_by_name(bad, message):
  with pytest.raises(ValueError, match=message):
    pruning.lottery_ticket(bad, rounds=2, frequency=10)


def test_lottery_rewinding_restarts_the_optimizer_state_of_the_survivors_too():
  """Frankle & Carbin 2019: each round retrains the rewound ticket with a fresh optimizer."""
  params = helpers.mlp_params()
  opt = optax.adam(1e-2)
  c = jc.chain(pruning.lottery_ticket(0.5, rounds=1, frequency=2))  # the chain ORs its stages' restart
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  for i in range(2):
    state, _ = step(state, *helpers.batch(seed=i))
  adam = state.opt_state[0]
  assert int(adam.count) == 0
  assert all(not np.asarray(x).any() for x in jax.tree.leaves((adam.mu, adam.nu)))
  state, _ = step(state, *helpers.batch(seed=2))
  assert np.asarray(state.opt_state[0].mu["fc0"]["kernel"]).any()
  keep = pruning.lottery_ticket(0.5, rounds=1, frequency=2, restart_optimizer=False)  # the old behaviour
  assert keep.restart(state.cstate.stages[0]) is None


def test_lottery_and_dst_never_prune_the_last_weight_of_a_leaf():
  params = {"w": jax.numpy.array([[1.0, 4.0, 2.0, 3.0]])}
  for scope in ("layer", "global"):
    c = pruning.lottery_ticket(0.9, rounds=1, frequency=1, scope=scope)  # round(0.9 * 4) would be all 4
    _, state = c.update(*c.init(params))
    assert state.masks["w"].tolist() == [[False, True, False, False]]
  _, state = pruning.rigl(0.9, frequency=1, end_step=10, allocation="uniform", init_mask="magnitude").init(params)
  assert state.masks["w"].tolist() == [[False, True, False, False]]
