"""The building blocks of compact convolutional networks, as Flax NNX modules.

Layout is Flax's: activations NHWC, conv kernels ``(h, w, in_features / groups,
out_features)``. Grouped and depthwise convolutions are ``nnx.Conv`` with
``feature_group_count``, so every block is made of the standard layers that
``jc.graph`` traces and ``jc.pruning.narrow_nnx`` narrows. Convolutions pad
symmetrically by ``(k - 1) // 2`` (as the papers' reference code does; Flax's
``'SAME'`` pads a strided conv asymmetrically), and a convolution followed by BatchNorm
has no bias. BatchNorm uses PyTorch's defaults (``momentum=0.9`` in Flax's convention,
``epsilon=1e-5``); call ``model.eval()`` for inference on running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Activation = Callable[[jax.Array], jax.Array]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds a channel count to the nearest multiple of ``divisor``, never more than 10% down.

  The rounding of the MobileNet reference code (TensorFlow's slim, torchvision): every
  width-scaled channel count passes through it, so ``width=1.0`` gives the papers' counts.

  Args:
    value: the scaled channel count (``channels * width``), > 0.
    divisor: the multiple to round to, >= 1.
    min_value: the smallest result (default ``divisor``).

  Returns:
    The rounded count (an ``int``).

  Raises:
    ValueError: if ``value`` is not positive or ``divisor`` < 1.

  Example:
    >>> make_divisible(32 * 0.75), make_divisible(1280 * 1.0), make_divisible(240 * 0.5, 4)
    (24, 1280, 120)
  """
  if not value > 0:
    raise ValueError(f"value must be > 0, got {value}")
  if divisor < 1:
    raise ValueError(f"divisor must be >= 1, got {divisor}")
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def relu6(x: jax.Array) -> jax.Array:
  """``min(max(x, 0), 6)``: MobileNetV2's activation."""
  return jnp.clip(x, 0, 6)


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """``relu6(x + 3) / 6``: the squeeze-excitation gate of MobileNetV3 and GhostNet."""
  return relu6(x + 3) / 6


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle: reshape channels to ``(groups, c / groups)``, transpose, flatten.

  Output channel ``j * groups + g`` is input channel ``g * (c / groups) + j``, so the next
  grouped convolution sees channels from every group (Zhang et al. 2018,
  https://arxiv.org/abs/1707.01083, §3.1).

  Args:
    x: ``[..., c]`` activations, channels last.
    groups: the number of groups; must divide ``c``.

  Returns:
    ``x`` with its channels permuted, same shape and dtype.

  Raises:
    ValueError: if ``groups`` < 1 or does not divide the channel count.

  Example:
    >>> channel_shuffle(jnp.arange(6.0).reshape(1, 6), 2).tolist()
    [[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]]
  """
  c = x.shape[-1]
  if groups < 1 or c % groups:
    raise ValueError(f"groups={groups} must be >= 1 and divide the {c} channels")
  lead = x.shape[:-1]
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def _pair(k: int) -> tuple[int, int]:
  return (k, k)


class ConvNorm(nnx.Module):
  """Conv -> BatchNorm -> activation, the unit every compact network is made of.

  Args:
    in_features, out_features: channels in and out.
    kernel_size: the square kernel's side.
    strides: the stride.
    groups: ``feature_group_count``: 1 (dense), ``in_features`` (depthwise), or any
      divisor of both channel counts (grouped).
    activation: applied last; ``None`` for a linear layer (a linear bottleneck).
    norm: BatchNorm after the conv (the conv then has no bias); ``False``: a conv with
      bias and no normalization.
    padding: symmetric padding per side (default ``(kernel_size - 1) // 2``).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 1,
    *,
    strides: int = 1,
    groups: int = 1,
    activation: Activation | None = nnx.relu,
    norm: bool = True,
    padding: int | None = None,
    rngs: nnx.Rngs,
  ):
    pad = (kernel_size - 1) // 2 if padding is None else padding
    self.conv = nnx.Conv(
      in_features,
      out_features,
      _pair(kernel_size),
      strides=strides,
      padding=((pad, pad), (pad, pad)),
      feature_group_count=groups,
      use_bias=not norm,
      rngs=rngs,
    )
    self.norm = nnx.BatchNorm(out_features, momentum=0.9, epsilon=1e-5, rngs=rngs) if norm else None
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in_features] -> [n, h', w', out_features]``."""
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x)
    return x if self.activation is None else self.activation(x)


class DepthwiseSeparable(nnx.Module):
  """MobileNetV1's block: a 3x3 depthwise conv, then a 1x1 pointwise conv, each with BN and ReLU.

  Howard et al. 2017, "MobileNets", https://arxiv.org/abs/1704.04861, Fig. 3.

  Args:
    in_features, out_features: channels in and out.
    strides: the depthwise conv's stride.
    norm: BatchNorm after each conv (the paper); ``False``: biases, no normalization.
    rngs: Flax NNX random streams.
  """

  def __init__(self, in_features: int, out_features: int, *, strides: int = 1, norm: bool = True, rngs: nnx.Rngs):
    self.depthwise = ConvNorm(in_features, in_features, 3, strides=strides, groups=in_features, norm=norm, rngs=rngs)
    self.pointwise = ConvNorm(in_features, out_features, 1, norm=norm, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h / strides, w / strides, out]``."""
    return self.pointwise(self.depthwise(x))


