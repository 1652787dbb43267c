import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import uniform
from tests import helpers


def reference(x, bits, channel_axis=None):
  """clip(round(x / scale), -qmax, qmax) * scale with scale = max|x| / qmax, in NumPy."""
  q = 2 ** (bits - 1) - 1
  axes = None if channel_axis is None else tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
  scale = np.maximum(np.abs(x).max(axis=axes, keepdims=True) / q, np.finfo(np.float32).tiny)
  return (np.clip(np.round(x / scale), -q, q) * scale).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_apply_matches_the_formula(bits, per_channel):
  params = helpers.mlp_params()
  c = jc.quantization.fake_quant(bits, per_channel=per_channel)
  trainable, state = c.init(params)
  out = c.apply(trainable, state)
  for layer in ("fc0", "fc1"):
    w = np.asarray(params[layer]["kernel"])
    np.testing.assert_allclose(
      out[layer]["kernel"], reference(w, bits, -1 if per_channel else None), rtol=1e-6, atol=1e-7
    )
    levels = np.unique(np.asarray(out[layer]["kernel"])).size
    assert levels <= (2**bits - 1) * (w.shape[-1] if per_channel else 1)


def test_round_half_to_even():
  # scale = 3 / 3 = 1 at 3 bits (qmax 3): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0
  x = jnp.array([[0.5, 1.5, 2.5, -0.5, 3.0]])
  y = uniform.fake_quant(x, uniform.symmetric_scale(x, 3), 3)
  assert y.tolist() == [[0.0, 2.0, 2.0, 0.0, 3.0]]


def test_constant_and_zero_tensors_stay_finite():
  for x in (jnp.zeros((4, 4)), jnp.full((4, 4), 2.5)):
    c = jc.quantization.fake_quant(4, per_channel=True)
    p, s = c.init({"w": x})
    out = c.apply(p, s)["w"]
    assert jnp.all(jnp.isfinite(out))
    np.testing.assert_allclose(out, x)
  # one all-zero channel among live ones
  x = jnp.array([[1.0, 0.0], [-2.0, 0.0]])
  p, s = jc.quantization.fake_quant(8, per_channel=True).init({"w": x})
  np.testing.assert_allclose(jc.quantization.fake_quant(8, per_channel=True).apply(p, s)["w"], x, atol=1e-2)


def test_straight_through_gradient():
  x = jnp.array([-3.0, -1.0, 0.2, 1.0, 3.0])
  scale = jnp.float32(1.0 / 3.0)  # qmax 3 at 3 bits covers [-1, 1]; +-3 are clipped
  g = jax.grad(lambda x: jnp.sum(uniform.fake_quant(x, scale, 3) * jnp.arange(1.0, 6.0)))(x)
  assert g.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
  # with the max-derived scale every weight is in range, the largest included
  c = jc.quantization.fake_quant(4)
  p, s = c.init({"w": jnp.array([[0.3, -1.7], [1.1, 0.05]])})
  grad = jax.grad(lambda p: jnp.sum(c.apply(p, s)["w"]))(p)
  assert grad["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize("bits,expected_code_bytes", [(8, 512), (4, 256), (3, 192)])
def test_pack_stores_codes_at_their_width(bits, expected_code_bytes):
  c = jc.quantization.fake_quant(bits, per_channel=True)
  params, state = c.init(helpers.mlp_params())
  q = c.pack(params, state)["fc0"]["kernel"]
  assert isinstance(q, jc.export.QArray) and q.bits == bits
  assert q.codes.nbytes == expected_code_bytes  # 512 weights
  assert q.nbytes == expected_code_bytes + 32 * 4  # one float32 scale per output channel
  np.testing.assert_array_equal(q.materialize(), c.apply(params, state)["fc0"]["kernel"])
