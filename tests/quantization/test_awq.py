"""AWQ (Lin et al. 2023): scales, the alpha search against NumPy, folding, and RTN int4 g128."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import awq, awq_scales
from tests.quantization import smoothing_model as sm

IN, OUT = 256, 32


def _outlier_tokens(seed, n=256):
  x = np.random.default_rng(seed).normal(size=(n, IN)).astype(np.float32)
  x[:, [5, 77, 130, 200]] *= 30.0  # a few salient input channels
  return x


def dense(p, x):
  return x @ p["w"]


@pytest.fixture(scope="module")
def layer():
  return {"w": jnp.asarray(np.random.default_rng(0).normal(size=(IN, OUT)) * 0.05, jnp.float32)}


def _np_q4g128(w):
  """Asymmetric 4-bit round-to-nearest per group of 128 inputs per output (range widened to 0)."""
  g = w.reshape(-1, 128, w.shape[1])
  lo, hi = np.minimum(g.min(1, keepdims=True), 0), np.maximum(g.max(1, keepdims=True), 0)
  scale = np.maximum((hi - lo) / 15, np.finfo(np.float32).tiny)
  zero = np.clip(-np.round(lo / scale), 0, 15)
  return ((np.clip(np.round(g / scale) + zero, 0, 15) - zero) * scale).reshape(w.shape)


def _np_scales(absmean, alpha):
  s = np.maximum(absmean, 1e-4) ** alpha
  return s / np.sqrt(s.max() * s.min())


def test_scales_formula():
  a = np.array([0.0, 0.5, 2.0, 40.0], np.float32)
  for alpha in (0.0, 0.35, 1.0):
    np.testing.assert_allclose(awq_scales(a, alpha), _np_scales(a.astype(np.float64), alpha), rtol=1e-5)


@pytest.fixture(scope="module")
def searched(layer):
  return awq(dense, layer, batches=[(_outlier_tokens(1),)], verify=False)


def test_alpha_search_and_codes_match_numpy_reference(layer, searched):
  x = _outlier_tokens(1).astype(np.float64)
  w = np.asarray(layer["w"], np.float64)
  absmean = np.abs(x).mean(0)
  losses = []
  for alpha in np.arange(20) / 20:
    s = _np_scales(absmean, alpha)
    losses.append(np.mean(((x / s) @ _np_q4g128(w * s[:, None]) - x @ w) ** 2))
  best = np.arange(20)[np.argmin(losses)] / 20
  assert best > 0 and searched.alpha["w"] == pytest.approx(best)
  s = _np_scales(absmean, best)
  q = searched.packed["w"]
  assert isinstance(q, jc.export.QArray) and q.bits == 4 and q.group_size == 128 and q.zero_point is not None
  np.testing.assert_allclose(np.asarray(q.materialize()), _np_q4g128(w * s[:, None]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(searched.input_scales["w"], 1 / s, rtol=1e-4)


def test_beats_round_to_nearest_int4_g128(layer, searched):
  x = _outlier_tokens(2)  # held out
  ref = np.asarray(dense(layer, x))
  rtn = jc.quantization.ptq(dense, layer, weight_bits=4, symmetric=False, group_size=128)
  err = lambda out: float(np.mean((np.asarray(out) - ref) ** 2))
  e_awq, e_rtn = err(searched.apply(searched.packed, x)), err(rtn.apply(rtn.packed, x))
  assert e_awq < 0.7 * e_rtn, (e_awq, e_rtn)
  clipped = awq(dense, layer, batches=[(_outlier_tokens(1),)], clip=True, verify=False)
  assert err(clipped.apply(clipped.packed, x)) < e_awq
  # the explicit input scale is stored and counted
  assert searched.nbytes == searched.packed["w"].nbytes + IN * 4


def test_folds_into_producers_and_keeps_the_function():
  params, batches = sm.params(), [(sm.inputs(1),)]
  m = awq(sm.apply, params, batches=batches, group_size=16, producers=sm.PRODUCERS, bits=8, where=r"[qkvo]/kernel")
  assert m.input_scales == {}  # every consumer folded: verify=True checked the float function
  for n in "qkv":  # one search, one scale for the three consumers of the LayerNorm
    np.testing.assert_array_equal(m.scales[f"{n}/kernel"], m.scales["q/kernel"])
    assert m.alpha[f"{n}/kernel"] == m.alpha["q/kernel"]
  np.testing.assert_allclose(
    m.packed["ln"]["scale"], np.asarray(params["ln"]["scale"]) / m.scales["q/kernel"], rtol=1e-5
  )
  # at 8 bits the quantized model is close to the float one, so the folding is right
  x = sm.inputs(2)
  ref = sm.apply(params, x)
  out = jax.jit(m.apply)(m.packed, x)
  assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
  loaded = jc.export.materialize_tree(m.packed)
  assert all(isinstance(m.packed[n]["kernel"], jc.export.QArray) for n in "qkvo")
  assert not isinstance(m.packed["fc"]["kernel"], jc.export.QArray)
  assert loaded["v"]["kernel"].shape == (32, 32)


def test_bad_inputs_name_the_value(layer):
  x = (_outlier_tokens(3, n=8),)
  with pytest.raises(ValueError, match="group_size=128 does not divide axis 0 of size 32"):
    awq(sm.apply, sm.params(), batches=[(sm.inputs(1),)])
  with pytest.raises(ValueError, match="bits"):
    awq(dense, layer, batches=[x], bits=0)
  with pytest.raises(ValueError, match="grid"):
    awq(dense, layer, batches=[x], grid=0)
  with pytest.raises(ValueError, match="'norm/scale'"):
    awq(dense, layer, batches=[x], producers={"w": ("norm/scale",)})
  with pytest.raises(ValueError, match="no valid token"):
    awq(lambda p, x, m: dense(p, x), layer, batches=[(x[0][None], jnp.zeros((1, 8)))], token_mask=1)
