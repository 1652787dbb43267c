"""Compact networks: light layers (depthwise-separable, grouped + shuffle, fire, inverted
residual, ghost, squeeze-excitation) and the models built from them, as Flax NNX modules."""

from jaxcompress.compact._layers import (
  ConvNorm,
  DepthwiseSeparable,
  Fire,
  GhostBottleneck,
  GhostModule,
  GlobalPoolHead,
  GroupConvShuffle,
  InvertedResidual,
  ShuffleUnit,
  SqueezeExcite,
  channel_shuffle,
  hard_sigmoid,
  make_divisible,
  relu6,
)
from jaxcompress.compact._models import GhostNet, MobileNetV1, MobileNetV2, ShuffleNetV2, SqueezeNet

__all__ = [
  "ConvNorm",
  "DepthwiseSeparable",
  "Fire",
  "GhostBottleneck",
  "GhostModule",
  "GhostNet",
  "GlobalPoolHead",
  "GroupConvShuffle",
  "InvertedResidual",
  "MobileNetV1",
  "MobileNetV2",
  "ShuffleNetV2",
  "ShuffleUnit",
  "SqueezeExcite",
  "SqueezeNet",
  "channel_shuffle",
  "hard_sigmoid",
  "make_divisible",
  "relu6",
]
