"""LeNet-300-100, a LeNet-5 and a tiny 64-30-10 MLP for 8x8 digits, in Flax NNX, with a pure functional view.

The compressors work on plain nested dicts whose paths read ``'fc1/kernel'``;
:func:`functional` splits a model into such a dict and a pure ``apply(params, x)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
from flax import nnx

from jaxcompress import accounting, compact, graph


class LeNet300100(nnx.Module):
  """The 64-300-100-10 ReLU MLP of LeCun et al. 1998, on flattened 8x8 digits."""

  inputs = "flat"

  def __init__(self, rngs: nnx.Rngs, in_features: int = 64, classes: int = 10):
    self.fc1 = nnx.Linear(in_features, 300, rngs=rngs)
    self.fc2 = nnx.Linear(300, 100, rngs=rngs)
    self.fc3 = nnx.Linear(100, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)

  def flops(self) -> int:
    """Analytic forward FLOPs per example (matmuls and biases)."""
    layers = (self.fc1, self.fc2, self.fc3)
    return sum(accounting.dense_flops(1, fc.in_features, fc.out_features) for fc in layers)


class LeNet5(nnx.Module):
  """A LeNet-5 sized for 8x8x1 inputs.

  conv 3x3x6 SAME, relu, max-pool 2 -> conv 3x3x16 SAME, relu, max-pool 2 -> 2x2x16
  = 64 features -> dense 120 -> 84 -> 10.
  """

  inputs = "image"

  def __init__(self, rngs: nnx.Rngs, classes: int = 10):
    self.conv1 = nnx.Conv(1, 6, (3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(6, 16, (3, 3), padding="SAME", rngs=rngs)
    self.fc1 = nnx.Linear(2 * 2 * 16, 120, rngs=rngs)
    self.fc2 = nnx.Linear(120, 84, rngs=rngs)
    self.fc3 = nnx.Linear(84, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pool = lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2))
    x = pool(nnx.relu(self.conv1(x)))
    x = pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)

  def flops(self) -> int:
    """Analytic forward FLOPs per example of the convs and dense layers (pooling and
    activations are not counted)."""
    total, shape = 0, (1, 8, 8, 1)
    for conv in (self.conv1, self.conv2):
      flops, (n, h, w, c) = accounting.conv_flops(shape, conv.kernel.shape, padding="SAME")
      total += flops
      shape = (n, h // 2, w // 2, c)  # after the 2x2 pool
    for fc in (self.fc1, self.fc2, self.fc3):
      total += accounting.dense_flops(1, fc.in_features, fc.out_features)
    return total


class LeNet5BN(nnx.Module):
  """:class:`LeNet5` with a BatchNorm after each conv (the conv keeps its bias, so the folded
  model has exactly :class:`LeNet5`'s layout): the model of the BatchNorm-folding rows.

  Its functional view runs the BatchNorms in inference mode (running statistics, which the
  view holds as params ``bn1/mean``, ``bn1/var``, ...); the baseline trains them with batch
  statistics through ``quantization.batchnorm_fold`` and then re-estimates the running
  statistics on the training set (:func:`baseline_training`).
  """

  inputs = "image"

  def __init__(self, rngs: nnx.Rngs, classes: int = 10):
    self.conv1 = nnx.Conv(1, 6, (3, 3), padding="SAME", rngs=rngs)
    self.bn1 = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
    self.conv2 = nnx.Conv(6, 16, (3, 3), padding="SAME", rngs=rngs)
    self.bn2 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
    self.fc1 = nnx.Linear(2 * 2 * 16, 120, rngs=rngs)
    self.fc2 = nnx.Linear(120, 84, rngs=rngs)
    self.fc3 = nnx.Linear(84, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pool = lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2))
    x = pool(nnx.relu(self.bn1(self.conv1(x))))
    x = pool(nnx.relu(self.bn2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)

  def flops(self) -> int:
    """:class:`LeNet5`'s FLOPs (the BatchNorms fold away)."""
    return LeNet5.flops(self)  # type: ignore[arg-type]


class TinyMLP(nnx.Module):
  """A 64-30-10 ReLU MLP: the small student of the distillation rows."""

  inputs = "flat"

  def __init__(self, rngs: nnx.Rngs, in_features: int = 64, hidden: int = 30, classes: int = 10):
    self.fc1 = nnx.Linear(in_features, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.relu(self.fc1(x)))

  def flops(self) -> int:
    """Analytic forward FLOPs per example (matmuls and biases)."""
    return sum(accounting.dense_flops(1, fc.in_features, fc.out_features) for fc in (self.fc1, self.fc2))


class CompactDigits(nnx.Module):
  """A compact network of ``jaxcompress.compact`` sized for 8x8x1 digits (10 classes).

  The configurations keep the papers' blocks with tiny widths and no stem stride. They
  are norm-free (``norm=False``: convs with biases instead of BatchNorm): the trainer's
  functional view keeps non-param state as constants, so batch statistics could not be
  trained or updated; with residual adds and adam these depths train without it.
  """

  inputs = "image"
  configs: ClassVar[dict[str, Any]] = {
    "mobilenet_v1_small": lambda rngs: compact.MobileNetV1(
      classes=10, in_channels=1, stem=(8, 1), blocks=((16, 1), (32, 2), (32, 1), (64, 2)), norm=False, rngs=rngs
    ),
    "mobilenet_v2_small": lambda rngs: compact.MobileNetV2(
      classes=10,
      in_channels=1,
      stem=(8, 1),
      blocks=((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 2, 2)),
      last=64,
      norm=False,
      dropout=0.0,
      rngs=rngs,
    ),
    "shufflenet_v2_small": lambda rngs: compact.ShuffleNetV2(
      classes=10,
      in_channels=1,
      channels=(8, 16, 32, 64),
      repeats=(2, 2),
      stem_stride=1,
      stem_pool=False,
      norm=False,
      rngs=rngs,
    ),
    "squeezenet_small": lambda rngs: compact.SqueezeNet(  # bias 0: a class map's ReLU died on 1 seed of 3
      classes=10,
      in_channels=1,
      stem=(16, 3, 1),
      layers=((8, 16), "pool", (8, 24), (12, 32)),
      dropout=0.0,
      classifier_bias_init=0.1,
      rngs=rngs,
    ),
    "ghostnet_small": lambda rngs: compact.GhostNet(
      classes=10,
      in_channels=1,
      stem=(8, 1),
      blocks=((3, 16, 8, None, 1), (3, 32, 16, 0.25, 2), (3, 48, 16, None, 1), (3, 64, 24, 0.25, 2)),
      last=64,
      head=64,
      norm=False,
      dropout=0.0,
      rngs=rngs,
    ),
  }

  def __init__(self, rngs: nnx.Rngs, name: str):
    self.net = self.configs[name](rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.net(x)

  def flops(self) -> int:
    """Forward FLOPs per example of the convs and dense layers (``jc.graph.flops``)."""
    graphdef, params, rest = nnx.split(self, nnx.Param, ...)
    apply = lambda p, x: nnx.merge(graphdef, p, rest)(x)
    return int(graph.flops(apply, params, jax.ShapeDtypeStruct((1, 8, 8, 1), jax.numpy.float32))["flops"])


MODELS = {"lenet300100": LeNet300100, "lenet5": LeNet5, "mlp64": TinyMLP, "lenet5bn": LeNet5BN} | {
  name: functools.partial(CompactDigits, name=name) for name in CompactDigits.configs
}
COMPACT = tuple(CompactDigits.configs)


@dataclasses.dataclass(frozen=True)
class Functional:
  """A model as a pure function of a plain dict of params.

  Attributes:
    graphdef: the model's static structure.
    template: its ``nnx.Param`` state, whose variable types receive the params.
    rest: every other state (empty for these models).
    inputs: ``'flat'`` or ``'image'``, which view of the data the model reads.
  """

  graphdef: Any
  template: Any
  rest: Any
  inputs: str

  def apply(self, params: dict, x: jax.Array) -> jax.Array:
    """Logits of ``x`` under ``params`` (a pure dict like ``{'fc1': {'kernel': ...}}``)."""
    state = jax.tree.map(lambda v: v, self.template)  # fresh variables, template untouched
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state, self.rest)(x)


def functional(model: nnx.Module) -> tuple[Functional, dict]:
  """Splits an NNX model into its functional view and its params as a pure dict (BatchNorm
  running statistics included: they are leaves the inference-mode model reads)."""
  graphdef, params, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  return Functional(graphdef, params, rest, model.inputs), params.to_pure_dict()


def build(name: str, seed: int) -> tuple[nnx.Module, Functional, dict]:
  """Creates model ``name`` initialized from ``seed``: ``(model, functional, params)``."""
  model = MODELS[name](nnx.Rngs(seed))
  fn, params = functional(model)
  return model, fn, params


def baseline_training(name: str, fn: Functional, params: dict, example: Any) -> tuple[Any, Any]:
  """How to train model ``name``'s baseline: ``(compressor, finish)``.

  Plain models train under ``jc.identity()`` and ``finish`` returns the params. A model
  with BatchNorm trains with batch statistics (``batchnorm_fold`` without a freeze step is
  exactly training-mode BatchNorm), and ``finish(params, batches)`` re-estimates the
  running statistics on ``batches`` (``batchnorm_statistics``).
  """
  import jaxcompress as jc

  folds = jc.quantization.find_batchnorms(fn.apply, params, example)
  if not folds:
    return jc.identity(), lambda p, batches: p
  finish = lambda p, batches: jc.quantization.batchnorm_statistics(fn.apply, p, folds, batches)
  return jc.quantization.batchnorm_fold(folds), finish
