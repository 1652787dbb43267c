"""Compact layers against NumPy references of the papers' definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcompress import compact


def np_conv(x, w, b=None, stride=1, pad=0, groups=1):
  """NHWC convolution with an (h, w, in / groups, out) kernel, symmetric padding."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  n, h, wd, _ = x.shape
  kh, kw, cig, cout = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  out = np.zeros((n, ho, wo, cout))
  cog = cout // groups
  for g in range(groups):
    xs, ws = xp[..., g * cig : (g + 1) * cig], w[..., g * cog : (g + 1) * cog]
    for i in range(kh):
      for j in range(kw):
        patch = xs[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
        out[..., g * cog : (g + 1) * cog] += patch @ ws[i, j]
  return out if b is None else out + np.asarray(b)


relu = lambda v: np.maximum(v, 0)
X = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 6, 4)))


def _conv(unit, x, stride=1, groups=1):
  k = unit.conv.kernel.get_value()
  return np_conv(x, k, unit.conv.bias.get_value(), stride, (k.shape[0] - 1) // 2, groups)


def test_channel_shuffle_is_the_papers_permutation():
  x = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)
  out = np.asarray(compact.channel_shuffle(jnp.asarray(x), 3))
  for g in range(3):
    for j in range(4):
      np.testing.assert_array_equal(out[:, j * 3 + g], x[:, g * 4 + j])
  with pytest.raises(ValueError, match="groups=5"):
    compact.channel_shuffle(jnp.asarray(x), 5)


def test_depthwise_separable_is_depthwise_then_pointwise():
  block = compact.DepthwiseSeparable(4, 6, strides=2, norm=False, rngs=nnx.Rngs(1))
  assert block.depthwise.conv.kernel.shape == (3, 3, 1, 4)
  ref = relu(_conv(block.pointwise, relu(_conv(block.depthwise, X, stride=2, groups=4))))
  np.testing.assert_allclose(block(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)


def test_fire_concatenates_the_expand_branches():
  fire = compact.Fire(4, 2, 3, 5, rngs=nnx.Rngs(2))
  s = relu(_conv(fire.squeeze, X))
  ref = np.concatenate([relu(_conv(fire.expand1x1, s)), relu(_conv(fire.expand3x3, s))], -1)
  np.testing.assert_allclose(fire(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)


def test_inverted_residual_with_se_is_linear_bottleneck_plus_input():
  block = compact.InvertedResidual(4, 4, expand_ratio=3, se_ratio=0.25, norm=False, rngs=nnx.Rngs(3))
  h = np.clip(_conv(block.expand, X), 0, 6)
  h = np.clip(_conv(block.depthwise, h, groups=12), 0, 6)
  se = block.se
  pooled = h.mean((1, 2), keepdims=True)
  gate = np_conv(
    relu(np_conv(pooled, se.reduce.kernel.get_value(), se.reduce.bias.get_value())),
    se.expand.kernel.get_value(),
    se.expand.bias.get_value(),
  )
  h = h * np.clip(gate + 3, 0, 6) / 6  # hard sigmoid
  ref = X + _conv(block.project, h)  # linear projection: no activation
  np.testing.assert_allclose(block(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)
  assert block.se.reduce.kernel.shape == (1, 1, 12, 8)  # make_divisible(12 * 0.25, 8)


def test_ghost_module_is_intrinsic_maps_and_their_cheap_ghosts():
  ghost = compact.GhostModule(4, 7, ratio=2, norm=False, rngs=nnx.Rngs(4))
  primary = relu(_conv(ghost.primary, X))
  assert primary.shape[-1] == 4  # ceil(7 / 2)
  ref = np.concatenate([primary, relu(_conv(ghost.cheap, primary, groups=4))], -1)[..., :7]
  np.testing.assert_allclose(ghost(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)


def test_shuffle_unit_splits_branches_and_shuffles():
  unit = compact.ShuffleUnit(4, 4, norm=False, rngs=nnx.Rngs(5))
  a, b, c = unit.branch.layers
  branch = relu(_conv(c, _conv(b, relu(_conv(a, X[..., 2:])), groups=2)))
  ref = np.concatenate([X[..., :2], branch], -1)
  ref = ref.reshape(2, 6, 6, 2, 2).swapaxes(-1, -2).reshape(2, 6, 6, 4)
  np.testing.assert_allclose(unit(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="out_features=5"):
    compact.ShuffleUnit(4, 5, strides=2, rngs=nnx.Rngs(0))


def test_conv_norm_uses_batchnorm_running_statistics_in_eval_mode():
  unit = compact.ConvNorm(4, 3, 1, rngs=nnx.Rngs(6))
  bn = unit.norm
  bn.mean.set_value(jnp.array([0.5, -1.0, 2.0]))
  bn.var.set_value(jnp.array([4.0, 0.25, 1.0]))
  bn.scale.set_value(jnp.array([1.0, 2.0, -1.0]))
  unit.eval()
  z = np_conv(X, unit.conv.kernel.get_value())
  ref = relu((z - np.array([0.5, -1.0, 2.0])) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5) * np.array([1, 2, -1]))
  np.testing.assert_allclose(unit(jnp.asarray(X)), ref, rtol=1e-5, atol=1e-5)
  assert unit.conv.bias is None


def test_make_divisible_and_bad_inputs():
  assert [compact.make_divisible(v) for v in (32 * 0.35, 24 * 0.5, 96 * 0.75)] == [16, 16, 72]
  with pytest.raises(ValueError, match="value"):
    compact.make_divisible(0)
  with pytest.raises(ValueError, match="expand_ratio"):
    compact.InvertedResidual(4, 4, expand_ratio=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="groups=3"):
    compact.GroupConvShuffle(4, 6, groups=3, rngs=nnx.Rngs(0))
