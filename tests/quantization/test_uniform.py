"""The uniform quantizer against PyTorch's fake quantization (golden values) and the formula."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress.quantization import fake_quant, granularity, uniform
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization.granularity import Granularity

GOLDEN = json.loads((pathlib.Path(__file__).parent / "data" / "torch_fake_quant.json").read_text())
X = np.asarray(GOLDEN["x"], np.float32)


def cases(kind):
  return [c for c in GOLDEN["cases"] if c["kind"] == kind]


@pytest.mark.parametrize(
  "case", cases("tensor"), ids=lambda c: f"s{c['scale']}-z{c['zero_point']}-[{c['qmin']},{c['qmax']}]"
)
def test_per_tensor_matches_pytorch(case):
  y = uniform.fake_quant(
    jnp.asarray(X), case["scale"], zero_point=case["zero_point"], qmin=case["qmin"], qmax=case["qmax"]
  )
  np.testing.assert_array_equal(np.asarray(y), np.asarray(case["y"], np.float32))


def test_per_channel_matches_pytorch():
  (case,) = cases("channel")
  scale = jnp.asarray(case["scale"], jnp.float32)[None, :]
  zp = jnp.asarray(case["zero_point"], jnp.int32)[None, :]
  y = uniform.fake_quant(jnp.asarray(X), scale, zero_point=zp, qmin=case["qmin"], qmax=case["qmax"])
  np.testing.assert_array_equal(np.asarray(y), np.asarray(case["y"], np.float32))


@pytest.mark.parametrize("case", cases("learnable"), ids=lambda c: f"s{c['scale']}-z{c['zero_point']}")
def test_learnable_gradients_match_pytorch(case):
  g = jnp.asarray(case["g"], jnp.float32)

  def f(x, s, z):
    y = uniform.fake_quant_learnable(x, s, z, qmin=case["qmin"], qmax=case["qmax"])
    return jnp.sum(y * g), y

  (_, y), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
    jnp.asarray(X), jnp.float32(case["scale"]), jnp.float32(case["zero_point"])
  )
  np.testing.assert_array_equal(np.asarray(y), np.asarray(case["y"], np.float32))
  np.testing.assert_array_equal(np.asarray(grads[0]), np.asarray(case["dx"], np.float32))
  np.testing.assert_allclose(float(grads[1]), case["dscale"], rtol=1e-5)
  np.testing.assert_allclose(float(grads[2]), case["dzero_point"], rtol=1e-5)


@pytest.mark.parametrize("case", cases("observer"), ids=lambda c: f"{c['qscheme']}-[{c['qmin']},{c['qmax']}]")
def test_pytorch_convention_matches_torch_observers(case):
  g = Granularity() if case["axis"] is None else Granularity(channel_axis=case["axis"])
  qmin, qmax = case["qmin"], case["qmax"]
  lo, hi = g.minmax(jnp.asarray(X))
  scale, zero_point = uniform.observer_params(lo, hi, qmin, qmax, symmetric=case["symmetric"])
  np.testing.assert_array_equal(np.ravel(scale), np.asarray(case["scale"], np.float32))
  zp = np.zeros_like(case["zero_point"]) if zero_point is None else np.ravel(zero_point)
  np.testing.assert_array_equal(zp, case["zero_point"])
  fq = lambda b: uniform.fake_quant(b, scale, zero_point=zero_point, qmin=qmin, qmax=qmax)
  np.testing.assert_array_equal(np.asarray(g.apply(fq, jnp.asarray(X))), case["y"])
  if case["symmetric"] == (qmin < 0):  # the ranges QuantSpec offers: signed symmetric, unsigned affine
    spec = QuantSpec(int(np.log2(qmax - qmin + 1)), symmetric=case["symmetric"], granularity=g, convention="pytorch")
    assert spec.qrange == (qmin, qmax)
    np.testing.assert_array_equal(np.ravel(spec.params(jnp.asarray(X))[0]), np.ravel(scale))


def test_fake_quant_compressor_with_pytorch_convention_matches_torch():
  (case,) = [c for c in cases("observer") if c["qscheme"] == "per_channel_symmetric"]
  c = fake_quant(8, per_channel=True, axis=1, convention="pytorch")
  params, state = c.init({"w": jnp.asarray(X)})
  np.testing.assert_array_equal(np.asarray(c.apply(params, state)["w"]), case["y"])
  narrow = fake_quant(8, per_channel=True, axis=1)
  assert not np.array_equal(np.asarray(narrow.apply(*narrow.init({"w": jnp.asarray(X)}))["w"]), case["y"])
  # torch's scale can clip a channel's largest weight (x / scale rounds to 128): no gradient reaches it
  grad = jax.grad(lambda w: jnp.sum(c.apply({"w": w}, state)["w"]))(jnp.asarray(X))
  v = np.round(X * (np.float32(1) / np.asarray(case["scale"], np.float32)))
  expected = ((v >= -128) & (v <= 127)).astype(np.float32)
  assert expected.min() == 0.0  # the case exercises a clipped weight
  np.testing.assert_array_equal(np.asarray(grad), expected)


@pytest.mark.parametrize("case", cases("gradient"), ids=lambda c: f"s{c['scale']}-z{c['zero_point']}")
def test_straight_through_gradient_matches_torch_at_the_range_ends(case):
  def f(x):
    return jnp.sum(
      uniform.fake_quant(x, case["scale"], zero_point=case["zero_point"], qmin=case["qmin"], qmax=case["qmax"])
    )

  np.testing.assert_array_equal(np.asarray(jax.grad(f)(jnp.asarray(case["x"], jnp.float32))), case["dx"])


def test_pytorch_convention_rejects_unknown_names():
  with pytest.raises(ValueError, match="convention"):
    fake_quant(8, convention="tensorflow")


def test_against_live_pytorch_when_installed():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(64, 9)).astype(np.float32) * 5
  for scale, zp, lo, hi in [(0.03, 0, -128, 127), (0.2, 7, 0, 15)]:
    expected = torch.fake_quantize_per_tensor_affine(torch.tensor(x), scale, zp, lo, hi).numpy()
    got = uniform.fake_quant(jnp.asarray(x), scale, zero_point=zp, qmin=lo, qmax=hi)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_affine_params_include_zero_and_fit_the_range():
  scale, zp = uniform.affine_params(jnp.float32(0.5), jnp.float32(3.0), 0, 255)
  assert float(scale) == pytest.approx(3.0 / 255) and int(zp) == 0  # range widened to [0, 3]
  scale, zp = uniform.affine_params(jnp.float32(-1.0), jnp.float32(3.0), 0, 15)
  assert float(scale) == pytest.approx(4.0 / 15) and int(zp) == round(1.0 / (4.0 / 15))
  y = uniform.fake_quant(jnp.float32(0.0), scale, zero_point=zp, qmin=0, qmax=15)
  assert float(y) == 0.0  # zero is exact


@pytest.mark.parametrize("symmetric", [True, False])
def test_constant_and_zero_inputs_are_finite(symmetric):
  spec = QuantSpec(4, symmetric=symmetric, granularity=granularity.per_channel(-1))
  for x in (jnp.zeros((3, 4)), jnp.full((3, 4), -2.5), jnp.array([[0.0, 1.0], [0.0, -1.0]])):
    scale, zp = spec.params(x)
    y = spec.fake_quant(x, scale, zp)
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(scale)))
    np.testing.assert_allclose(y, x, atol=0.2)


def test_per_group_scales():
  x = jnp.arange(16.0).reshape(8, 2) - 3.0  # contraction axis 0 in groups of 4, per output column
  gran = granularity.per_group(4, axis=0, channel_axis=-1)
  spec = QuantSpec(8, granularity=gran)
  scale, _ = spec.params(x)
  assert scale.shape == (2, 1, 2)
  expected = np.abs(np.asarray(x).reshape(2, 4, 2)).max(axis=1, keepdims=True) / 127
  np.testing.assert_allclose(scale, expected)
  np.testing.assert_allclose(spec.fake_quant(x, scale, None), x, atol=float(scale.max()) / 2 + 1e-6)


def test_float8_cast_saturates():
  x = jnp.array([1e9, -1e9, 3.0, jnp.nan])
  e4m3 = uniform.cast_float8(x).astype(jnp.float32)
  assert e4m3[:3].tolist() == [448.0, -448.0, 3.0] and bool(jnp.isnan(e4m3[3]))
  e5m2 = uniform.cast_float8(x[:3], jnp.float8_e5m2).astype(jnp.float32)
  assert e5m2.tolist() == [57344.0, -57344.0, 3.0]
  assert bool(jnp.isnan(x.astype(jnp.float8_e4m3fn).astype(jnp.float32)[0]))  # what the clip prevents
