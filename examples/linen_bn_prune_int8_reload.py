"""A Linen CNN with BatchNorm and dropout: gradual pruning, int8 QAT, one file, reloaded elsewhere.

The usual Flax Linen loop -- ``flax.training.train_state.TrainState``, ``apply(...,
mutable=['batch_stats'])``, a dropout key per step -- with the compressor inside the
optimizer (``jc.train.masked_optimizer``) and ``jc.train.train_state_step`` as the step:

  1. gradual magnitude pruning of the conv and dense kernels to 70% sparsity
     (Zhu & Gupta 2017's polynomial schedule); BatchNorm statistics are updated by the
     model and kept off the optimizer;
  2. a short int8 QAT fine-tune (int8 weights per channel, int8 activations at calibrated
     ranges, integer matmuls and convolutions), the pruning masks held;
  3. ``pack`` and ``jc.export.save`` (one safetensors file: int8 codes, sparse indices,
     BatchNorm statistics and the activation ranges);
  4. a fresh Python process (this file, ``--reload PATH``) rebuilds the integer-served
     model from the file alone; its outputs must equal the in-memory model's bit for bit.

Data: scikit-learn's bundled digits (8x8 images; nothing is downloaded). CPU, seconds:

  python examples/linen_bn_prune_int8_reload.py          # --smoke: a few steps, every check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state
from sklearn.datasets import load_digits

import jaxcompress as jc


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
    x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


def data():
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]
  y = digits.target.astype(np.int32)
  return jnp.asarray(x[:1500]), jnp.asarray(y[:1500]), jnp.asarray(x[1500:]), y[1500:]


def predict(variables, x):
  """The evaluation model: running BatchNorm statistics, no dropout."""
  return CNN().apply(variables, x, train=False)


def loss_fn(variables, x, y, key):
  logits, mutated = CNN().apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), mutated


def fit(variables, compressor, steps, x, y, seed):
  """Trains ``variables`` under ``compressor``; returns (trainable params, compressor state)."""
  params, cstate = compressor.init(variables)
  state = train_state.TrainState.create(
    apply_fn=CNN().apply, params=params, tx=jc.train.masked_optimizer(optax.adam(3e-3), compressor, cstate)
  )
  step = jax.jit(jc.train.train_state_step(loss_fn, compressor))
  rng, key = np.random.default_rng(seed), jax.random.key(seed)
  for i in range(steps):
    idx = rng.choice(len(x), 128, replace=False)
    state, loss = step(state, x[idx], y[idx], jax.random.fold_in(key, i))  # a fresh dropout key each step
    if i % 100 == 0:
      print(f"  step {i:4d}  loss {float(loss):.3f}")
  return state.params, jc.train.compressor_state(state.opt_state)


def accuracy(logits, y):
  return float(np.mean(np.asarray(logits).argmax(-1) == y))


def train_and_save(path: str, prune_steps: int, qat_steps: int) -> np.ndarray:
  x, y, xt, yt = data()
  variables = CNN().init(jax.random.key(0), x[:2])

  print("1. gradual magnitude pruning to 70%")
  schedule = jc.pruning.polynomial_sparsity(0.7, begin_step=0, end_step=max(1, prune_steps * 2 // 3), frequency=10)
  prune = jc.pruning.magnitude(schedule, where=r".*kernel")  # kernels only: not biases, BatchNorm or its stats
  params, cstate = fit(variables, prune, prune_steps, x, y, seed=1)
  variables = prune.apply(params, cstate)
  print(f"  pruned float accuracy {accuracy(predict(variables, xt), yt):.3f}")

  print("2. int8 QAT fine-tune (pruned weights stay zero)")
  # magnitude(0.7) re-derives the same mask from the zeros; QAT calibrates activation ranges
  int8 = jc.chain(
    jc.pruning.magnitude(0.7, where=r".*kernel"),
    jc.quantization.qat(8, 8, apply_fn=predict, batches=[x[:512]]),
  )
  params, cstate = fit(variables, int8, qat_steps, x, y, seed=2)

  print("3. pack and save")
  packed = int8.pack(params, cstate)
  ranges = jc.quantization.activation_ranges(cstate)  # the calibrated ranges of QAT's activation stage
  nbytes = jc.export.save(path, packed, version=4, extras=jc.quantization.serving_extras(ranges, act_bits=8))
  report = jc.accounting.report(packed)
  out = np.asarray(jc.quantization.serve(predict, packed, act_ranges=ranges)(xt))
  kernel = np.asarray(int8.apply(params, cstate)["params"]["Dense_0"]["kernel"])
  print(f"  file {nbytes} B (packed {report.bytes} B, float32 {report.dense_fp32_bytes} B)")
  print(f"  dense kernel sparsity {np.mean(kernel == 0):.3f}")
  assert abs(np.mean(kernel == 0) - 0.7) < 0.01, "the kernel is not at 70% sparsity"
  return out


def reload(path: str, out_path: str) -> None:
  """Runs in a fresh process: the file and the model's class only."""
  *_, xt, _ = data()
  served = jc.quantization.serve_file(path, predict)
  np.save(out_path, np.asarray(served(xt)))


def main(prune_steps: int, qat_steps: int) -> None:
  _, _, _, yt = data()
  with tempfile.TemporaryDirectory() as tmp:
    path, out_path = os.path.join(tmp, "cnn.safetensors"), os.path.join(tmp, "reloaded.npy")
    expected = train_and_save(path, prune_steps, qat_steps)
    print("4. reload in a fresh process")
    subprocess.run([sys.executable, __file__, "--reload", path, "--out", out_path], check=True)
    got = np.load(out_path)
  print(f"  in memory: int8 accuracy {accuracy(expected, yt):.3f}")
  print(f"  reloaded:  int8 accuracy {accuracy(got, yt):.3f}")
  assert np.array_equal(got, expected), "the reloaded model's outputs differ from the in-memory model's"
  print("  outputs equal bit for bit")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="a few steps: the whole path and every check")
  parser.add_argument("--reload", metavar="PATH", help="(internal) serve PATH and write its outputs to --out")
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.reload:
    reload(args.reload, args.out)
  else:
    main(*((30, 5) if args.smoke else (600, 150)))
