"""Bad input: each gets a clear error naming the offending value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from tests import helpers


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_sparsity_outside_unit_interval(sparsity):
  with pytest.raises(ValueError, match="sparsity"):
    jc.pruning.magnitude(sparsity)


def test_schedule_returning_no_scalar():
  with pytest.raises(ValueError, match=r"sparsity schedule must return a scalar, got shape \(2,\)"):
    jc.pruning.magnitude(lambda step: jnp.array([0.5, 0.5]))
  with pytest.raises(ValueError, match="sparsity schedule must return a number"):
    jc.pruning.magnitude(lambda step: "x")


def test_schedule_starting_out_of_range():
  with pytest.raises(ValueError, match=r"sparsity\(0\) must be in \[0.0, 1.0\), got 1.2"):
    jc.pruning.magnitude(lambda step: 1.2)


@pytest.mark.parametrize("bits", [0, 17, -3, 2.5, None])
def test_bits_outside_range(bits):
  with pytest.raises(ValueError, match=f"bits must be .*got {bits}"):
    jc.quantization.fake_quant(bits)


def test_one_bit_symmetric_is_rejected_with_the_reason():
  with pytest.raises(ValueError, match=r"bits must be in \[2, 16\], got 1"):
    jc.quantization.fake_quant(1)


def test_per_channel_axis_out_of_range():
  with pytest.raises(ValueError, match=r"axis=2 is out of range for leaf 'fc0/kernel' of shape \(16, 32\)"):
    jc.quantization.fake_quant(8, per_channel=True, axis=2).init(helpers.mlp_params())


def test_mismatched_params_and_state():
  c = jc.pruning.magnitude(0.5)
  params, state = c.init(helpers.mlp_params())
  other = helpers.mlp_params(sizes=(16, 32, 8, 4))
  with pytest.raises(ValueError, match="compressor state does not match the param tree"):
    c.apply(other, state)
  with pytest.raises(ValueError, match="does not match"):
    c.update({"fc0": params["fc0"]}, state)


def test_chain_state_of_wrong_length():
  c = jc.chain(jc.identity(), jc.identity())
  params, _ = c.init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="expects the ChainState its init returned, got tuple"):
    c.apply(params, (jc.EmptyState(),))


def test_chain_rejects_non_compressors():
  with pytest.raises(TypeError, match="chain argument 1 is not a Compressor"):
    jc.chain(jc.identity(), lambda p: p)


@pytest.mark.parametrize(
  "factory", [lambda w: jc.pruning.magnitude(0.5, where=w), lambda w: jc.quantization.fake_quant(8, where=w)]
)
def test_integer_and_empty_leaves(factory):
  params = {"ints": jnp.ones((3, 3), jnp.int32), "empty": jnp.ones((0, 4)), "w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="'ints' has dtype int32"):
    factory("ints").init(params)
  with pytest.raises(ValueError, match=r"'empty' is empty \(shape \(0, 4\)\)"):
    factory("empty").init(params)


def test_nan_weights_raise_at_init():
  w = np.ones((3, 3), np.float32)
  w[1, 2] = np.nan
  with pytest.raises(ValueError, match=r"'w' holds 1 non-finite value\(s\), first at index \(1, 2\)"):
    jc.pruning.magnitude(0.5).init({"w": jnp.asarray(w)})
  with pytest.raises(ValueError, match="non-finite"):
    jc.quantization.fake_quant(8).init({"w": jnp.asarray(w)})


def test_nan_weights_under_jit_are_pruned_first():
  """Documented behaviour: a NaN that appears during training ranks lowest and becomes 0."""
  schedule = jc.pruning.polynomial_sparsity(0.5, begin_step=0, end_step=1)
  c = jc.pruning.magnitude(schedule)
  params, state = c.init({"w": jnp.arange(1.0, 5.0).reshape(2, 2)})
  params = {"w": params["w"].at[1, 1].set(jnp.nan)}
  params, state = jax.jit(c.update)(params, state)
  np.testing.assert_array_equal(params["w"], [[0.0, 2.0], [3.0, 0.0]])


def test_schedule_returning_a_numeric_string_or_a_bool():
  with pytest.raises(ValueError, match=r"sparsity schedule must return a number at step 0, got '0.5'"):
    jc.pruning.magnitude(lambda step: "0.5")
  with pytest.raises(ValueError, match="sparsity schedule must return a number at step 0, got False"):
    jc.pruning.magnitude(lambda step: False)
