"""Power-of-two quantization against a brute-force nearest-level search."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

pot = importlib.import_module("jaxcompress.quantization._power_of_two")


@pytest.mark.parametrize("levels", [1, 3, 7])
def test_rounds_to_the_nearest_power_of_two_or_zero(levels):
  w = np.asarray(jax.random.normal(jax.random.key(levels), (50, 20)) * 0.2)
  emax = int(np.floor(np.log2(4 / 3 * np.abs(w).max())))
  assert int(pot.max_exponent(jnp.asarray(w))) == emax
  mags = 2.0 ** np.arange(emax - levels + 1, emax + 1)
  values = np.concatenate([-mags, [0.0], mags])
  expected = values[np.abs(w[..., None] - values).argmin(-1)]
  c = jc.quantization.power_of_two(levels)
  p, s = c.init({"k": jnp.asarray(w)})
  out = c.apply(p, s)["k"]
  np.testing.assert_array_equal(out, expected.astype(np.float32))
  grad = jax.grad(lambda p: c.apply(p, s)["k"].sum())(p)["k"]
  np.testing.assert_array_equal(grad, np.ones_like(w))
  packed = c.pack(p, s)["k"]
  assert packed.indices.bits == int(np.ceil(np.log2(2 * levels + 1)))
  np.testing.assert_array_equal(packed.materialize(), out)


def test_boundaries_and_zeros():
  # levels 1, 0.5, 0.25 (emax = 0 from max 1.2): midpoints 0.75, 0.375, and 0.125 to zero
  w = jnp.array([1.2, 0.75, 0.7499, 0.375, 0.125, 0.1249, 0.0, -0.0, -0.8])
  c = jc.quantization.power_of_two(3)
  p, s = c.init({"k": w.reshape(3, 3)})
  np.testing.assert_array_equal(c.apply(p, s)["k"].reshape(-1), [1.0, 1.0, 0.5, 0.5, 0.25, 0.0, 0.0, 0.0, -1.0])
  zeros = jnp.zeros((2, 2))
  np.testing.assert_array_equal(c.apply(*c.init({"k": zeros}))["k"], zeros)


def test_bad_levels():
  for bad in (0, 65, 2.5):
    with pytest.raises(ValueError, match=f"levels must be .*{bad}"):
      jc.quantization.power_of_two(bad)
