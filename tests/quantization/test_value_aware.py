"""Value-aware quantization (Park, Yoo & Vajda 2018): view, exact bytes, save/load, backward."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress import graph


def ref_value_aware(w, bits, fraction):
  """NumPy: the k largest |w| kept; the rest on max|rest|/(2^(b-1)-1), rounded half to even."""
  k = round(fraction * w.size)
  order = np.argsort(-np.abs(w).ravel(), kind="stable")
  mask = np.zeros(w.size, bool)
  mask[order[:k]] = True
  mask = mask.reshape(w.shape)
  rest = np.where(mask, 0, w)
  qmax = 2 ** (bits - 1) - 1
  scale = np.float32(np.abs(rest).max() / qmax)
  codes = np.clip(np.round(rest * (np.float32(1) / scale)), -qmax, qmax)
  return mask, np.where(mask, w, codes * scale).astype(np.float32)


@pytest.fixture(scope="module")
def packed():
  w = np.array(jax.random.normal(jax.random.key(0), (50, 40)) * 0.1)
  w[3, 7], w[10, 2] = 5.0, -4.0
  c = jc.quantization.value_aware(4, 0.01, outlier_dtype="float16")
  params, state = c.init({"w": jnp.asarray(w)})
  return w, c.apply(params, state)["w"], c.pack(params, state)["w"]


def test_view_matches_the_reference():
  w = np.asarray(jax.random.normal(jax.random.key(1), (30, 20)))
  c = jc.quantization.value_aware(3, 0.03)
  params, state = c.init({"w": jnp.asarray(w)})
  mask, ref = ref_value_aware(w, 3, 0.03)
  np.testing.assert_allclose(np.asarray(c.apply(params, state)["w"]), ref, rtol=1e-6)
  assert len(np.unique(ref[~mask])) <= 7


def test_bytes_are_exact(packed):
  w, _, leaf = packed
  assert isinstance(leaf, jc.export.OutlierArray)
  assert leaf.outliers.num_stored == 20 and leaf.outliers.values.dtype == np.float16
  codes = math.ceil(w.size * 4 / 8)
  assert leaf.base.nbytes == codes + 4  # 4-bit codes + one float32 scale
  assert leaf.nbytes == codes + 4 + 20 * 2 + leaf.outliers.positions.nbytes
  assert leaf.nbytes < w.size  # under a byte per weight


def test_outliers_are_exact_after_save_and_load(packed, tmp_path):
  w, view, leaf = packed
  np.testing.assert_array_equal(np.asarray(leaf.materialize()), np.asarray(view))
  jc.export.save(tmp_path / "m.safetensors", {"w": leaf})
  back = jc.export.load(tmp_path / "m.safetensors")["w"]
  assert isinstance(back, jc.export.OutlierArray)
  present = np.asarray(back.outliers.present())
  top = np.argsort(-np.abs(w).ravel(), kind="stable")[:20]
  np.testing.assert_array_equal(np.flatnonzero(present), np.sort(top))
  np.testing.assert_array_equal(
    np.asarray(back.materialize())[present], w[present].astype(np.float16).astype(np.float32)
  )
  np.testing.assert_array_equal(np.asarray(back.materialize()), np.asarray(view))
  mask = np.asarray(jax.random.bernoulli(jax.random.key(2), 0.5, w.shape))
  pruned = jc.export.prune(leaf, mask)
  np.testing.assert_array_equal(np.asarray(pruned.materialize()), np.where(mask, np.asarray(view), 0))


def test_inconsistent_leaf_is_refused(tmp_path, packed):
  import dataclasses

  _, _, leaf = packed
  bad = dataclasses.replace(leaf, outliers=jc.export.from_mask(np.ones((3, 3), np.float32), np.eye(3, dtype=bool)))
  with pytest.raises(ValueError, match="outliers"):
    jc.export.save(tmp_path / "bad.safetensors", {"w": bad})


def test_value_aware_backward_weight_gradient_uses_the_quantized_activation():
  x = np.array(jax.random.normal(jax.random.key(3), (8, 25)))
  x[0, 0] = 30.0  # an outlier kept exactly
  w = jnp.asarray(jax.random.normal(jax.random.key(4), (25, 6)))
  g = jax.random.normal(jax.random.key(5), (8, 6))
  rule = jc.quantization.value_aware_backward(lambda s, a, w: s.compute(a, w), bits=4, outlier_fraction=0.01)
  f = graph.rewrite(lambda p, x: x @ p["w"], rule)
  out, pull = jax.vjp(lambda w, x: f({"w": w}, x), w, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.asarray(x) @ w))  # forward in full precision
  dw, dx = pull(g)
  mask, x_hat = ref_value_aware(x, 4, 0.01)
  assert mask[0, 0]
  np.testing.assert_allclose(np.asarray(dw), x_hat.T @ np.asarray(g), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(g @ w.T), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [({"bits": 1}, "bits"), ({"outlier_fraction": 1.0}, "outlier_fraction"), ({"outlier_dtype": "bfloat16"}, "outlier")],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jc.quantization.value_aware(**kwargs)
