"""Compact ImageNet architectures with width multipliers, as Flax NNX modules (NHWC).

Every model defaults to its paper's ImageNet configuration (1000 classes, 224x224x3
inputs); the configuration arguments (``blocks``, ``stem``, ...) build the small
variants. Parameter counts of the defaults equal torchvision's where it has the model
(MobileNetV2, ShuffleNetV2, SqueezeNet 1.1) and the papers' tables otherwise
(``tests/compact/test_models.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcompress.compact._layers import (
  ConvNorm,
  DepthwiseSeparable,
  Fire,
  GhostBottleneck,
  GlobalPoolHead,
  InvertedResidual,
  ShuffleUnit,
  make_divisible,
  relu6,
)
from jaxcompress.core import validate

MOBILENET_V1_BLOCKS = (
  ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
  + ((512, 1),) * 5
  + (
    (1024, 2),
    (1024, 1),
  )
)  # (out channels, stride) of the 13 depthwise-separable blocks, Howard et al. 2017 Table 1
MOBILENET_V2_BLOCKS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)  # (expansion t, channels c, repeats n, stride s), Sandler et al. 2018 Table 2
SHUFFLENET_V2_CHANNELS = {
  0.5: (24, 48, 96, 192, 1024),
  1.0: (24, 116, 232, 464, 1024),
  1.5: (24, 176, 352, 704, 1024),
  2.0: (24, 244, 488, 976, 2048),
}  # stem, three stages, last conv, Ma et al. 2018 Table 5
SQUEEZENET_1_1_LAYERS = (
  "pool",
  (16, 64),
  (16, 64),
  "pool",
  (32, 128),
  (32, 128),
  "pool",
  (48, 192),
  (48, 192),
  (64, 256),
  (64, 256),
)  # after the stem: 3x3/2 max pools and fire modules (squeeze, expand per branch), SqueezeNet v1.1
GHOSTNET_BLOCKS = (
  (3, 16, 16, None, 1),
  (3, 48, 24, None, 2),
  (3, 72, 24, None, 1),
  (5, 72, 40, 0.25, 2),
  (5, 120, 40, 0.25, 1),
  (3, 240, 80, None, 2),
  (3, 200, 80, None, 1),
  (3, 184, 80, None, 1),
  (3, 184, 80, None, 1),
  (3, 480, 112, 0.25, 1),
  (3, 672, 112, 0.25, 1),
  (5, 672, 160, 0.25, 2),
  (5, 960, 160, None, 1),
  (5, 960, 160, 0.25, 1),
  (5, 960, 160, None, 1),
  (5, 960, 160, 0.25, 1),
)  # (kernel, #exp, #out, SE ratio, stride), Han et al. 2020 Table 1


def _check_width(width: float) -> float:
  if not (isinstance(width, (int, float)) and width > 0):
    raise ValueError(f"width must be a positive number, got {width!r}")
  return float(width)


def _max_pool(x: jax.Array, window: int, stride: int, pad: int = 0, *, ceil_mode: bool = False) -> jax.Array:
  """Max pooling with symmetric ``pad`` and, with ``ceil_mode``, extra right padding (PyTorch's
  ``ceil_mode=True``: a last partial window counts)."""
  pads = []
  for size in x.shape[1:3]:
    extra = 0
    if ceil_mode:
      span = size + 2 * pad - window
      extra = (-span) % stride if span > 0 else 0
    pads.append((pad, pad + extra))
  return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class MobileNetV1(nnx.Module):
  """MobileNetV1: a 3x3 conv, 13 depthwise-separable blocks, global pool, a linear classifier.

  Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile
  Vision Applications", https://arxiv.org/abs/1704.04861. Width multiplier ``alpha``
  scales every layer's channels (rounded by :func:`make_divisible` to multiples of 8,
  as TensorFlow's reference); 1.0/224 is 4.2M parameters and 569M multiply-adds (Table 8).

  Args:
    width: the width multiplier ``alpha`` (> 0).
    classes: outputs.
    in_channels: input channels.
    stem: ``(channels, stride)`` of the first conv.
    blocks: ``(channels, stride)`` of each depthwise-separable block.
    norm: BatchNorm after each conv (the paper).
    dropout: before the classifier (0 in the paper's Table 1).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    *,
    width: float = 1.0,
    classes: int = 1000,
    in_channels: int = 3,
    stem: tuple[int, int] = (32, 2),
    blocks: Sequence[tuple[int, int]] = MOBILENET_V1_BLOCKS,
    norm: bool = True,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
  ):
    width = _check_width(width)
    c = make_divisible(stem[0] * width)
    self.stem = ConvNorm(in_channels, c, 3, strides=stem[1], norm=norm, rngs=rngs)
    layers = []
    for out, stride in blocks:
      out = make_divisible(out * width)
      layers.append(DepthwiseSeparable(c, out, strides=stride, norm=norm, rngs=rngs))
      c = out
    self.blocks = nnx.List(layers)
    self.head = GlobalPoolHead(c, classes, dropout=dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_channels]`` images -> ``[n, classes]`` logits."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.head(x)


