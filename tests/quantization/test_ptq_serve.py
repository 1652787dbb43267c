import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress import graph
from jaxcompress.quantization import QuantSpec, activation_rule, ptq, quantized_backward, serve, stochastic_quantize
from tests import helpers
from tests.graph import models as M

PARAMS = helpers.mlp_params(sizes=(16, 64, 8))
BATCHES = [helpers.batch(seed=i, sizes=(16, 64, 8))[0] for i in range(4)]
X = helpers.batch(seed=9, sizes=(16, 64, 8))[0]


def test_weight_only_ptq_packs_and_matches_fake_quant():
  for bits in (8, 4):
    q = ptq(helpers.mlp_apply, PARAMS, weight_bits=bits)
    c = jc.quantization.fake_quant(bits, per_channel=True)
    fq = c.apply(*c.init(PARAMS))
    np.testing.assert_array_equal(q.apply(q.packed, X), helpers.mlp_apply(fq, X))
    kernel = q.packed["fc0"]["kernel"]
    assert isinstance(kernel, jc.export.QArray) and kernel.codes.nbytes == 16 * 64 * bits // 8


@pytest.mark.parametrize("act_bits", [None, 8])
def test_ptq_packed_is_on_device_so_jit_copies_nothing_per_call(act_bits):
  batches = None if act_bits is None else BATCHES
  q = ptq(helpers.mlp_apply, PARAMS, weight_bits=4, act_bits=act_bits, batches=batches)
  leaves = jax.tree.leaves(q.packed)
  assert leaves and all(isinstance(a, jax.Array) for a in leaves), {type(a).__name__ for a in leaves}
  host = jc.quantization.fake_quant(4, per_channel=True)  # pack alone stays on the host: same leaves, same bytes
  packed_host = host.pack(*host.init(PARAMS))
  assert q.packed["fc0"]["kernel"].nbytes == packed_host["fc0"]["kernel"].nbytes == 16 * 64 // 2 + 64 * 4
  run = jax.jit(q.apply)
  expected = run(q.packed, X)
  with jax.transfer_guard_host_to_device("disallow"):  # a NumPy leaf would be copied here, on every call
    np.testing.assert_array_equal(run(q.packed, X), expected)


def _asymmetric(x, lo, hi, bits=8):
  """Jacob et al. 2018, eq. 1-2: uint codes over [min(lo, 0), max(hi, 0)] with an integer zero point."""
  qmax = 2**bits - 1
  lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
  scale = (hi - lo) / qmax
  zero = int(np.clip(-np.round(lo / scale), 0, qmax))
  return (jnp.clip(jnp.round(x / scale) + zero, 0, qmax) - zero) * scale, zero


def _symmetric(x, lo, hi):
  scale = max(abs(float(lo)), abs(float(hi))) / 127
  return jnp.clip(jnp.round(x / scale), -127, 127) * scale, 0


@pytest.mark.parametrize("act_symmetric", [False, True])
def test_w8a8_ptq_quantizes_activations_at_calibrated_ranges(act_symmetric):
  q = ptq(helpers.mlp_apply, PARAMS, weight_bits=8, act_bits=8, act_symmetric=act_symmetric, batches=BATCHES)
  assert sorted(q.act_ranges) == ["fc0/kernel", "fc1/kernel"]
  quantize = _symmetric if act_symmetric else _asymmetric
  weights = jc.export.materialize_tree(q.packed)
  x_q, _ = quantize(X, *q.act_ranges["fc0/kernel"])
  expected_hidden = jax.nn.relu(x_q @ weights["fc0"]["kernel"] + weights["fc0"]["bias"])
  h_lo, h_hi = q.act_ranges["fc1/kernel"]
  h_q, h_zero = quantize(expected_hidden, h_lo, h_hi)
  expected = h_q @ weights["fc1"]["kernel"] + weights["fc1"]["bias"]
  np.testing.assert_allclose(q.apply(q.packed, X), expected, rtol=1e-5, atol=1e-5)
  if not act_symmetric:  # post-ReLU: zero point 0, all 256 levels over [0, max]
    assert float(h_lo) >= 0 and h_zero == 0
    levels = np.unique(np.round(np.asarray(h_q) / (float(h_hi) / 255)))
    assert levels.max() > 200


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_served_integer_path_agrees_with_fake_quant(weight_bits):
  q = ptq(helpers.mlp_apply, PARAMS, weight_bits=weight_bits, act_bits=8, batches=BATCHES)
  served = serve(helpers.mlp_apply, q.packed, act_ranges=q.act_ranges)
  expected = q.apply(q.packed, X)
  tolerance = 1e-5 * float(jnp.abs(expected).max())  # int32 accumulation is exact; float sums round
  np.testing.assert_allclose(served(X), expected, atol=tolerance, rtol=1e-5)


