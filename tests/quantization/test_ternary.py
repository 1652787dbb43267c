"""TWN and TTQ against the papers' thresholds, scales and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import _ternary as ternary


def _w(seed=0, shape=(8, 5)):
  return jax.random.normal(jax.random.key(seed), shape) * 0.3


def test_twn_threshold_and_scale_match_the_paper():
  w = _w()
  wn = np.abs(np.asarray(w))
  delta = 0.7 * wn.mean()
  alpha = wn[wn > delta].mean()
  c = jc.quantization.twn()
  p, s = c.init({"k": w})
  expected = alpha * np.where(np.asarray(w) > delta, 1, np.where(np.asarray(w) < -delta, -1, 0))
  np.testing.assert_allclose(c.apply(p, s)["k"], expected, rtol=1e-6)
  grad = jax.grad(lambda p: (c.apply(p, s)["k"] * 3.0).sum())(p)["k"]
  np.testing.assert_array_equal(grad, np.full(w.shape, 3.0))  # straight-through
  packed = c.pack(p, s)["k"]
  assert isinstance(packed, jc.export.QArray) and packed.bits == 2
  assert packed.codes.nbytes == (w.size * 2 + 7) // 8
  np.testing.assert_array_equal(packed.materialize(), c.apply(p, s)["k"])


def test_twn_per_channel_and_no_weight_above_threshold():
  w = _w(1)
  c = jc.quantization.twn(per_channel=True)
  p, s = c.init({"k": w})
  wn = np.asarray(w)
  for j in range(w.shape[1]):
    col = np.abs(wn[:, j])
    delta = 0.7 * col.mean()
    np.testing.assert_allclose(
      np.abs(np.asarray(c.apply(p, s)["k"])[col > delta, j]), col[col > delta].mean(), rtol=1e-6
    )
  delta = ternary.twn_threshold(jnp.ones((2, 2)), 2.0)  # 2 * mean = 2 > every |w|
  assert ternary.twn_scale(jnp.ones((2, 2)), delta).tolist() == [[0.0]]


def test_ttq_init_forward_and_gradients_match_the_paper():
  w = _w(2)
  wn = np.asarray(w)
  delta = 0.05 * np.abs(wn).max()
  pos_i, neg_i = wn > delta, wn < -delta
  c = jc.quantization.ttq()
  p, s = c.init({"k": w, "b": jnp.zeros(3)})
  node = p["k"]
  assert isinstance(node, ternary.TTQParams)
  np.testing.assert_allclose(node.positive, wn[pos_i].mean(), rtol=1e-6)
  np.testing.assert_allclose(node.negative, -wn[neg_i].mean(), rtol=1e-6)
  p["k"] = node._replace(positive=jnp.float32(0.4), negative=jnp.float32(0.7))
  out = np.asarray(c.apply(p, s)["k"])
  np.testing.assert_array_equal(out, np.where(pos_i, 0.4, np.where(neg_i, -0.7, 0.0)).astype(np.float32))
  g = np.asarray(jax.random.normal(jax.random.key(5), w.shape))
  grads = jax.grad(lambda p: (c.apply(p, s)["k"] * g).sum())(p)["k"]
  np.testing.assert_allclose(grads.positive, g[pos_i].sum(), rtol=1e-5)  # Eq. 7
  np.testing.assert_allclose(grads.negative, -g[neg_i].sum(), rtol=1e-5)  # chain rule for -W_n
  np.testing.assert_allclose(grads.weight, np.where(pos_i, 0.4 * g, np.where(neg_i, 0.7 * g, g)), rtol=1e-6)  # Eq. 8
  packed = c.pack(p, s)["k"]
  assert isinstance(packed, jc.export.CodebookArray) and packed.indices.bits == 2
  np.testing.assert_array_equal(packed.codebook, np.array([-0.7, 0.0, 0.4], np.float32))
  np.testing.assert_array_equal(packed.materialize(), out)


def test_ttq_init_scale_and_bad_input():
  p, _ = jc.quantization.ttq(init_scale=0.25).init({"k": _w()})
  assert float(p["k"].positive) == float(p["k"].negative) == 0.25
  with pytest.raises(ValueError, match=r"init_scale must be in \(0.0, inf\], got -0.5"):
    jc.quantization.ttq(init_scale=-0.5)
  for factory in (jc.quantization.ttq, jc.quantization.twn):
    for bad in (0.0, -0.7):
      with pytest.raises(ValueError, match=f"threshold_factor must be .* got {bad}"):
        factory(bad)
  with pytest.raises(ValueError, match="pass the tree that init returned"):
    c = jc.quantization.ttq()
    _, s = c.init({"k": _w()})
    c.apply({"k": _w()}, s)  # the model's tree, not the trainable one
