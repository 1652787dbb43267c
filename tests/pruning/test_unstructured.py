import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import pruning
from tests import helpers


def _kept(state, layer):
  return np.asarray(state.masks[layer]["kernel"])


def test_global_scope_reaches_the_overall_count_and_ranks_across_leaves():
  params = helpers.mlp_params()
  c = pruning.magnitude(0.8, scope="global")
  _, state = c.init(params)
  total = sum(params[k]["kernel"].size for k in params)
  kept = sum(_kept(state, k).sum() for k in params)
  assert kept == total - round(0.8 * total)
  w = np.concatenate([np.abs(np.asarray(params[k]["kernel"])).ravel() for k in sorted(params)])
  m = np.concatenate([_kept(state, k).ravel() for k in sorted(params)])
  assert w[m].min() > w[~m].max()


def test_erk_allocation_gives_each_layer_its_erk_count():
  params = helpers.mlp_params()
  c = pruning.magnitude(0.9, allocation="erk")
  _, state = c.init(params)
  targets = pruning.erk_sparsities([(16, 32), (32, 8)], 0.9)
  for k, t in zip(("fc0", "fc1"), targets):
    size = params[k]["kernel"].size
    assert _kept(state, k).sum() == size - round(float(t) * size)


def test_block_pruning_keeps_whole_blocks():
  c = pruning.magnitude(0.5, block=(1, 4))
  _params, state = c.init(helpers.mlp_params())
  m = _kept(state, "fc0").reshape(16, 8, 4)
  assert (m.all(-1) | ~m.any(-1)).all() and m.all(-1).sum() == 64


def test_random_is_exact_and_seeded():
  params = helpers.mlp_params()
  a = pruning.random(0.6, seed=3).init(params)[1]
  b = pruning.random(0.6, seed=3).init(params)[1]
  c = pruning.random(0.6, seed=4).init(params)[1]
  np.testing.assert_array_equal(_kept(a, "fc0"), _kept(b, "fc0"))
  assert not np.array_equal(_kept(a, "fc0"), _kept(c, "fc0"))
  assert _kept(a, "fc0").sum() == 512 - round(0.6 * 512)


def test_snip_ranks_by_w_times_g_globally():
  params = helpers.mlp_params()
  grads = jax.grad(helpers.mse_loss)(params, *helpers.batch())
  _, state = pruning.snip(0.7, grads).init(params)
  sal = np.concatenate([np.abs(np.asarray(params[k]["kernel"] * grads[k]["kernel"])).ravel() for k in sorted(params)])
  m = np.concatenate([_kept(state, k).ravel() for k in sorted(params)])
  assert m.sum() == sal.size - round(0.7 * sal.size)
  assert sal[m].min() >= sal[~m].max()


def test_saliency_needs_matching_grads():
  params = helpers.mlp_params()
  with pytest.raises(ValueError, match="needs gradients at init"):
    pruning.saliency(0.5).init(params)
  bad = {"fc0": {"kernel": jnp.ones((16, 32))}}
  with pytest.raises(ValueError, match="grads does not match"):
    pruning.saliency(0.5, grads=bad).init(params)
  wrong_shape = jax.tree.map(lambda x: x, params)
  wrong_shape["fc1"]["kernel"] = jnp.ones((8, 32))
  with pytest.raises(ValueError, match="grads leaf 'fc1/kernel' has shape"):
    pruning.snip(0.5, wrong_shape).init(params)


def test_saliency_on_a_schedule_uses_the_step_gradient():
  params = helpers.mlp_params()
  schedule = pruning.one_shot_sparsity(0.5, at_step=2)
  c = pruning.saliency(schedule)
  p, state = c.init(params)
  g = jax.tree.map(lambda x: jnp.full_like(x, 1.0), params)
  p, state = c.update(p, state, grads=g)
  assert _kept(state, "fc0").all()
  g2 = jax.grad(helpers.mse_loss)(p, *helpers.batch())
  p, state = c.update(p, state, grads=g2)
  expected = pruning.topk_mask(jnp.abs(p["fc0"]["kernel"] * g2["fc0"]["kernel"]), 0.5)
  np.testing.assert_array_equal(_kept(state, "fc0"), expected)
  with pytest.raises(ValueError, match="needs gradients"):
    c.update(p, state)