class GroupConvShuffle(nnx.Module):
  """ShuffleNet's grouped 1x1 conv with BN (and ReLU), followed by a channel shuffle.

  Zhang et al. 2018, "ShuffleNet", https://arxiv.org/abs/1707.01083, §3.1-3.2.

  Args:
    in_features, out_features: channels in and out, both divisible by ``groups``.
    groups: the number of groups of the conv and of the shuffle.
    activation: after BN (``None``: linear).
    norm: BatchNorm after the conv.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: if ``groups`` does not divide both channel counts.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    groups: int,
    activation: Activation | None = nnx.relu,
    norm: bool = True,
    rngs: nnx.Rngs,
  ):
    if groups < 1 or in_features % groups or out_features % groups:
      raise ValueError(f"groups={groups} must divide in_features={in_features} and out_features={out_features}")
    self.conv = ConvNorm(in_features, out_features, 1, groups=groups, activation=activation, norm=norm, rngs=rngs)
    self.groups = groups

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h, w, out]``, channels shuffled across the groups."""
    return channel_shuffle(self.conv(x), self.groups)


class Fire(nnx.Module):
  """SqueezeNet's fire module: a 1x1 squeeze conv, then 1x1 and 3x3 expand convs concatenated.

  Iandola et al. 2016, "SqueezeNet", https://arxiv.org/abs/1602.07360, §3.2. Convs have
  biases and ReLU and no normalization, as the paper.

  Args:
    in_features: input channels.
    squeeze: the squeeze layer's channels (``s_1x1``).
    expand1x1, expand3x3: the expand layers' channels (``e_1x1``, ``e_3x3``).
    norm: BatchNorm after each conv (not in the paper; default False).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self, in_features: int, squeeze: int, expand1x1: int, expand3x3: int, *, norm: bool = False, rngs: nnx.Rngs
  ):
    self.squeeze = ConvNorm(in_features, squeeze, 1, norm=norm, rngs=rngs)
    self.expand1x1 = ConvNorm(squeeze, expand1x1, 1, norm=norm, rngs=rngs)
    self.expand3x3 = ConvNorm(squeeze, expand3x3, 3, norm=norm, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h, w, expand1x1 + expand3x3]``."""
    s = self.squeeze(x)
    return jnp.concatenate([self.expand1x1(s), self.expand3x3(s)], axis=-1)


