"""Prune and quantize a Flax NNX model in your own loop, with nnx.Optimizer.

An MLP on scikit-learn's digits (bundled with scikit-learn: nothing is downloaded) is
trained with gradual magnitude pruning to 80% sparsity and quantization-aware training
(int8 weights per channel, int8 activations, int8 matmuls), in an ordinary NNX loop:

  model = jc.train.Compressed(MLP(...), compressor)   # an nnx.Module
  opt = jc.train.Optimizer(model, optax.adamw(...))    # an nnx.Optimizer
  loss, grads = nnx.value_and_grad(loss_fn)(model)     # as for any NNX model
  opt.update(model, grads)                              # masked, projected step

Run: ``python examples/nnx_optimizer_prune_qat.py`` (a few seconds on a CPU; ``--smoke``: 20 steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import jaxcompress as jc


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(64, 64, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)
    self.fc2 = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.drop(jax.nn.relu(self.fc1(x))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--smoke", action="store_true", help="20 steps: the whole path, every check, in seconds")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 20

  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(x))
  train, test = order[:1400], order[1400:]

  sparsity = jc.pruning.polynomial_sparsity(0.8, begin_step=0, end_step=max(1, args.steps // 2), frequency=5)
  compressor = jc.chain(
    jc.pruning.magnitude(sparsity, total_steps=args.steps),
    jc.quantization.qat(8, 8),  # fake-quantized weights, quantized activations, int8 matmuls
  )
  model = jc.train.Compressed(MLP(nnx.Rngs(0, dropout=1)), compressor)
  opt = jc.train.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4))

  @nnx.jit
  def step(model, opt, xb, yb):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(1)
  for i in range(args.steps):
    idx = rng.choice(train, 128, replace=False)
    loss = step(model, opt, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    if i % 100 == 0:
      print(f"step {i:4d}  loss {float(loss):.3f}")

  model.eval()  # Dropout off; the same compressor's rewrite runs the int8 model
  logits = nnx.jit(lambda model, xb: model(xb))(model, jnp.asarray(x[test]))
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y[test]))
  kernel = model.model_params()["fc1"]["kernel"]
  report = jc.accounting.report(model.pack())
  sparsity_reached = float(jnp.mean(kernel == 0))
  print(f"fc1 sparsity {sparsity_reached:.2f}  accuracy {accuracy:.3f}")
  print(f"packed {report.bytes} B, dense float32 {report.dense_fp32_bytes} B")
  # the schedule ends at steps // 2: the kernel must be at its final 80% sparsity, and packing must pay
  assert abs(sparsity_reached - 0.8) < 0.005, f"fc1 sparsity {sparsity_reached}, expected 0.80"
  assert report.bytes < report.dense_fp32_bytes, "the packed model is not smaller than float32"


if __name__ == "__main__":
  main()