def test_movement_accumulates_minus_g_times_w():
  params = helpers.mlp_params()
  schedule = pruning.one_shot_sparsity(0.5, at_step=3)
  c = pruning.movement(schedule)
  p, state = c.init(params)
  total = jax.tree.map(jnp.zeros_like, params)
  for seed in range(3):
    g = jax.grad(helpers.mse_loss)(p, *helpers.batch(seed=seed))
    total = jax.tree.map(lambda t, gg, w: t - gg * w, total, g, p)
    p, state = c.update(p, state, grads=g)
  np.testing.assert_allclose(state.scores["fc0"]["kernel"], total["fc0"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(_kept(state, "fc0"), pruning.topk_mask(total["fc0"]["kernel"], 0.5))
  with pytest.raises(ValueError, match=r"sparsity\(0\) must be 0, got 0.5"):
    pruning.movement(0.5)


def test_bad_inputs_name_the_value():
  for s in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError, match=f"sparsity must be in \\[0.0, 1.0\\), got {s}"):
      pruning.magnitude(s)
  with pytest.raises(ValueError, match="scope must be one of"):
    pruning.magnitude(0.5, scope="tree")
  with pytest.raises(ValueError, match="scope='global'"):
    pruning.magnitude(0.5, scope="global", allocation="erk")
  with pytest.raises(ValueError, match="block must be"):
    pruning.magnitude(0.5, block=[1, 4])
  with pytest.raises(ValueError, match="n <= m, got n=3, m=2"):
    pruning.n_m(3, 2)
  with pytest.raises(ValueError, match="not divisible by m=4"):
    pruning.n_m(2, 4).init({"w": jnp.ones((6, 4))})
  with pytest.raises(ValueError, match="has dtype int32"):
    pruning.magnitude(0.5, where="w").init({"w": jnp.ones((4, 4), jnp.int32)})
  with pytest.raises(ValueError, match="selects no leaf"):
    pruning.magnitude(0.5).init({"b": jnp.ones(4), "s": jnp.ones(())})


def test_nm_compressor_is_exact_after_training():
  c = pruning.n_m(2, 4)
  opt = optax.adam(1e-2)
  state = jc.train.init(helpers.mlp_params(), opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  for i in range(3):
    state, _ = step(state, *helpers.batch(seed=i))
  w = np.asarray(state.params["fc0"]["kernel"])
  assert ((w != 0).reshape(4, 4, 32).sum(1) <= 2).all()
  assert np.count_nonzero(w) == w.size // 2
  packed = c.pack(state.params, state.cstate)["fc0"]["kernel"]
  assert isinstance(packed, jc.export.SparseArray) and packed.nbytes < 0.6 * w.nbytes


def test_schedule_reachability():
  s = pruning.polynomial_sparsity(0.9, begin_step=0, end_step=100)
  pruning.check_reaches(s, 0.9, total_steps=100)
  with pytest.raises(ValueError, match=r"at the last step 50, not the target 0\.9"):
    pruning.check_reaches(s, 0.9, total_steps=50)
  with pytest.raises(ValueError, match="at_step must be in"):
    pruning.one_shot_sparsity(0.5, at_step=0)
  assert float(pruning.constant_sparsity(0.3)(7)) == pytest.approx(0.3)


def test_snip_built_under_jit_from_gradients_computed_there():
  params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}

  @jax.jit
  def prune(p):
    g = jax.grad(lambda q: (q["w"] ** 2).sum())(p)  # |w g| = 2 w^2: keep the largest
    c = pruning.snip(0.5, g)
    q, s = c.init(p)
    return c.apply(q, s)

  np.testing.assert_array_equal(prune(params)["w"], [[0, 0, 0, 0], [5, 6, 7, 8]])
  sched = pruning.polynomial_sparsity(0.5, begin_step=0, end_step=4)
  jax.jit(lambda p: pruning.magnitude(sched).init(p)[1].count)(params)  # a schedule is probed there too


def test_a_pruner_given_another_compressors_state_names_both():
  params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
  c = pruning.magnitude(0.5)
  q = jc.quantization.fake_quant(8)
  qp, qs = q.init(params)
  for fn in (lambda: c.apply(qp, qs), lambda: c.update(qp, qs), lambda: c.pack(qp, qs), lambda: c.masks(qs)):
    with pytest.raises(TypeError, match=r"PruningState.*LeafwiseState"):
      fn()


def test_movement_revives_a_pruned_weight_whose_score_rises():
  """Sanh et al. 2020: S accumulates -g*W at every weight (dense W, gradient straight
  through the mask) and the mask is TopK(S) recomputed every step, so a pruned weight
  whose score rises returns, with its value."""
  c = pruning.movement(pruning.one_shot_sparsity(0.5, at_step=1))
  p, state = c.init({"w": jnp.array([[1.0, 1.0, 1.0, 1.0]])})
  p, state = c.update(p, state, grads={"w": jnp.array([[-4.0, -3.0, 1.0, 2.0]])})  # S = [4, 3, -1, -2]
  assert state.masks["w"].tolist() == [[True, True, False, False]]
  dense_grad = jax.grad(lambda q: (c.apply(q, state)["w"] * jnp.arange(1.0, 5.0)).sum())(p)["w"]
  np.testing.assert_array_equal(dense_grad, [[1.0, 2.0, 3.0, 4.0]])  # straight through the mask
  p, state = c.update(p, state, grads={"w": jnp.array([[0.0, 0.0, -10.0, 0.0]])})  # S = [4, 3, 9, -2]
  np.testing.assert_array_equal(state.scores["w"], [[4.0, 3.0, 9.0, -2.0]])
  assert state.masks["w"].tolist() == [[True, False, True, False]]
  assert c.apply(p, state)["w"].tolist() == [[1.0, 0.0, 1.0, 0.0]]
  c4 = pruning.movement(pruning.one_shot_sparsity(0.5, at_step=1), frequency=4)  # recomputed every 4th step only
  p, state = c4.init({"w": jnp.array([[1.0, 1.0, 1.0, 1.0]])})
  for g in ([[-4.0, -3.0, 1.0, 2.0]], [[0.0, 0.0, -10.0, 0.0]], [[0.0] * 4], [[0.0] * 4]):
    p, state = c4.update(p, state, grads={"w": jnp.array(g)})
    if int(state.count) < 4:
      assert state.masks["w"].tolist() == [[True, True, False, False]]
  assert state.masks["w"].tolist() == [[True, False, True, False]]
