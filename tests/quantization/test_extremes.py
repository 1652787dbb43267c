"""No overflow from finite extremes (issue 12, item 12).

Every weight quantizer (through ``init``/``apply`` and ``pack`` + ``export.materialize``)
and every gradient compressor gets the inputs below in float16, bfloat16 and float32:
zeros, a constant, denormals, huge values (1e30; 6e4 in float16), ± the largest finite
value of the dtype, and one outlier among small values. The outputs must be finite, pack
must still materialize to what ``apply`` shows, zeros must stay zeros, and at ± the
largest finite value each weight must keep its sign and at least half its magnitude
(within one step of itself for these grids). Each case is one tree holding every
(input, dtype) pair as a leaf, so a failure names the leaf: ``<dtype>/<input>`` (one
call per quantizer keeps the file fast: eager ops compile once per dtype).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

q = jc.quantization
gc = jc.quantization.gradient_compression
DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}
SHAPE = (8, 4)
_SIGNS = np.where(np.random.default_rng(0).random(SHAPE) < 0.5, -1.0, 1.0)
_SMALL = np.random.default_rng(1).normal(size=SHAPE) * 0.01


def _inputs(dtype):
  info = jnp.finfo(dtype)
  huge = 6e4 if dtype == jnp.float16 else 1e30
  magnitudes = np.linspace(0.5, 1.0, _SIGNS.size).reshape(SHAPE)
  outlier = _SMALL.copy()
  outlier[3, 1] = 2e19 if dtype != jnp.float16 else 6e4
  arrays = {
    "zeros": np.zeros(SHAPE),
    "constant": np.full(SHAPE, 0.3),
    "denormals": _SIGNS * np.arange(1, _SIGNS.size + 1).reshape(SHAPE) * float(info.smallest_subnormal),
    "huge": _SIGNS * magnitudes * huge,
    "max": _SIGNS * float(info.max),
    "outlier": outlier,
  }
  return {name: jnp.asarray(a, jnp.float32).astype(dtype) for name, a in arrays.items()}


def _tree():
  return {d: _inputs(dtype) for d, dtype in DTYPES.items()}


WEIGHT_QUANTIZERS = {
  "fake_quant8": lambda: q.fake_quant(8),
  "fake_quant8_affine": lambda: q.fake_quant(8, symmetric=False),
  "binary_connect_scaled": lambda: q.binary_connect(scale=True),
  "xnor_net": lambda: q.xnor_net(),
  "twn": lambda: q.twn(),
  "ttq": lambda: q.ttq(),
  "power_of_two": lambda: q.power_of_two(7),
  "kmeans2": lambda: q.kmeans(2, iterations=3),
  "lsq2": lambda: q.lsq(2),
  "lsq8_per_channel": lambda: q.lsq(8, per_channel=True),
  "pact4": lambda: q.pact(4),
  "pact8_per_channel": lambda: q.pact(8, per_channel=True),
  "binary_connect": lambda: q.binary_connect(),
  "fake_quant4_per_group": lambda: q.fake_quant(4, group_size=4),
  "fake_quant4_affine_per_group": lambda: q.fake_quant(4, symmetric=False, group_size=4),
  "fake_quant8_pytorch": lambda: q.fake_quant(8, per_channel=True, convention="pytorch"),
  "kmeans2_per_channel": lambda: q.kmeans(2, iterations=3, per_channel=True),
  "ttq_per_channel": lambda: q.ttq(per_channel=True),
  "power_of_two_per_channel": lambda: q.power_of_two(7, per_channel=True),
  "fake_quant1_affine": lambda: q.fake_quant(1, symmetric=False),
}


UNSCALED = {"binary_connect"}
ZERO_AND_ONE_LEVEL = {"fake_quant1_affine"}  # 1-bit affine keeps 0 exact, so one level is 0


def _f32(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32))


@pytest.mark.parametrize("name", sorted(WEIGHT_QUANTIZERS))
def test_weight_quantizers_stay_finite_at_extremes(name):
  c = WEIGHT_QUANTIZERS[name]()
  params = _tree()
  trainable, state = c.init(params)
  out = c.apply(trainable, state)
  packed = c.pack(trainable, state)
  for d in DTYPES:
    for kind, w in params[d].items():
      where = f"{name}: {d}/{kind}"
      y, m = _f32(out[d][kind]), _f32(jc.export.materialize(packed[d][kind]))
      assert out[d][kind].dtype == w.dtype, where
      assert np.isfinite(y).all(), f"{where}: apply gives {y[~np.isfinite(y)][:4]}"
      assert np.isfinite(m).all(), f"{where}: pack gives {m[~np.isfinite(m)][:4]}"
      np.testing.assert_array_equal(m, y, err_msg=f"{where}: pack -> materialize != apply")
      if name in UNSCALED:  # codes are ±1 whatever the input: sign(0) = +1 (Courbariaux et al.)
        x = _f32(w)
        tiny = np.abs(x) < np.finfo(np.float32).tiny  # XLA-CPU flushes float32 subnormals: -tiny reads as 0
        np.testing.assert_array_equal(y, np.where((x >= 0) | tiny, 1.0, -1.0), err_msg=where)
        continue
      if name in ZERO_AND_ONE_LEVEL and kind == "max":
        # Two levels, one of them 0: [-m, m] cannot keep both signs. Where 2m overflows the
        # scale saturates at m (levels {-m, 0}); else the standard formula gives scale 2m,
        # zero point round(-0.5) = 0 and levels {0, 2m}, so ±m both round to 0 (as torch's).
        # The claim here is what is checked above: finite, and pack == apply.
        continue
      if kind == "zeros":
        np.testing.assert_array_equal(y, 0.0, err_msg=where)
      if kind == "max":
        x = _f32(w)
        assert (np.sign(y) == np.sign(x)).all(), f"{where}: signs flipped: {y}"
        assert (np.abs(y) >= np.abs(x) / 2).all(), f"{where}: magnitudes lost: {y}"


GRADIENT_COMPRESSORS = {
  "qsgd": lambda: gc.qsgd(16, axis_name="d"),
  "terngrad": lambda: gc.terngrad(axis_name="d"),
  "sign_error_feedback": lambda: gc.sign_error_feedback(axis_name="d"),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_COMPRESSORS))
def test_gradient_compressors_stay_finite_at_extremes(name):
  transform = GRADIENT_COMPRESSORS[name]()
  grads = _tree()
  kinds = list(grads["float32"])
  # One leaf per dtype holding every input, [input, device, 8, 4]: the outer vmap keeps each
  # input its own tensor (its own norm or scale); two devices see the same gradient.
  stacked = {d: jnp.stack([jnp.stack([grads[d][k]] * 2) for k in kinds]) for d in DTYPES}

  def step(g):
    state = transform.init(g)
    out, state = transform.update(g, state)
    return transform.update(g, state)[0], out, state.error  # a second step sees the error feedback

  second, first, error = jax.vmap(jax.vmap(step, axis_name="d"))(stacked)
  for d in DTYPES:
    assert first[d].dtype == second[d].dtype == grads[d]["zeros"].dtype, f"{name}: {d}"
    for i, kind in enumerate(kinds):
      where = f"{name}: {d}/{kind}"
      for label, tree in (("step 1", first), ("step 2", second)) + ((("error", error),) if error is not None else ()):
        y = _f32(tree[d][i])
        assert np.isfinite(y).all(), f"{where}: {label} gives {y[~np.isfinite(y)][:4]}"
      y = _f32(first[d][i, 0])
      if kind == "zeros":
        np.testing.assert_array_equal(y, 0.0, err_msg=where)
      if kind == "max":
        x = _f32(grads[d][kind])
        assert ((np.sign(y) == np.sign(x)) | (y == 0)).all(), f"{where}: signs flipped: {y}"
