"""The FitNets row's teacher: LeNet-5's layout at 4x the width (conv 3x3x24 -> pool -> conv
3x3x64 -> pool -> dense 256 -> 10, dropout 0.5 before the last layer), trained on the digits
once per process (seed 0), in plain JAX so ``jaxcompress.graph.capture`` finds its sites
(``conv2/kernel``: the hint layer) without any change to the model.

Romero et al. 2015 (https://arxiv.org/abs/1412.6550) guide a thin student with a wider
teacher's middle layer; here the student is LeNet-5 (``conv2``: 16 channels) and the
teacher's ``conv2`` has 64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.recipes import _teacher

CONVS = ((1, 24), (24, 64))
DENSE = ((4 * 64, 256), (256, 10))
DROPOUT = 0.5
EPOCHS, LR, BATCH = 40, 1e-3, 64

_CACHE: dict[int, tuple[Any, float]] = {}


def init(seed: int = 0) -> dict:
  """He-initialized params ``{'conv1': {'kernel' (3, 3, cin, cout), 'bias'}, ..., 'fc2': ...}``."""
  rng = np.random.default_rng(seed)
  he = lambda shape, fan_in: jnp.asarray(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in), jnp.float32)
  params = {
    f"conv{i + 1}": {"kernel": he((3, 3, m, n), 9 * m), "bias": jnp.zeros((n,))} for i, (m, n) in enumerate(CONVS)
  }
  params |= {f"fc{i + 1}": {"kernel": he((m, n), m), "bias": jnp.zeros((n,))} for i, (m, n) in enumerate(DENSE)}
  return params


def apply(params: dict, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """Logits of images ``(batch, 8, 8, 1)``; with ``key``, dropout before the last layer."""
  for name in ("conv1", "conv2"):
    x = jax.lax.conv_general_dilated(
      x, params[name]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    x = jax.nn.relu(x + params[name]["bias"])
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  if key is not None:
    x = jnp.where(jax.random.bernoulli(key, 1 - DROPOUT, x.shape), x / (1 - DROPOUT), 0.0)
  return x @ params["fc2"]["kernel"] + params["fc2"]["bias"]


def eval_apply(params: dict, x: jax.Array) -> jax.Array:
  """The teacher in inference mode (no dropout)."""
  return apply(params, x)


def trained(trainer: Any) -> tuple[dict, float]:
  """The teacher's params trained on ``trainer.data`` (cached), and its test accuracy."""
  key = id(trainer.data)
  if key in _CACHE:
    return _CACHE[key]
  data = trainer.data
  params = _teacher.fit(apply, init(0), data.train_images, data.train_labels, trainer.epochs(EPOCHS), LR, BATCH)
  acc = _teacher.accuracy(eval_apply, params, data.test_images, data.test_labels)
  print(f"\nFitNets teacher (LeNet-5 layout, convs {CONVS[0][1]}-{CONVS[1][1]}): test accuracy {acc:.2%}")
  _CACHE[key] = (params, acc)
  return _CACHE[key]
