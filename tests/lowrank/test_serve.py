"""Serving factorized kernels: the factors' ops give the dense model's outputs with fewer FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress import export, lowrank
from tests import helpers
from tests.lowrank.test_lowrank import CONV, _kernel


def test_dense_sites_run_x_u_then_v():
  c = lowrank.svd(4)
  packed = c.pack(*c.init(helpers.mlp_params()))
  x = helpers.batch(n=8)[0]
  served = lowrank.serve(helpers.mlp_apply, packed)(x)
  dense = helpers.mlp_apply(export.materialize_tree(packed), x)
  np.testing.assert_allclose(served, dense, atol=1e-5)
  f = jc.graph.flops(lowrank.factorized(helpers.mlp_apply), packed, x)
  assert f["flops"] == 2 * 8 * 4 * ((16 + 32) + (32 + 8))  # r(m + n) per row and layer
  assert jc.graph.flops(helpers.mlp_apply, helpers.mlp_params(), x)["flops"] == 2 * 8 * (16 * 32 + 32 * 8)


def _conv(params, x, strides, padding, dilation):
  y = jax.lax.conv_general_dilated(
    x, params["k"], strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return y + params["b"]


@pytest.mark.parametrize("kind", sorted(CONV))
def test_conv_sites_run_the_decomposed_sequence(kind):
  c = CONV[kind][0]()
  params = {"k": _kernel(), "b": jnp.zeros(6)}
  packed = c.pack(*c.init(params))
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
  dense = export.materialize_tree(packed)
  for strides, padding, dilation in (((1, 1), "SAME", (1, 1)), ((2, 1), ((1, 0), (2, 1)), (1, 2))):
    fn = lambda p, x, s=strides, pad=padding, d=dilation: _conv(p, x, s, pad, d)
    np.testing.assert_allclose(lowrank.serve(fn, packed)(x), fn(dense, x), atol=1e-4)
  fn = lambda p, x: _conv(p, x, (1, 1), "SAME", (1, 1))
  factored = jc.graph.flops(lowrank.factorized(fn), packed, x)["flops"]
  if kind != "cp":  # CP rank 12 > 6 channels: no fewer FLOPs at this toy size
    assert factored < jc.graph.flops(fn, params, x)["flops"]
  sites = [row[1] for row in jc.graph.flops(lowrank.factorized(fn), packed, x)["sites"]]
  expected = {  # the first 1x1 stage is a matmul over the channel axis; CP's depthwise stages are multiply-adds
    "spatial_svd": ["conv_general_dilated"] * 2,
    "tucker2": ["dot_general", "conv_general_dilated", "conv_general_dilated"],
    "cp": ["dot_general", "conv_general_dilated"],
  }
  assert sites == expected[kind]


def test_a_transposed_use_falls_back_to_the_dense_kernel():
  c = lowrank.svd(3)
  packed = c.pack(*c.init({"w": jax.random.normal(jax.random.key(1), (12, 10))}))
  x = jnp.ones((2, 10))
  fn = lambda p, x: x @ p["w"].T
  np.testing.assert_allclose(lowrank.serve(fn, packed)(x), x @ packed["w"].materialize().T, atol=1e-5)


def test_tucker2_is_served_at_its_own_ranks():
  k = jax.random.normal(jax.random.key(3), (3, 3, 16, 16))
  c = lowrank.tucker2((15, 5))
  packed = c.pack(*c.init({"k": k, "b": jnp.zeros(16)}))
  x = jax.random.normal(jax.random.key(4), (2, 5, 5, 16))
  fn = lambda p, x: _conv(p, x, (1, 1), "SAME", (1, 1))
  np.testing.assert_allclose(lowrank.serve(fn, packed)(x), fn(export.materialize_tree(packed), x), atol=1e-4)
  pixels, taps = 2 * 5 * 5, 2 * 13 * 13  # SAME 3x3 on 5x5: 13 valid taps per row of outputs, squared
  expected = 2 * (pixels * 16 * 15 + taps * 15 * 5 + pixels * 5 * 16)  # first 16 -> 15, core 15 -> 5, last 5 -> 16
  assert jc.graph.flops(lowrank.factorized(fn), packed, x)["flops"] == expected


def test_serve_without_its_xla_option_where_jaxlib_rejects_it_and_on_dense_params(monkeypatch):
  from jaxcompress.lowrank import _serve

  c = lowrank.spatial_svd(2)
  params = {"k": _kernel(), "b": jnp.arange(6.0)}
  packed = c.pack(*c.init(params))
  x = jax.random.normal(jax.random.key(5), (2, 6, 5, 4))
  fn = lambda p, x: _conv(p, x, (1, 1), "SAME", (1, 1))
  want = fn(export.materialize_tree(packed), x)
  np.testing.assert_allclose(lowrank.serve(fn, params)(x), fn(params, x), atol=1e-5)  # dense params: the model
  monkeypatch.setattr(_serve, "_CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})  # as a jaxlib without it
  np.testing.assert_allclose(lowrank.serve(fn, packed)(x), want, atol=1e-4)
  monkeypatch.setattr(_serve, "_CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_VALUE"})
  np.testing.assert_allclose(lowrank.serve(fn, packed)(x), want, atol=1e-4)
