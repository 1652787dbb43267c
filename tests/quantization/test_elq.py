"""ELQ as implemented: the loss-error-aware selection rule on the incremental schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc


def test_selection_takes_the_smallest_loss_plus_error_cost():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 6)).astype(np.float32)
  c = jc.quantization.elq("ternary", steps=(1, 2), portions=(0.5, 1.0), error_weight=0.5)
  params, state = c.init({"w": jnp.asarray(w)})
  assert not np.asarray(state.leaves["w"].frozen).any()  # nothing before steps[0]
  alpha = float(state.leaves["w"].alpha)
  g = rng.standard_normal(w.shape).astype(np.float32)
  update = jax.jit(c.update)
  params, state = update(params, state, grads={"w": jnp.asarray(g)})
  q = np.where(np.abs(w) >= alpha / 2, np.sign(w) * alpha, 0.0)
  cost = np.abs(g * (q - w)) + 0.5 * (q - w) ** 2
  expect = cost <= np.sort(cost.ravel())[11]  # the 12 cheapest of 24
  frozen = np.asarray(state.leaves["w"].frozen)
  np.testing.assert_array_equal(frozen, expect)
  np.testing.assert_allclose(np.asarray(params["w"])[frozen], q[frozen], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(params["w"])[~frozen], w[~frozen])
  np.testing.assert_array_equal(np.asarray(c.frozen(state)["w"]), frozen)
  params, state = update(params, state, grads={"w": jnp.asarray(g)})
  packed = c.pack(params, state)["w"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.indices.bits == 2
  np.testing.assert_array_equal(np.asarray(packed.materialize()), np.asarray(c.apply(params, state)["w"]))


def test_binary_alpha_is_mean_abs():
  w = jnp.asarray([[1.0, -3.0], [0.5, 2.5]])
  _, state = jc.quantization.elq("binary", steps=(0,), portions=(1.0,)).init({"w": w})
  assert float(state.leaves["w"].alpha) == pytest.approx(7.0 / 4)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"kind": "pot", "steps": (0,), "portions": (1.0,)}, "kind"),
    ({"steps": (0, 1), "portions": (0.5, 0.8)}, "reach 1.0"),
    ({"steps": (0,), "portions": (1.0,), "error_weight": -1.0}, "error_weight"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jc.quantization.elq(**kwargs)
