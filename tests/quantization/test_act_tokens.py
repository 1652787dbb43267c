"""Activation quantization over tokens: ``ptq``'s calibration ``token_mask`` and dynamic per-token scales."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import export, graph, quantization
from jaxcompress.quantization import QuantSpec

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)).astype(np.float32)
PARAMS = {"w": jnp.asarray(W)}


def model(p, x, mask):
  del mask
  return x @ p["w"]


def _batch(padding_value: float):
  x = RNG.normal(size=(2, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.int32)
  x[mask == 0] = padding_value  # padding rows far outside the real tokens' range
  return jnp.asarray(x), jnp.asarray(mask)


BATCHES = [_batch(9.0), _batch(-7.0)]


def test_ptq_token_mask_ranges_are_the_real_tokens_min_max():
  q = quantization.ptq(model, PARAMS, weight_bits=8, act_bits=8, batches=BATCHES, token_mask=1)
  real = np.concatenate([np.asarray(x)[np.asarray(m).astype(bool)] for x, m in BATCHES])
  ((lo, hi),) = q.act_ranges.values()
  np.testing.assert_allclose([float(lo), float(hi)], [real.min(), real.max()], rtol=1e-6)
  # without the mask the padding sets the range
  unmasked = quantization.ptq(model, PARAMS, weight_bits=8, act_bits=8, batches=BATCHES)
  ((lo, hi),) = unmasked.act_ranges.values()
  assert (float(lo), float(hi)) == (-7.0, 9.0)
  # a callable mask is the same as the index
  by_fn = quantization.ptq(model, PARAMS, weight_bits=8, act_bits=8, batches=BATCHES, token_mask=lambda b: b[1])
  assert [float(v) for v in next(iter(by_fn.act_ranges.values()))] == [
    float(v) for v in next(iter(q.act_ranges.values()))
  ]


def test_ptq_token_mask_padding_only_raises_naming_it():
  x, m = BATCHES[0]
  with pytest.raises(ValueError, match=r"token_mask=1 marks every token of every batch as padding"):
    quantization.ptq(model, PARAMS, act_bits=8, batches=[(x, jnp.zeros_like(m))], token_mask=1)
  with pytest.raises(ValueError, match=r"token_mask of shape \(2, 4\) does not lead the input"):
    quantization.ptq(model, PARAMS, act_bits=8, batches=[(x, m[:, :4])], token_mask=1)
  with pytest.raises(ValueError, match="pass act_bits too"):
    quantization.ptq(model, PARAMS, token_mask=1)


def _per_token_reference(x, w, bits=8):
  qmax = 2 ** (bits - 1) - 1
  s = np.maximum(np.abs(x).max(-1, keepdims=True), np.finfo(np.float32).tiny) / qmax  # one scale per token
  return (np.clip(np.round(x / s), -qmax, qmax) * s) @ w


def test_per_token_dynamic_matches_the_formula():
  x = np.asarray(BATCHES[0][0]) * np.array([1.0, 100.0, 0.01, 1.0, 1.0], np.float32)[None, :, None]
  f = graph.rewrite(model, quantization.activation_rule(QuantSpec(8), per_token=True))
  got = np.asarray(f(PARAMS, jnp.asarray(x), None))
  np.testing.assert_allclose(got, _per_token_reference(x, W), rtol=1e-5, atol=1e-6)
  per_tensor = np.asarray(
    graph.rewrite(model, quantization.activation_rule(QuantSpec(8)))(PARAMS, jnp.asarray(x), None)
  )
  small = (slice(None), 2)  # the tokens scaled by 0.01: per tensor rounds them to zero, per token resolves them
  assert np.abs(per_tensor[small] - (x @ W)[small]).max() > 10 * np.abs(got[small] - (x @ W)[small]).max()
  # through ptq: the same rule, with the quantized weights
  q = quantization.ptq(model, PARAMS, weight_bits=8, act_bits=8, act_symmetric=True, act_per_token=True)
  assert q.act_ranges is None
  wq = np.asarray(export.materialize_tree(q.packed)["w"])
  np.testing.assert_allclose(
    np.asarray(q.apply(q.packed, jnp.asarray(x), None)), _per_token_reference(x, wq), rtol=1e-5, atol=1e-6
  )


def test_per_token_bad_arguments():
  with pytest.raises(ValueError, match="per_token=True scales are dynamic"):
    quantization.activation_rule(QuantSpec(8), {"w": (0.0, 1.0)}, per_token=True)
  with pytest.raises(ValueError, match="act_per_token=True scales are dynamic"):
    quantization.ptq(model, PARAMS, act_bits=8, act_per_token=True, batches=BATCHES)
  with pytest.raises(ValueError, match="integer=True"):
    quantization.quantize_activations(8, per_token=True, integer=True)
  conv = lambda p, x: __import__("jax").lax.conv_general_dilated(x, p["k"], (1, 1), "SAME")
  f = graph.rewrite(conv, quantization.activation_rule(QuantSpec(8), per_token=True))
  with pytest.raises(ValueError, match="per_token activation scales need a matmul"):
    f({"k": jnp.ones((1, 1, 3, 3))}, jnp.ones((1, 1, 4, 4)))
