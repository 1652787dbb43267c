"""Compact models: parameter and multiply-add counts of the ImageNet configurations against
torchvision and the papers (abstract init and trace, nothing executed), and one forward at 224."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress import compact

IMAGE = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def _counts(cls, **kw):
  """(parameters as torchvision counts them, MACs by jc.graph.flops) of an abstract model."""
  model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kw))
  model.eval()
  params = nnx.state(model, nnx.Param)
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  graphdef, variables, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  apply = lambda v, x: nnx.merge(graphdef, v, rest)(x)
  return n, jc.graph.flops(apply, variables, IMAGE)["macs"]


# (model, kwargs): (paper params, paper MACs or None, torchvision params or None)
PUBLISHED = {
  "mobilenet_v1_1.0": (compact.MobileNetV1, {}, 4.2e6, 569e6, None),  # Howard et al. 2017 Table 8
  "mobilenet_v2_1.0": (compact.MobileNetV2, {}, 3.4e6, 300e6, 3_504_872),  # Sandler et al. 2018 Table 3
  "shufflenet_v2_1.0": (compact.ShuffleNetV2, {}, 2.3e6, 146e6, 2_278_604),  # Ma et al. 2018 Table 5
  "squeezenet_1.1": (compact.SqueezeNet, {}, 1.24e6, None, 1_235_496),  # the v1.1 release notes
  "ghostnet_1.0": (compact.GhostNet, {}, 5.2e6, 141e6, None),  # Han et al. 2020 Table 7
}


@pytest.fixture(scope="module")
def counts():
  return {name: _counts(cls, **kw) for name, (cls, kw, *_) in PUBLISHED.items()}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counts_match_the_papers_and_torchvision(name, counts):
  _, _, paper_params, paper_macs, torchvision = PUBLISHED[name]
  params, macs = counts[name]
  if torchvision is not None:
    assert params == torchvision
  # MobileNetV2's Table 3 says 3.4M for the network torchvision (and the TF reference) count
  # at 3,504,872, 3% more: the exact count is the reference, the paper's is rounded down.
  tolerance = 0.035 if name == "mobilenet_v2_1.0" else 0.01
  assert abs(params - paper_params) <= tolerance * paper_params, params
  if paper_macs is not None:
    assert abs(macs - paper_macs) <= 0.01 * paper_macs, macs


def test_width_multiplier_scales_every_layer():
  """MobileNetV2 at width 0.5: channels ``make_divisible(c / 2, 8)``, the last conv stays 1280."""
  model = nnx.eval_shape(lambda: compact.MobileNetV2(width=0.5, rngs=nnx.Rngs(0)))
  assert model.stem.conv.kernel.shape == (3, 3, 3, 16)
  assert model.blocks[1].project.conv.kernel.shape[-1] == 16  # 24 / 2 = 12 -> 16
  assert model.last.conv.kernel.shape == (1, 1, 160, 1280)
  with pytest.raises(ValueError, match="width"):
    compact.MobileNetV2(width=0.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="width"):
    compact.ShuffleNetV2(width=0.7, rngs=nnx.Rngs(0))


def test_forward_at_224_runs_in_eval_mode():
  """One real forward of MobileNetV1 0.25/224: logits for 1000 classes, the same jitted or
  not, and the training-mode BatchNorm (batch statistics) gives a different answer."""
  model = compact.MobileNetV1(width=0.25, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
  model.eval()
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  logits = forward(state, x)
  assert logits.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(logits)))
  np.testing.assert_allclose(logits, model(x), rtol=1e-4, atol=1e-4)
  assert model.blocks[-1].pointwise.conv.kernel.shape == (1, 1, 256, 256)  # 1024 * 0.25


def test_squeezenet_classifier_bias_init_shifts_only_the_final_bias():
  small = dict(classes=3, in_channels=1, stem=(4, 3, 1), layers=((2, 4),), dropout=0.0)
  paper = compact.SqueezeNet(**small, rngs=nnx.Rngs(0))
  shifted = compact.SqueezeNet(**small, classifier_bias_init=0.1, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(paper.classifier.bias[...], np.zeros(3, np.float32))  # the paper's (and torchvision's)
  np.testing.assert_array_equal(shifted.classifier.bias[...], np.full(3, 0.1, np.float32))
  same = jax.tree.leaves(nnx.state(paper, nnx.Param)), jax.tree.leaves(nnx.state(shifted, nnx.Param))
  assert sum(not np.array_equal(a, b) for a, b in zip(*same)) == 1  # the same draws everywhere else
  with pytest.raises(ValueError, match="classifier_bias_init"):
    compact.SqueezeNet(**small, classifier_bias_init=float("nan"), rngs=nnx.Rngs(0))