class SqueezeExcite(nnx.Module):
  """Squeeze-and-excitation: global average pool, 1x1 reduce + activation, 1x1 expand + gate, rescale.

  Hu et al. 2018, "Squeeze-and-Excitation Networks", https://arxiv.org/abs/1709.01507.
  The 1x1 convs have biases and no normalization, as the paper's FC layers.

  Args:
    features: the channels rescaled.
    reduced: the bottleneck's channels.
    activation: after the reduce conv (ReLU).
    gate: after the expand conv (``jax.nn.sigmoid`` in the paper; MobileNetV3 and
      GhostNet use :func:`hard_sigmoid`).
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    features: int,
    reduced: int,
    *,
    activation: Activation = nnx.relu,
    gate: Activation = jax.nn.sigmoid,
    rngs: nnx.Rngs,
  ):
    self.reduce = nnx.Conv(features, reduced, (1, 1), rngs=rngs)
    self.expand = nnx.Conv(reduced, features, (1, 1), rngs=rngs)
    self.activation, self.gate = activation, gate

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, c] -> [n, h, w, c]``: ``x`` times a per-channel gate in [0, 1]."""
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * self.gate(self.expand(self.activation(self.reduce(s))))


class InvertedResidual(nnx.Module):
  """MobileNetV2's inverted residual with linear bottleneck, with optional squeeze-excitation.

  1x1 expansion to ``round(in_features * expand_ratio)`` channels (skipped when the ratio
  is 1) -> ``kernel_size`` depthwise conv with ``strides`` -> optional SE -> linear 1x1
  projection (BN, no activation); the input is added back when ``strides == 1`` and the
  channel counts agree. Sandler et al. 2018, "MobileNetV2", https://arxiv.org/abs/1801.04381,
  Table 1; SE placed after the depthwise conv as in MobileNetV3 (Howard et al. 2019,
  https://arxiv.org/abs/1905.02244), its bottleneck ``make_divisible(hidden * se_ratio, 8)``.

  Args:
    in_features, out_features: channels in and out.
    strides: the depthwise conv's stride.
    expand_ratio: ``t``, the expansion factor (>= 1).
    kernel_size: the depthwise kernel's side.
    se_ratio: the SE bottleneck's fraction of the hidden channels; ``None``: no SE.
    activation: of the expansion and depthwise convs (ReLU6 in the paper).
    norm: BatchNorm after each conv.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: if ``expand_ratio`` < 1 or ``se_ratio`` is not in (0, 1].
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    strides: int = 1,
    expand_ratio: float = 6,
    kernel_size: int = 3,
    se_ratio: float | None = None,
    activation: Activation = relu6,
    norm: bool = True,
    rngs: nnx.Rngs,
  ):
    if not expand_ratio >= 1:
      raise ValueError(f"expand_ratio must be >= 1, got {expand_ratio}")
    if se_ratio is not None and not 0 < se_ratio <= 1:
      raise ValueError(f"se_ratio must be in (0, 1] or None, got {se_ratio}")
    hidden = round(in_features * expand_ratio)
    self.expand = (
      ConvNorm(in_features, hidden, 1, activation=activation, norm=norm, rngs=rngs) if expand_ratio != 1 else None
    )
    self.depthwise = ConvNorm(
      hidden, hidden, kernel_size, strides=strides, groups=hidden, activation=activation, norm=norm, rngs=rngs
    )
    self.se = (
      SqueezeExcite(hidden, make_divisible(hidden * se_ratio, 8), gate=hard_sigmoid, rngs=rngs)
      if se_ratio is not None
      else None
    )
    self.project = ConvNorm(hidden, out_features, 1, activation=None, norm=norm, rngs=rngs)
    self.residual = strides == 1 and in_features == out_features

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h / strides, w / strides, out]``."""
    y = x if self.expand is None else self.expand(x)
    y = self.depthwise(y)
    if self.se is not None:
      y = self.se(y)
    y = self.project(y)
    return x + y if self.residual else y


