import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.quantization import QuantSpec, qat
from jaxcompress.quantization._int8_backward import int8_matmul_grads, stochastic_codes, uniform_pair
from jaxcompress.quantization._qat import site_rule
from tests import helpers

SIZES = (16, 64, 8)
PARAMS = helpers.mlp_params(sizes=SIZES)
X, Y = helpers.batch(sizes=SIZES)


def _codes(rng, shape, low=-127, high=128):
  return jnp.asarray(rng.integers(low, high, size=shape), jnp.int8)


@pytest.mark.parametrize("shift", [None, 128 - 37])
def test_int8_grads_equal_numpy_reference_from_the_same_codes(shift):
  rng = np.random.default_rng(0)
  k, n = 12, 5
  a_codes, w_codes = _codes(rng, (2, 3, k)), _codes(rng, (k, n))
  a_scale, w_scale = jnp.float32(0.03), jnp.asarray(rng.uniform(0.01, 0.1, size=(1, n)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 3, n)), jnp.float32)
  key = jax.random.key(3)
  shift_arg = None if shift is None else jnp.int32(shift)
  dx, dw = int8_matmul_grads(g, a_codes, shift_arg, a_scale, w_codes, w_scale, key)
  # the reference: the same stochastic codes (same keys), then exact integer products in int64
  g2 = g.reshape(-1, n)
  u_dx, u_dw = uniform_pair(key, g2.shape)
  q_row, s_row = (np.asarray(v) for v in stochastic_codes(g2 * w_scale.reshape(-1), 1, u_dx))
  q_col, s_col = (np.asarray(v) for v in stochastic_codes(g2, 0, u_dw))
  a2, wc = np.asarray(a_codes, np.int64).reshape(-1, k), np.asarray(w_codes, np.int64)
  dx_ref = (q_row.astype(np.int64) @ wc.T).astype(np.float32) * s_row
  acc = a2.T @ q_col.astype(np.int64) + (0 if shift is None else shift * q_col.astype(np.int64).sum(0))
  dw_ref = acc.astype(np.float32) * (np.float32(a_scale) * s_col)
  np.testing.assert_array_equal(np.asarray(dx), dx_ref.reshape(2, 3, k))
  np.testing.assert_array_equal(np.asarray(dw), dw_ref)
  # and the scales are AQT's: max |.| / 127 over each product's contracted axis
  np.testing.assert_allclose(s_row[:, 0], np.abs(np.asarray(g2 * w_scale.reshape(-1))).max(1) / 127, rtol=1e-6)
  np.testing.assert_allclose(s_col[0], np.abs(np.asarray(g2)).max(0) / 127, rtol=1e-6)


def test_stochastic_rounding_is_unbiased():
  x = jax.random.normal(jax.random.key(0), (32, 16))
  trials = 512
  draw = jax.jit(jax.vmap(lambda k: stochastic_codes(x, 1, uniform_pair(k, x.shape)[1])))
  codes, scale = draw(jax.random.split(jax.random.key(1), trials))
  values = np.asarray(codes, np.float64) * np.asarray(scale, np.float64)
  s = np.asarray(scale[0], np.float64)  # the same scale for every key: it depends on x only
  # each draw is x rounded to one of its two neighbouring levels: variance <= s^2 / 4
  bound = 5.0 * (s / 2) / np.sqrt(trials)  # five standard deviations of the mean, at most
  assert np.all(np.abs(values.mean(0) - np.asarray(x)) <= bound)
  assert np.all(np.abs(values - np.asarray(x)) < s + 1e-6)  # never more than one level away
  # and it is not round-to-nearest (which is biased): some values round away from the nearest level
  assert np.any(np.abs(values - np.asarray(x)) > s / 2 + 1e-6)


def test_int8_grads_are_unbiased_against_the_float_products():
  """Averaged over keys, dX and dW approach g @ wᵀ and xᵀ @ g at the dequantized operands."""
  rng = np.random.default_rng(1)
  k, n, shift, a_scale = 10, 6, 128 - 20, jnp.float32(0.05)
  a_codes, w_codes = _codes(rng, (8, k)), _codes(rng, (k, n))
  w_scale = jnp.asarray(rng.uniform(0.01, 0.1, size=(n,)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(8, n)), jnp.float32)
  draw = jax.jit(jax.vmap(lambda key: int8_matmul_grads(g, a_codes, jnp.int32(shift), a_scale, w_codes, w_scale, key)))
  dx, dw = draw(jax.random.split(jax.random.key(2), 512))
  x = (np.asarray(a_codes, np.float64) + shift) * float(a_scale)
  w = np.asarray(w_codes, np.float64) * np.asarray(w_scale, np.float64)
  for d, exact in ((dx, np.asarray(g, np.float64) @ w.T), (dw, x.T @ np.asarray(g, np.float64))):
    d = np.asarray(d, np.float64)
    assert np.all(np.abs(d.mean(0) - exact) <= 6 * d.std(0) / np.sqrt(d.shape[0]) + 1e-5 * np.abs(exact))
    assert not np.allclose(d[0], exact)  # each draw is really quantized


def test_step_has_int8_backward_dots():
  opt = optax.sgd(0.1)
  loss = lambda p, x, y: jnp.mean((helpers.mlp_apply(p, x) - y) ** 2)
  counts = {}
  for backward in ("float", "int8"):
    c = qat(8, integer=True, backward=backward)
    state = jc.train.init(PARAMS, opt, c)
    hlo = jax.jit(jc.train.make_step(loss, opt, c)).lower(state, X, Y).as_text()
    counts[backward] = [d for d in re.findall(r"stablehlo.dot_general[^\n]*", hlo) if "xi8>" in d]
  # each layer's forward; with int8 also each layer's dW and the second layer's dX (the input needs no gradient)
  assert (len(counts["float"]), len(counts["int8"])) == (2, 2 + 2 + 1)
  assert all("xi32>" in d for d in counts["int8"])


def test_int8_backward_validates_its_arguments():
  with pytest.raises(ValueError, match="backward"):
    qat(8, integer=False, backward="int8")
  with pytest.raises(ValueError, match="backward"):
    qat(8, backward="bf16")
  with pytest.raises(ValueError, match="seed"):
    qat(8, backward="int8", seed=1.5)
  with pytest.raises(ValueError, match="key"):
    site_rule(QuantSpec(8), integer=True, backward="int8")