class MobileNetV2(nnx.Module):
  """MobileNetV2: a 3x3 conv, inverted residual blocks with linear bottlenecks, a 1x1 conv, global pool, classifier.

  Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  https://arxiv.org/abs/1801.04381, Table 2. Channels are scaled by ``width`` and
  rounded to multiples of 8; the last conv keeps 1280 channels for widths below 1 (as the
  paper). 1.0/224 is 3.4M parameters and 300M multiply-adds (Table 3; torchvision's
  ``mobilenet_v2``: 3,504,872 parameters, matched exactly).

  Args:
    width: the width multiplier (> 0).
    classes: outputs.
    in_channels: input channels.
    stem: ``(channels, stride)`` of the first conv.
    blocks: ``(t, c, n, s)`` rows: expansion, channels, repeats, first stride.
    last: the last 1x1 conv's channels (before the width's ``max(1, width)``).
    norm: BatchNorm after each conv.
    dropout: before the classifier (0.2, as torchvision).
    se_ratio: an optional squeeze-excitation in every block (not in the paper: None).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    *,
    width: float = 1.0,
    classes: int = 1000,
    in_channels: int = 3,
    stem: tuple[int, int] = (32, 2),
    blocks: Sequence[tuple[float, int, int, int]] = MOBILENET_V2_BLOCKS,
    last: int = 1280,
    norm: bool = True,
    dropout: float = 0.2,
    se_ratio: float | None = None,
    rngs: nnx.Rngs,
  ):
    width = _check_width(width)
    c = make_divisible(stem[0] * width)
    self.stem = ConvNorm(in_channels, c, 3, strides=stem[1], activation=relu6, norm=norm, rngs=rngs)
    layers = []
    for t, channels, repeats, stride in blocks:
      out = make_divisible(channels * width)
      for i in range(repeats):
        layers.append(
          InvertedResidual(
            c, out, strides=stride if i == 0 else 1, expand_ratio=t, se_ratio=se_ratio, norm=norm, rngs=rngs
          )
        )
        c = out
    self.blocks = nnx.List(layers)
    last = make_divisible(last * max(1.0, width))
    self.last = ConvNorm(c, last, 1, activation=relu6, norm=norm, rngs=rngs)
    self.head = GlobalPoolHead(last, classes, dropout=dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_channels]`` images -> ``[n, classes]`` logits."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.head(self.last(x))


class ShuffleNetV2(nnx.Module):
  """ShuffleNetV2: a 3x3 conv and max pool, three stages of shuffle units, a 1x1 conv, global pool, classifier.

  Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
  Design", https://arxiv.org/abs/1807.11164, Table 5. The width multiplier picks the
  table's channels (0.5, 1.0, 1.5, 2.0); ``channels=`` sets them directly. 1.0x is 2.3M
  parameters and 146M multiply-adds (torchvision's ``shufflenet_v2_x1_0``: 2,278,604
  parameters, matched exactly).

  Args:
    width: 0.5, 1.0, 1.5 or 2.0 (ignored when ``channels`` is given).
    classes: outputs.
    in_channels: input channels.
    channels: ``(stem, stage 2, stage 3, stage 4, last conv)`` channels.
    repeats: units per stage (the first has stride 2).
    stem_stride: the first conv's stride.
    stem_pool: the 3x3/2 max pool after the first conv.
    norm: BatchNorm after each conv.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: for a width not in the table, or ``channels`` / ``repeats`` of the wrong length.
  """

  def __init__(
    self,
    *,
    width: float = 1.0,
    classes: int = 1000,
    in_channels: int = 3,
    channels: Sequence[int] | None = None,
    repeats: Sequence[int] = (4, 8, 4),
    stem_stride: int = 2,
    stem_pool: bool = True,
    norm: bool = True,
    rngs: nnx.Rngs,
  ):
    if channels is None:
      if width not in SHUFFLENET_V2_CHANNELS:
        raise ValueError(f"width must be one of {sorted(SHUFFLENET_V2_CHANNELS)} (or pass channels=), got {width!r}")
      channels = SHUFFLENET_V2_CHANNELS[width]
    channels = tuple(channels)
    if len(channels) != len(repeats) + 2:
      raise ValueError(f"channels={channels} needs len(repeats) + 2 = {len(repeats) + 2} entries")
    self.stem = ConvNorm(in_channels, channels[0], 3, strides=stem_stride, norm=norm, rngs=rngs)
    self.stem_pool = stem_pool
    c, layers = channels[0], []
    for out, n in zip(channels[1:-1], repeats):
      for i in range(n):
        layers.append(ShuffleUnit(c, out, strides=2 if i == 0 else 1, norm=norm, rngs=rngs))
        c = out
    self.blocks = nnx.List(layers)
    self.last = ConvNorm(c, channels[-1], 1, norm=norm, rngs=rngs)
    self.head = GlobalPoolHead(channels[-1], classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_channels]`` images -> ``[n, classes]`` logits."""
    x = self.stem(x)
    if self.stem_pool:
      x = _max_pool(x, 3, 2, 1)
    for block in self.blocks:
      x = block(x)
    return self.head(self.last(x))