class GhostModule(nnx.Module):
  """GhostNet's ghost module: a few intrinsic maps by an ordinary conv, the rest by cheap depthwise convs.

  ``ceil(out_features / ratio)`` intrinsic channels from a ``kernel_size`` conv, then
  ``(ratio - 1)`` ghosts of each from a ``dw_kernel_size`` depthwise conv; both are
  concatenated and the first ``out_features`` kept. Han et al. 2020, "GhostNet",
  https://arxiv.org/abs/1911.11907, §3.1 (Eq. 3-5) and its reference code.

  Args:
    in_features, out_features: channels in and out.
    ratio: ``s``, the channel ratio (>= 2).
    kernel_size: the primary conv's kernel side (1 in GhostNet).
    dw_kernel_size: ``d``, the cheap operation's kernel side.
    strides: the primary conv's stride.
    relu: ReLU after both convs (the first module of a bottleneck); False: linear.
    norm: BatchNorm after each conv.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: if ``ratio`` < 2.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    ratio: int = 2,
    kernel_size: int = 1,
    dw_kernel_size: int = 3,
    strides: int = 1,
    relu: bool = True,
    norm: bool = True,
    rngs: nnx.Rngs,
  ):
    if ratio < 2:
      raise ValueError(f"ratio must be >= 2, got {ratio}")
    intrinsic = math.ceil(out_features / ratio)
    act = nnx.relu if relu else None
    self.primary = ConvNorm(in_features, intrinsic, kernel_size, strides=strides, activation=act, norm=norm, rngs=rngs)
    self.cheap = ConvNorm(
      intrinsic, intrinsic * (ratio - 1), dw_kernel_size, groups=intrinsic, activation=act, norm=norm, rngs=rngs
    )
    self.out_features = out_features

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h / strides, w / strides, out]``."""
    y = self.primary(x)
    return jnp.concatenate([y, self.cheap(y)], axis=-1)[..., : self.out_features]


