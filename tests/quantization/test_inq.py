"""INQ (Zhou et al. 2017) against NumPy references of its formulas, and the frozen seam."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.quantization import _inq


def ref_levels(w, bits):
  """The paper's Eqs. 2-3: n1 = floor(log2(4 s / 3)), n2 = n1 + 1 - 2^(b-1)/2."""
  s = np.abs(w).max()
  n1 = math.floor(math.log2(4 * s / 3))
  n2 = n1 + 1 - 2 ** (bits - 1) // 2
  return n1, n2


def ref_quantize(w, n1, n2):
  """Eq. 4: beta sgn(w) where (alpha + beta)/2 <= |w| < 3 beta / 2, alpha < beta adjacent in P."""
  p = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
  out = np.zeros_like(w)
  for i, x in np.ndenumerate(w):
    a = abs(float(x))
    v = 0.0
    for lo, hi in zip(p[:-1], p[1:]):
      if a >= (lo + hi) / 2:
        v = hi
    out[i] = math.copysign(v, x) if v else 0.0
  return out


@pytest.mark.parametrize("bits", [3, 5])
def test_levels_and_rounding_match_the_paper(bits):
  rng = np.random.default_rng(bits)
  w = (rng.standard_normal((12, 9)) * 0.3).astype(np.float32)
  n1, n2 = ref_levels(w, bits)
  got1, got2 = _inq.inq_exponents(jnp.asarray(w), bits)
  assert (int(got1), int(got2)) == (n1, n2)
  assert int(got1) - int(got2) + 1 == 2 ** (bits - 2)
  np.testing.assert_array_equal(_inq.inq_quantize(jnp.asarray(w), got1, bits), ref_quantize(w, n1, n2))


def test_partition_grows_by_magnitude_among_the_unfrozen():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((4, 8)).astype(np.float32)
  c = jc.quantization.inq(5, steps=(0, 2, 4, 6))
  params, state = c.init({"w": jnp.asarray(w)})
  frozen = np.asarray(state.leaves["w"].frozen)
  np.testing.assert_array_equal(frozen, np.abs(w) >= np.sort(np.abs(w).ravel())[-16])  # 50%: the 16 largest
  n1, n2 = ref_levels(w, 5)
  np.testing.assert_array_equal(np.asarray(params["w"])[frozen], ref_quantize(w, n1, n2)[frozen])
  np.testing.assert_array_equal(np.asarray(params["w"])[~frozen], w[~frozen])
  # the free weights move (as retraining would); the next portion takes the largest of them
  moved = np.where(frozen, np.asarray(params["w"]), rng.standard_normal(w.shape).astype(np.float32))
  update = jax.jit(c.update)
  p, s = update({"w": jnp.asarray(moved)}, state)  # step 1: still 50%
  np.testing.assert_array_equal(np.asarray(s.leaves["w"].frozen), frozen)
  p, s = update(p, s)  # step 2: 75% = 24 weights
  new = np.asarray(s.leaves["w"].frozen)
  free = np.where(frozen, -1.0, np.abs(moved))
  expect = frozen | (free >= np.sort(free.ravel())[-8])
  np.testing.assert_array_equal(new, expect)
  np.testing.assert_array_equal(np.asarray(p["w"])[new], ref_quantize(moved, n1, n2)[new])  # n1 fixed at init


def test_frozen_weights_get_no_update_and_no_moments_under_adamw():
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32), "b": jnp.ones(5)}
  c = jc.quantization.inq(5, steps=(0, 3), portions=(0.5, 1.0))
  opt = optax.adamw(0.05, weight_decay=0.5)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(lambda p, x: jnp.sum((x @ p["w"] + p["b"]) ** 2), opt, c))
  x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  frozen = np.asarray(state.cstate.leaves["w"].frozen)
  w0 = np.asarray(state.params["w"])
  for _ in range(2):
    state, _ = step(state, x)
    w = np.asarray(state.params["w"])
    np.testing.assert_array_equal(w[frozen], w0[frozen])  # bit for bit, weight decay included
    assert np.all(w[~frozen] != w0[~frozen])
    mu, nu = state.opt_state[0].mu["w"], state.opt_state[0].nu["w"]
    assert np.all(np.asarray(mu)[frozen] == 0) and np.all(np.asarray(nu)[frozen] == 0)
    assert np.all(np.asarray(nu)[~frozen] > 0)
  for _ in range(2):  # step 3 freezes everything; step 4 moves nothing
    state, _ = step(state, x)
  before = np.asarray(state.params["w"])
  state, _ = step(state, x)
  np.testing.assert_array_equal(np.asarray(state.params["w"]), before)
  packed = c.pack(state.params, state.cstate)["w"]
  assert isinstance(packed, jc.export.CodebookArray)
  assert packed.codebook.shape == (17,) and packed.indices.bits == 5
  assert packed.nbytes == 17 * 4 + math.ceil(30 * 5 / 8)
  np.testing.assert_array_equal(packed.materialize(), before)


def test_chain_ors_the_frozen_seam():
  params = {"a": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.arange(1.0, 7.0).reshape(3, 2)}
  c = jc.chain(
    jc.quantization.inq(3, steps=(0, 5), portions=(0.5, 1.0), where="a"),
    jc.quantization.inq(3, steps=(0, 5), portions=(0.5, 1.0), where="b"),
  )
  _, state = c.init(params)
  frozen = c.frozen(state)
  assert frozen["a"].sum() == 3 and frozen["b"].sum() == 3


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"steps": (0, 1), "portions": (0.75, 0.5)}, "nondecreasing"),
    ({"steps": (0, 1), "portions": (0.5, 0.9)}, "reach 1.0"),
    ({"steps": (0, 0), "portions": (0.5, 1.0)}, "strictly increasing"),
    ({"steps": (0,), "portions": (0.5, 1.0)}, "one entry per portion"),
    ({"steps": (0, 1), "portions": (0.0, 1.0)}, r"\(0, 1\]"),
    ({"steps": (-1, 1), "portions": (0.5, 1.0)}, "steps"),
    ({"steps": 3, "portions": (1.0,)}, "sequence"),
    ({"steps": (0,), "portions": (1.0,), "bits": 1}, "bits"),
  ],
)
def test_bad_schedules_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jc.quantization.inq(**kwargs)