class SqueezeNet(nnx.Module):
  """SqueezeNet 1.1: a 3x3/2 conv, max pools and fire modules, a 1x1 conv to the classes, global pool.

  Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and
  <0.5MB model size", https://arxiv.org/abs/1602.07360; version 1.1 from the authors'
  repository (1.24M parameters; torchvision's ``squeezenet1_1``: 1,235,496, matched
  exactly). No BatchNorm (the paper); max pools are 3x3/2 with PyTorch's
  ``ceil_mode=True``. ``width`` scales every conv's channels (not in the paper).

  Args:
    width: scales every conv's channels (rounded, at least 1).
    classes: outputs.
    in_channels: input channels.
    stem: ``(channels, kernel, stride)`` of the first conv.
    layers: ``'pool'`` or ``(squeeze, expand)`` (each expand branch gets ``expand``).
    norm: BatchNorm after each conv (not in the paper: False).
    dropout: before the final conv (0.5, the paper).
    classifier_bias_init: the final conv's initial bias, a finite float (0, the paper's
      and torchvision's). The class maps pass through a ReLU before the global pool, so a
      class whose map is negative at every position and input gets no gradient again and
      is never predicted; a small positive value (0.1) starts every map in the ReLU's
      active range, as Krizhevsky et al. 2012 (AlexNet, §5) started ReLU layers with
      bias 1. A variant for tiny, Adam-trained SqueezeNets, not in the paper.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: for a non-finite ``classifier_bias_init`` (or a bad ``width``).
  """

  def __init__(
    self,
    *,
    width: float = 1.0,
    classes: int = 1000,
    in_channels: int = 3,
    stem: tuple[int, int, int] = (64, 3, 2),
    layers: Sequence[str | tuple[int, int]] = SQUEEZENET_1_1_LAYERS,
    norm: bool = False,
    dropout: float = 0.5,
    classifier_bias_init: float = 0.0,
    rngs: nnx.Rngs,
  ):
    width = _check_width(width)
    scale = lambda n: max(1, round(n * width))
    c = scale(stem[0])
    self.stem = ConvNorm(in_channels, c, stem[1], strides=stem[2], padding=0, norm=norm, rngs=rngs)
    modules, self.plan = [], []
    for layer in layers:
      if layer == "pool":
        self.plan.append("pool")
        continue
      squeeze, expand = (scale(n) for n in layer)  # pyrefly: ignore[not-iterable]
      modules.append(Fire(c, squeeze, expand, expand, norm=norm, rngs=rngs))
      self.plan.append("fire")
      c = 2 * expand
    self.fires = nnx.List(modules)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    bias = validate.check_float("classifier_bias_init", classifier_bias_init)
    self.classifier = nnx.Conv(c, classes, (1, 1), bias_init=jax.nn.initializers.constant(bias), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_channels]`` images -> ``[n, classes]`` logits."""
    x = self.stem(x)
    fires = iter(self.fires)
    for step in self.plan:
      x = _max_pool(x, 3, 2, ceil_mode=True) if step == "pool" else next(fires)(x)
    if self.dropout is not None:
      x = self.dropout(x)
    return jnp.mean(nnx.relu(self.classifier(x)), axis=(1, 2))


class GhostNet(nnx.Module):
  """GhostNet: a 3x3 conv, ghost bottlenecks, a 1x1 conv, global pool, a 1x1 conv head, classifier.

  Han et al. 2020, "GhostNet: More Features from Cheap Operations",
  https://arxiv.org/abs/1911.11907, Table 1 and the authors' code: channels scaled by
  ``width`` and rounded to multiples of 4; the 1280-channel head conv (with bias, ReLU,
  no BatchNorm) is not scaled. 1.0x is 5.2M parameters and 141M multiply-adds (Table 7).

  Args:
    width: the width multiplier (> 0).
    classes: outputs.
    in_channels: input channels.
    stem: ``(channels, stride)`` of the first conv.
    blocks: ``(kernel, #exp, #out, SE ratio or None, stride)`` rows.
    last: the 1x1 conv after the blocks (before the width).
    head: the channels of the head conv after pooling.
    norm: BatchNorm after each conv of the body.
    dropout: before the classifier (0.2, as the paper's code).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    *,
    width: float = 1.0,
    classes: int = 1000,
    in_channels: int = 3,
    stem: tuple[int, int] = (16, 2),
    blocks: Sequence[tuple[int, int, int, float | None, int]] = GHOSTNET_BLOCKS,
    last: int = 960,
    head: int = 1280,
    norm: bool = True,
    dropout: float = 0.2,
    rngs: nnx.Rngs,
  ):
    width = _check_width(width)
    c = make_divisible(stem[0] * width, 4)
    self.stem = ConvNorm(in_channels, c, 3, strides=stem[1], norm=norm, rngs=rngs)
    layers = []
    for kernel, exp, out, se, stride in blocks:
      out, exp = make_divisible(out * width, 4), make_divisible(exp * width, 4)
      layers.append(GhostBottleneck(c, exp, out, kernel_size=kernel, strides=stride, se_ratio=se, norm=norm, rngs=rngs))
      c = out
    self.blocks = nnx.List(layers)
    last = make_divisible(last * width, 4)
    self.last = ConvNorm(c, last, 1, norm=norm, rngs=rngs)
    self.head_conv = nnx.Conv(last, head, (1, 1), rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    self.classifier = nnx.Linear(head, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_channels]`` images -> ``[n, classes]`` logits."""
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    x = jnp.mean(self.last(x), axis=(1, 2), keepdims=True)
    x = nnx.relu(self.head_conv(x)).reshape(x.shape[0], -1)
    if self.dropout is not None:
      x = self.dropout(x)
    return self.classifier(x)