@pytest.mark.parametrize("act_symmetric", [False, True])
def test_served_graph_uses_int8_dots_and_never_int4(act_symmetric):
  q = ptq(helpers.mlp_apply, PARAMS, weight_bits=4, act_bits=8, act_symmetric=act_symmetric, batches=BATCHES)
  run = serve(helpers.mlp_apply, q.packed, act_ranges=q.act_ranges, act_symmetric=act_symmetric)
  hlo = jax.jit(lambda p, x: serve(helpers.mlp_apply, p, act_ranges=q.act_ranges, act_symmetric=act_symmetric)(x))
  hlo = hlo.lower(q.packed, X).as_text()
  dots = re.findall(r"stablehlo.dot_general[^\n]*", hlo)
  int8 = [d for d in dots if "xi8>" in d]
  assert len(int8) == 2 and all("-> tensor<" in d and "xi32>" in d for d in int8)
  # asymmetric codes: the zero-point correction rides along as one more example of ones
  assert len(dots) == 2
  rows = 16 if act_symmetric else 17
  assert all(f"tensor<{rows}x" in d.split(":")[-1] for d in int8), int8
  assert "i4>" not in hlo
  np.testing.assert_allclose(run(X), q.apply(q.packed, X), rtol=1e-5, atol=1e-5 * float(jnp.abs(run(X)).max()))


def test_weight_only_serving_and_conv_model():
  from flax import nnx

  apply_fn, variables = M.nnx_apply(M.Inception(nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  q = ptq(apply_fn, variables, weight_bits=8, act_bits=8, batches=[x])
  served = serve(apply_fn, q.packed, act_ranges=q.act_ranges)
  expected = q.apply(q.packed, x)
  np.testing.assert_allclose(served(x), expected, atol=1e-4 * float(jnp.abs(expected).max()))
  weight_only = serve(apply_fn, q.packed, act_bits=None)
  np.testing.assert_allclose(weight_only(x), apply_fn(jc.export.materialize_tree(q.packed), x), rtol=1e-5, atol=1e-5)


def test_activation_rule_dynamic_and_qat_gradient():
  f = graph.rewrite(helpers.mlp_apply, activation_rule(QuantSpec(4)))

  def reference(params, x):  # Jacob et al.'s fake quantization of each matmul's input, by hand
    n = len(params)
    for i in range(n):
      scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x)) / 7.0)  # 4 bits: codes -7..7, own range
      q = jnp.clip(jnp.round(x / scale), -7, 7) * scale
      x = x + jax.lax.stop_gradient(q - x)  # nothing is clipped: the identity straight through
      x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
      x = jax.nn.relu(x) if i < n - 1 else x
    return x

  y = f(PARAMS, X)
  np.testing.assert_allclose(y, reference(PARAMS, X), rtol=1e-5, atol=1e-6)
  assert not np.allclose(y, helpers.mlp_apply(PARAMS, X), atol=1e-2)
  r = jax.random.normal(jax.random.key(5), y.shape)
  grads = jax.grad(lambda p: (f(p, X) * r).sum())(PARAMS)
  expected = jax.grad(lambda p: (reference(p, X) * r).sum())(PARAMS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, expected)


def test_per_channel_on_a_scalar_and_bad_axes():
  from jaxcompress.quantization import granularity

  with pytest.raises(ValueError, match=r"per-channel or per-group quantization of the scalar leaf 's' is undefined"):
    granularity.per_channel(0).check((), "leaf 's'")
  with pytest.raises(ValueError, match=r"axis=3 is out of range for leaf 'fc0/kernel' of shape \(16, 64\)"):
    jc.quantization.fake_quant(8, per_channel=True, axis=3).init(PARAMS)
  with pytest.raises(ValueError, match="bits must be in"):
    jc.quantization.fake_quant(0)


def test_ptq_bad_input():
  with pytest.raises(ValueError, match="needs calibration batches"):
    ptq(helpers.mlp_apply, PARAMS, act_bits=8)
  with pytest.raises(ValueError, match="bits must be in"):
    ptq(helpers.mlp_apply, PARAMS, weight_bits=17)
  with pytest.raises(ValueError, match=r"group_size=5 does not divide axis 0 of size 16 of leaf 'fc0/kernel'"):
    ptq(helpers.mlp_apply, PARAMS, group_size=5)
  with pytest.raises(ValueError, match="act_bits must be in"):
    serve(helpers.mlp_apply, ptq(helpers.mlp_apply, PARAMS).packed, act_bits=16)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.inf) if x.ndim == 2 else x, PARAMS)
  with pytest.raises(ValueError, match="non-finite"):
    ptq(helpers.mlp_apply, bad)