class GhostBottleneck(nnx.Module):
  """GhostNet's bottleneck: ghost module (ReLU) -> [strided depthwise conv] -> [SE] -> ghost module (linear) + shortcut.

  The shortcut is the identity when ``strides == 1`` and the channel counts agree, else a
  depthwise conv with the stride followed by a 1x1 conv (each with BN), as the reference
  code. SE: :class:`SqueezeExcite` with a :func:`hard_sigmoid` gate and
  ``make_divisible(hidden * se_ratio, 4)`` channels. Han et al. 2020,
  https://arxiv.org/abs/1911.11907, Fig. 3 and Table 1.

  Args:
    in_features: input channels.
    hidden: the expansion's channels ("#exp" in Table 1).
    out_features: output channels.
    kernel_size: the depthwise convs' kernel side.
    strides: 1 or 2.
    se_ratio: the SE bottleneck's fraction; ``None`` or 0: no SE.
    norm: BatchNorm after each conv.
    rngs: Flax NNX random streams.
  """

  def __init__(
    self,
    in_features: int,
    hidden: int,
    out_features: int,
    *,
    kernel_size: int = 3,
    strides: int = 1,
    se_ratio: float | None = None,
    norm: bool = True,
    rngs: nnx.Rngs,
  ):
    self.ghost1 = GhostModule(in_features, hidden, relu=True, norm=norm, rngs=rngs)
    self.depthwise = (
      ConvNorm(hidden, hidden, kernel_size, strides=strides, groups=hidden, activation=None, norm=norm, rngs=rngs)
      if strides > 1
      else None
    )
    self.se = (
      SqueezeExcite(hidden, make_divisible(hidden * se_ratio, 4), gate=hard_sigmoid, rngs=rngs) if se_ratio else None
    )
    self.ghost2 = GhostModule(hidden, out_features, relu=False, norm=norm, rngs=rngs)
    if strides == 1 and in_features == out_features:
      self.shortcut = None
    else:
      self.shortcut = nnx.Sequential(
        ConvNorm(
          in_features,
          in_features,
          kernel_size,
          strides=strides,
          groups=in_features,
          activation=None,
          norm=norm,
          rngs=rngs,
        ),
        ConvNorm(in_features, out_features, 1, activation=None, norm=norm, rngs=rngs),
      )

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h / strides, w / strides, out]``."""
    y = self.ghost1(x)
    if self.depthwise is not None:
      y = self.depthwise(y)
    if self.se is not None:
      y = self.se(y)
    y = self.ghost2(y)
    return y + (x if self.shortcut is None else self.shortcut(x))


class ShuffleUnit(nnx.Module):
  """ShuffleNetV2's unit: channel split, one branch through 1x1 -> 3x3 depthwise -> 1x1, concat, shuffle.

  With ``strides == 1`` the input is split in two halves; the first passes unchanged, the
  second goes through the branch (Ma et al. 2018, "ShuffleNet V2",
  https://arxiv.org/abs/1807.11164, Fig. 3c). With ``strides == 2`` both branches read the
  whole input: a 3x3 depthwise conv + 1x1 conv, and the 1x1 -> depthwise -> 1x1 branch
  (Fig. 3d), doubling the channels. Each branch gives ``out_features // 2`` channels;
  the concatenation is shuffled with 2 groups. ReLU after the 1x1 convs, none after the
  depthwise ones, as the reference code.

  Args:
    in_features, out_features: channels in and out (with ``strides == 1`` they must be
      equal and even).
    strides: 1 or 2.
    norm: BatchNorm after each conv.
    rngs: Flax NNX random streams.

  Raises:
    ValueError: for ``strides`` not 1 or 2, or channel counts the unit cannot split.
  """

  def __init__(self, in_features: int, out_features: int, *, strides: int = 1, norm: bool = True, rngs: nnx.Rngs):
    if strides not in (1, 2):
      raise ValueError(f"strides must be 1 or 2, got {strides}")
    if out_features % 2 or (strides == 1 and in_features != out_features):
      raise ValueError(
        f"out_features={out_features} must be even, and equal in_features={in_features} when strides == 1"
      )
    half = out_features // 2
    if strides == 2:
      self.shortcut = nnx.Sequential(
        ConvNorm(in_features, in_features, 3, strides=2, groups=in_features, activation=None, norm=norm, rngs=rngs),
        ConvNorm(in_features, half, 1, norm=norm, rngs=rngs),
      )
    else:
      self.shortcut = None
    self.branch = nnx.Sequential(
      ConvNorm(in_features if strides == 2 else half, half, 1, norm=norm, rngs=rngs),
      ConvNorm(half, half, 3, strides=strides, groups=half, activation=None, norm=norm, rngs=rngs),
      ConvNorm(half, half, 1, norm=norm, rngs=rngs),
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, in] -> [n, h / strides, w / strides, out]``."""
    if self.shortcut is None:
      half = x.shape[-1] // 2
      y = jnp.concatenate([x[..., :half], self.branch(x[..., half:])], axis=-1)
    else:
      y = jnp.concatenate([self.shortcut(x), self.branch(x)], axis=-1)
    return channel_shuffle(y, 2)


class GlobalPoolHead(nnx.Module):
  """Global average pooling over height and width, optional dropout, then a linear classifier.

  Args:
    in_features: channels pooled.
    classes: outputs.
    dropout: the dropout rate before the classifier (0: none).
    rngs: Flax NNX random streams.
  """

  def __init__(self, in_features: int, classes: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
    if not 0 <= dropout < 1:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    self.fc = nnx.Linear(in_features, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``[n, h, w, c] -> [n, classes]`` logits."""
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout is not None:
      x = self.dropout(x)
    return self.fc(x)
