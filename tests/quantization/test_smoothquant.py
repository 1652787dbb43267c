"""SmoothQuant (Xiao et al. 2022): the scales' formula, folding, and W8A8 error against plain W8A8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import smooth, smoothquant, smoothquant_scales
from tests.quantization import smoothing_model as sm


@pytest.fixture(scope="module")
def setup():
  return sm.params(), [(sm.inputs(1),)], sm.inputs(2)


def test_scales_formula():
  a = np.array([100.0, 1.0, 0.0, 4.0])
  w = np.array([0.02, 1.0, 3.0, 0.0])
  for alpha in (0.0, 0.5, 0.8, 1.0):
    want = np.where((a > 0) & (w > 0), a**alpha / np.maximum(w, 1e-30) ** (1 - alpha), 1.0)
    np.testing.assert_allclose(smoothquant_scales(a, w, alpha), np.clip(want, 1e-5, 1e5), rtol=1e-6)


def test_fold_is_the_same_function_with_shared_joint_scales(setup):
  params, batches, held_out = setup
  smoothed, input_scales, scales = smooth(sm.apply, params, batches=batches, producers=sm.PRODUCERS, verify=False)
  # NumPy reference of q/k/v's shared s: joint max over the LayerNorm output and the three kernels' rows
  cap = jc.graph.capture(sm.apply)(params, batches[0][0])[1]
  x_max = np.abs(np.asarray(cap["q/kernel"]["input"])).reshape(-1, 32).max(0)
  w_max = np.max([np.abs(np.asarray(params[n]["kernel"])).max(1) for n in "qkv"], axis=0)
  want = np.sqrt(x_max) / np.sqrt(w_max)
  for n in "qkv":
    np.testing.assert_allclose(scales[f"{n}/kernel"], want, rtol=1e-5)
  np.testing.assert_allclose(smoothed["ln"]["scale"], np.asarray(params["ln"]["scale"]) / want, rtol=1e-5)
  np.testing.assert_allclose(smoothed["q"]["kernel"], np.asarray(params["q"]["kernel"]) * want[:, None], rtol=1e-5)
  assert set(input_scales) == {"fc/kernel"}  # folded where a producer is given, explicit elsewhere
  np.testing.assert_allclose(input_scales["fc/kernel"], 1 / scales["fc/kernel"], rtol=1e-6)
  ref = sm.apply(params, held_out)
  got = jax.jit(jc.quantization.scaled_apply(sm.apply, input_scales))(smoothed, held_out)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))
  assert not np.allclose(smoothed["v"]["kernel"], params["v"]["kernel"])


def test_beats_plain_per_tensor_w8a8_and_serves_in_int8(setup):
  params, batches, held_out = setup
  ref = np.asarray(sm.apply(params, held_out))
  m = smoothquant(sm.apply, params, batches=batches, producers=sm.PRODUCERS, alpha=0.5, verify=False)
  plain = jc.quantization.ptq(
    sm.apply, params, weight_bits=8, per_channel=False, act_bits=8, act_symmetric=True, batches=batches,
    where=lambda path, leaf: path in m.scales,
  )  # fmt: skip
  err = lambda out: float(np.mean((np.asarray(out) - ref) ** 2))
  e_sq, e_plain = err(jax.jit(m.apply)(m.packed, held_out)), err(jax.jit(plain.apply)(plain.packed, held_out))
  assert e_sq < 0.5 * e_plain, (e_sq, e_plain)
  served = jc.quantization.serve(
    jc.quantization.scaled_apply(sm.apply, m.input_scales), m.packed, act_ranges=m.act_ranges, act_symmetric=True
  )(held_out)
  assert err(served) < 0.5 * e_plain
  assert isinstance(m.packed["q"]["kernel"], jc.export.QArray) and m.packed["q"]["kernel"].bits == 8
  extra = sum(v.nbytes for v in m.input_scales.values())
  assert extra == 32 * 4 and m.nbytes == jc.core.accounting.report(m.packed).bytes + extra


def test_bad_inputs_name_the_value(setup):
  params, batches, _ = setup
  with pytest.raises(ValueError, match=r"alpha must be in \[0.0, 1.0\], got 1.5"):
    smoothquant(sm.apply, params, batches=batches, alpha=1.5)
  with pytest.raises(ValueError, match="smooth_where='nothing'"):
    smoothquant(sm.apply, params, batches=batches, smooth_where="nothing")
  with pytest.raises(ValueError, match="'ln/gain'"):
    smooth(sm.apply, params, batches=batches, producers={"q/kernel": ("ln/gain", "ln/bias")})
  with pytest.raises(ValueError, match=r"'fc/bias' of shape \(24,\).*32 features.*'o/kernel'"):
    smooth(sm.apply, params, batches=batches, producers={"o/kernel": "fc/bias"})
  with pytest.raises(ValueError, match="'ln/scale'"):
    smooth(sm.apply, params, batches=batches, producers={"ln/scale": "v/kernel"})
  # fc's input is gelu(x + o(...)): folding into o would also scale the residual x
  with pytest.raises(ValueError, match="does not compute the original function"):
    smooth(sm.apply, params, batches=batches, producers={"fc/kernel": ("o/kernel", "o/bias")})


def _ln_dense(p, x):
  return (x * p["ln"]["scale"] + p["ln"]["bias"]) @ p["a"]["kernel"]


def _ln_params(kernel):
  n = kernel.shape[0]
  return {"ln": {"scale": jnp.ones(n), "bias": jnp.zeros(n)}, "a": {"kernel": jnp.asarray(kernel)}}


_LN_PRODUCERS = {"a/kernel": ("ln/scale", "ln/bias")}


def test_smoothing_that_overflows_the_kernel_dtype_is_refused():
  # s_0 = sqrt(max|x_0| / max|w_0|) = sqrt(1e6 / 65504) ≈ 3.9: row 0 of a float16 kernel at
  # ±65504 cannot hold s_0·w (it would saturate and change the function silently).
  x = jnp.ones((4, 8)).at[:, 0].set(1e6)
  w = np.full((8, 4), 65504.0, np.float16)
  with pytest.raises(ValueError, match=r"'a/kernel'.*float16"):
    smooth(_ln_dense, _ln_params(w), batches=[x], producers=_LN_PRODUCERS, verify=False)


def test_original_model_not_finite_on_calibration_is_named():
  # Finite params whose float32 output overflows: the check cannot compare, and must say why.
  w = np.full((8, 4), 3e38, np.float32)
  with pytest.raises(ValueError, match=r"original model's output .* not finite"):
    smooth(_ln_dense, _ln_params(w), batches=[jnp.ones((4, 8))], producers=_LN_PRODUCERS)


def test_where_selecting_nothing_names_the_users_where():
  for where in ("nothing", lambda path, leaf: False):
    with pytest.raises(ValueError, match=r"where=.*selects no leaf.*'a/kernel'"):
      smooth(_ln_dense, _ln_params(np.ones((8, 4), np.float32)), batches=[jnp.ones((4, 8))], where=where)
  integer = _ln_params(np.ones((8, 4), np.int32))  # not floating: the default takes no leaf
  with pytest.raises(ValueError, match=r"where=None selects no leaf"):
    jc.quantization.awq(_ln_dense, integer, batches=[jnp.ones((4, 8))], group_size=4)