def test_stochastic_rounding_is_unbiased():
  x = jnp.linspace(-1.0, 1.0, 101)
  keys = jax.random.split(jax.random.key(0), 4000)
  mean = jax.vmap(lambda k: stochastic_quantize(x, 3, k))(keys).mean(axis=0)
  # 3 bits: step 1/3; per-element std of the mean <= (1/6) / sqrt(4000) ~ 0.0026
  np.testing.assert_allclose(mean, x, atol=0.012)


def test_quantized_backward_pulls_back_the_quantized_error():
  w = PARAMS["fc0"]["kernel"]
  f = lambda p, x: x @ p["w"]
  key = jax.random.key(3)
  rule = quantized_backward(lambda s, a, w: s.compute(a, w), key, error_bits=4)
  g_out = jax.random.normal(jax.random.key(4), (16, 64))
  _, pull = jax.vjp(lambda w: graph.rewrite(f, rule)({"w": w}, X), w)
  (dw,) = pull(g_out)
  import zlib

  site_key = jax.random.fold_in(key, zlib.crc32(b"w") & 0x7FFFFFFF)
  g_q = stochastic_quantize(g_out, 4, jax.random.split(site_key)[0])
  np.testing.assert_allclose(dw, X.T @ g_q, rtol=1e-5, atol=1e-5)
  assert len(np.unique(np.asarray(g_q))) <= 15
  np.testing.assert_array_equal(graph.rewrite(f, rule)({"w": w}, X), X @ w)  # forward unchanged


def _conv_transpose():
  import flax.linen as nn

  m = nn.ConvTranspose(6, (3, 3), transpose_kernel=True)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  params = m.init(jax.random.key(1), x)["params"]
  return (lambda p, x: m.apply({"params": p}, x)), params, x


def test_conv_transpose_with_transpose_kernel_serves_in_int8():
  # The kernel (3, 3, features, in) reaches the op flipped and transposed: its per-channel
  # scales (axis -2) lie along the op's output features, so the op runs on int8 codes.
  apply, params, x = _conv_transpose()
  (site,) = jc.graph.trace(apply, params, x)
  assert site.leaf_axes == (0, 1, 3, 2)
  c = jc.quantization.fake_quant(8, per_channel=True, axis=-2)
  packed = c.pack(*c.init(params))
  assert packed["kernel"].scale.shape == (1, 1, 6, 1)
  served = jc.quantization.serve(apply, packed, act_bits=8)
  jaxpr = str(jax.make_jaxpr(served)(x))
  assert re.search(r"i32\[[\d,]*\] = dot_general", jaxpr)  # int8 codes (im2col) accumulated in int32
  reference = apply(jc.export.materialize_tree(packed), x)
  np.testing.assert_allclose(np.asarray(served(x)), np.asarray(reference), atol=0.03 * float(jnp.abs(reference).max()))
  weight_only = jc.quantization.serve(apply, packed, act_bits=None)
  np.testing.assert_allclose(np.asarray(weight_only(x)), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_scales_along_the_input_features_warn_and_serve_in_float():
  apply, params, x = _conv_transpose()
  c = jc.quantization.fake_quant(8, per_channel=True)  # axis -1: the kernel's input features here
  packed = c.pack(*c.init(params))
  served = jc.quantization.serve(apply, packed, act_bits=8)
  with pytest.warns(UserWarning, match=r"axis=-2 for int8"):
    out = served(x)
  assert not re.search(r"i32\[[\d,]*\] = (conv_general_dilated|dot_general)", str(jax.make_jaxpr(served)(x)))
  np.testing.assert_allclose(
    np.asarray(out), np.asarray(apply(jc.export.materialize_tree(packed), x)), rtol=0.05, atol=0.05
  )


@pytest.mark.parametrize(
  "x_shape,w_shape,kwargs",
  [
    (
      (2, 3, 9, 8),
      (5, 3, 2, 3),
      dict(
        window_strides=(2, 3),
        padding=((1, 2), (0, -1)),
        rhs_dilation=(1, 2),
        dimension_numbers=("NCHW", "OIHW", "NHWC"),
      ),
    ),
    ((2, 9, 3), (3, 3, 4), dict(window_strides=(2,), padding="VALID", dimension_numbers=("NWC", "WIO", "NCW"))),
  ],
)
def test_int8_conv_as_im2col_matmul_is_the_same_integers(x_shape, w_shape, kwargs):
  from jaxcompress.quantization._serve import int8_compute

  conv = lambda p, x: jax.lax.conv_general_dilated(x, p["w"], **kwargs)
  (site,) = graph.trace(conv, {"w": jnp.zeros(w_shape)}, jnp.zeros(x_shape))
  rng = np.random.default_rng(0)
  a, w = (jnp.asarray(rng.integers(-128, 128, size=s), jnp.int8) for s in (x_shape, w_shape))
  expected = jax.lax.conv_general_dilated(a.astype(jnp.int32), w.astype(jnp.int32), **kwargs)
  got = int8_compute(site, a, w)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda a, w: int8_compute(site, a, w))(a, w))
