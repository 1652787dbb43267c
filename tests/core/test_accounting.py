import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.core import accounting
from tests import helpers


def xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


def test_report_of_dense_tree():
  r = accounting.report(helpers.mlp_params())
  assert r.size == 16 * 32 + 32 + 32 * 8 + 8
  assert r.bytes == 4 * r.size and r.compression_ratio == 1.0
  assert [row.kind for row in r.leaves] == ["dense"] * 4
  assert "compression ratio vs dense float32: 1.00x" in str(r)


def test_report_of_packed_tree_counts_stored_bytes():
  c = jc.chain(jc.pruning.magnitude(0.75), jc.quantization.fake_quant(4))
  params, state = c.init(helpers.mlp_params())
  packed = c.pack(params, state)
  r = accounting.report(packed)
  rows = {row.path: row for row in r.leaves}
  k = rows["fc0/kernel"]
  assert k.kind == "QArray(4b, sparse)"
  assert k.sparsity == pytest.approx(0.75)
  # sparse codes + one float32 scale; at most 128 4-bit codes + a 512-bit mask
  assert k.bytes == packed["fc0"]["kernel"].codes.nbytes + 4
  assert k.bytes <= 128 * 4 // 8 + 512 // 8 + 4
  assert k.bits_per_weight == pytest.approx(8 * k.bytes / 512)
  assert r.bytes == sum(row.bytes for row in r.leaves)
  assert r.compression_ratio == pytest.approx(r.dense_fp32_bytes / r.bytes)


def test_dense_flops_equal_xla():
  x, w, b = jnp.ones((8, 64)), jnp.ones((64, 300)), jnp.ones(300)
  assert accounting.dense_flops(8, 64, 300) == xla_flops(lambda x, w, b: x @ w + b, x, w, b)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups,kin", [(1, 3), (3, 1)])  # plain and depthwise
def test_conv_flops_equal_xla(padding, stride, groups, kin):
  x, k = jnp.ones((2, 9, 8, 3)), jnp.ones((3, 3, kin, 6))

  def conv(x, k):
    return jax.lax.conv_general_dilated(
      x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )

  flops, out_shape = accounting.conv_flops(
    x.shape, k.shape, strides=stride, padding=padding, feature_group_count=groups, bias=False, count_padding=False
  )
  assert out_shape == jax.eval_shape(conv, x, k).shape
  assert flops == xla_flops(conv, x, k)
  paper, _ = accounting.conv_flops(
    x.shape, k.shape, strides=stride, padding=padding, feature_group_count=groups, bias=False
  )
  assert paper >= flops and (padding == "SAME" or paper == flops)


def test_lenet_mlp_flops_within_tolerance_of_xla():
  """A whole model: XLA also counts ReLUs, so allow 2%."""
  params = helpers.mlp_params(sizes=(64, 300, 100, 10))
  x = jnp.ones((32, 64))
  analytic = sum(accounting.dense_flops(32, *params[f"fc{i}"]["kernel"].shape) for i in range(3))
  assert xla_flops(helpers.mlp_apply, params, x) == pytest.approx(analytic, rel=0.02)


def test_conv_flops_bad_input():
  with pytest.raises(ValueError, match="kernel input channels 2 x feature_group_count 1 != input channels 3"):
    accounting.conv_flops((1, 8, 8, 3), (3, 3, 2, 4))
  with pytest.raises(ValueError, match="padding must be"):
    accounting.conv_flops((1, 8, 8, 3), (3, 3, 3, 4), padding="FULL")
  with pytest.raises(ValueError, match="larger than the input"):
    accounting.conv_flops((1, 2, 2, 3), (3, 3, 3, 4), padding="VALID")


def test_report_handles_all_zero_leaves():
  r = accounting.report({"w": np.zeros((4, 4), np.float32)})
  assert r.leaves[0].sparsity == 1.0 and r.nonzeros == 0
