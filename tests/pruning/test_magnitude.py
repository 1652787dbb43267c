import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.pruning import num_pruned, topk_mask
from tests import helpers


@pytest.mark.parametrize("size", [1, 7, 10, 100, 1000])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.99])
def test_topk_mask_keeps_exactly_the_target_count(size, sparsity):
  scores = jax.random.normal(jax.random.key(size), (size,))
  mask = topk_mask(scores, sparsity)
  keep = size - round(sparsity * size)  # Python's round is half to even too
  assert int(mask.sum()) == keep
  kept, dropped = np.asarray(scores)[np.asarray(mask)], np.asarray(scores)[~np.asarray(mask)]
  if kept.size and dropped.size:
    assert kept.min() >= dropped.max()


def test_rounding_rule():
  assert int(num_pruned(0.99, 10)) == 10  # round(9.9): keeps none
  assert int(num_pruned(0.94, 10)) == 9
  assert int(num_pruned(0.25, 2)) == 0  # round(0.5) is 0, half to even
  assert int(num_pruned(0.75, 2)) == 2  # round(1.5) is 2


def test_traced_sparsity_out_of_range_is_clipped_and_nan_is_zero():
  assert [int(num_pruned(s, 10)) for s in (jnp.nan, -0.5, 1.5, jnp.inf)] == [0, 0, 10, 10]


def test_ties_keep_the_earlier_element():
  mask = topk_mask(jnp.ones((2, 3)), 0.5)
  assert mask.tolist() == [[True, True, True], [False, False, False]]


def test_magnitude_keeps_largest_absolute_values_per_leaf():
  params = helpers.mlp_params()
  c = jc.pruning.magnitude(0.8)
  trainable, state = c.init(params)
  out = c.apply(trainable, state)
  for layer in ("fc0", "fc1"):
    w = np.asarray(params[layer]["kernel"])
    threshold = np.sort(np.abs(w).ravel())[::-1][w.size - round(0.8 * w.size) - 1]
    expected = np.where(np.abs(w) >= threshold, w, 0.0)
    np.testing.assert_array_equal(out[layer]["kernel"], expected)


def test_pruned_weights_stay_exactly_zero_under_adamw():
  """Momentum and weight decay would move pruned weights; update must hold them at 0."""
  c = jc.pruning.magnitude(0.75)
  opt = optax.adamw(1e-1, weight_decay=0.1)
  state = jc.train.init(helpers.mlp_params(), opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  mask0 = state.cstate.masks
  for i in range(5):
    state, _ = step(state, *helpers.batch(seed=i))
    for layer in ("fc0", "fc1"):
      w, m = np.asarray(state.params[layer]["kernel"]), np.asarray(mask0[layer]["kernel"])
      assert np.all(w[~m] == 0.0)
      assert np.count_nonzero(w) == m.sum() == w.size // 4


def test_gradual_schedule_reaches_each_target_count():
  schedule = jc.pruning.polynomial_sparsity(0.9, begin_step=2, end_step=10, frequency=2)
  c = jc.pruning.magnitude(schedule)
  opt = optax.sgd(1e-2)
  state = jc.train.init(helpers.mlp_params(), opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  for t in range(1, 13):
    state, _ = step(state, *helpers.batch(seed=t))
    assert int(state.cstate.count) == t
    w = np.asarray(state.params["fc0"]["kernel"])
    assert w.size - np.count_nonzero(w) == round(float(schedule(t)) * w.size)
  assert np.count_nonzero(state.params["fc0"]["kernel"]) == 512 - round(0.9 * 512)


def test_pack_gives_sparse_arrays_smaller_than_dense():
  c = jc.pruning.magnitude(0.9)
  params, state = c.init(helpers.mlp_params())
  packed = c.pack(params, state)
  kernel = packed["fc0"]["kernel"]
  assert isinstance(kernel, jc.export.SparseArray)
  assert kernel.nbytes < 0.25 * params["fc0"]["kernel"].nbytes
  assert isinstance(packed["fc0"]["bias"], jax.Array)  # unselected: untouched


def test_works_on_flax_nnx_state():
  from flax import nnx

  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  c = jc.pruning.magnitude(0.5)
  trainable, state = c.init(params)
  pruned = nnx.merge(graphdef, c.apply(trainable, state))
  assert int((pruned.kernel[...] == 0).sum()) == 16
  assert pruned(jnp.ones((1, 8))).shape == (1, 4)
