"""make_step with optimizers whose state does not mirror the params, and pmap's aux."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc
from tests import helpers


def test_pruning_with_masked_and_multi_transform_optimizers():
  params = helpers.mlp_params()
  labels = jax.tree.map(lambda x: "decay" if x.ndim == 2 else "plain", params)
  for opt in (
    optax.masked(optax.adam(1e-2), jax.tree.map(lambda x: x.ndim == 2, params)),
    optax.multi_transform({"decay": optax.adamw(1e-2), "plain": optax.sgd(1e-2)}, labels),
  ):
    c = jc.pruning.magnitude(0.5)
    state = jc.train.init(params, opt, c)
    step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
    for i in range(3):
      state, _ = step(state, *helpers.batch(seed=i))
    kernel, mask = np.asarray(state.params["fc0"]["kernel"]), np.asarray(state.cstate.masks["fc0"]["kernel"])
    assert not np.any(kernel[~mask]) and np.all(kernel[mask] != 0)


def test_pmap_averages_the_loss_not_the_aux():
  params = helpers.mlp_params()
  opt = optax.sgd(1e-2)
  c = jc.pruning.magnitude(0.5)
  state = jc.train.init(params, opt, c)

  def loss(p, x, y):
    return helpers.mse_loss(p, x, y), jnp.asarray(x.shape[0], jnp.int32) + jax.lax.axis_index("d")

  step = jax.pmap(jc.train.make_step(loss, opt, c, axis_name="d", has_aux=True), axis_name="d")
  n = jax.device_count()
  pstate = jax.tree.map(lambda a: jnp.stack([a] * n), state)
  x, y = helpers.batch(n=4 * n)
  _, (value, aux) = step(pstate, x.reshape(n, 4, -1), y.reshape(n, 4, -1))
  assert np.asarray(aux).dtype == np.int32 and np.asarray(aux).tolist() == [4 + i for i in range(n)]
  assert np.allclose(np.asarray(value), np.asarray(value)[0])
