"""Deploy from the file alone: structured prune + QAT W8A8 -> one file -> a narrow, integer-served model.

Trains a small NNX MLP on scikit-learn's bundled digits (no download), prunes half of its
hidden channels and fine-tunes it with integer QAT (int8 weights and activations), then
writes one safetensors file holding the packed weights *and* the serving parameters
(activation ranges, bits). A second part, which uses nothing but the file and the model's
class, rebuilds the narrowed module and the integer-served function and checks that they
give what the in-memory model gave. Runs in seconds on a CPU:

  python examples/deploy_from_file.py            # --smoke: no training steps, every check
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import jaxcompress as jc


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def data():
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  return jnp.asarray(x[:1500]), jnp.asarray(digits.target[:1500]), jnp.asarray(x[1500:]), digits.target[1500:]


def apply_of(model):
  """``apply(params, x)`` of an NNX module, on a plain nested dict of params."""
  graphdef = nnx.graphdef(model)
  return lambda params, x: nnx.merge(graphdef, params)(x)


def train_and_save(path: str, dense_steps: int, tune_steps: int) -> tuple[float, np.ndarray]:
  """Part 1 (the training side): returns the in-memory served model's accuracy and outputs."""
  x, y, xt, yt = data()
  model = MLP(nnx.Rngs(0))
  apply = apply_of(model)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
  dense = jc.chain()
  for c, steps in ((dense, dense_steps), (None, tune_steps)):
    if c is None:  # prune half the hidden channels, then fine-tune with integer QAT
      c = jc.chain(
        jc.pruning.channel_prune(0.5, apply_fn=apply, inputs=[x[:8]]),
        jc.quantization.qat(8, 8, apply_fn=apply, batches=[x[:512]]),
      )
    opt = optax.adam(3e-3)
    state = jc.train.init(params, opt, c)
    step = jax.jit(jc.train.make_step(loss, opt, c))
    for _ in range(steps):
      state, _ = step(state, x, y)
    if c is not dense:
      break
    params = c.apply(state.params, state.cstate)
    print(f"dense: accuracy {float(np.mean(np.asarray(apply(params, xt)).argmax(-1) == yt)):.3f}")
  packed = c.pack(state.params, state.cstate)
  ranges = jc.quantization.activation_ranges(state.cstate)  # the QAT stage's calibrated activation ranges
  extras = jc.quantization.serving_extras(ranges, act_bits=8)
  nbytes = jc.export.save(path, packed, version=4, extras=extras)
  compact = jc.export.save(path + ".v5", packed, extras=extras)  # the default, smallest layout, for comparison
  small = jc.pruning.narrow_nnx(model, params=packed)
  full_width = np.asarray(apply(c.apply(state.params, state.cstate), xt))  # the pruned model at its original widths
  assert np.allclose(np.asarray(small(xt)), full_width, atol=1e-5), "the narrowed module is not the pruned model"
  served = jc.quantization.serve(apply_of(small), jc.export.narrowed(packed), act_ranges=ranges)
  out = np.asarray(served(xt))
  acc = float(np.mean(out.argmax(-1) == yt))
  print(
    f"in memory: W8A8, hidden 64 -> {small.hidden.out_features}, accuracy {acc:.3f}, file {nbytes} B (format 5: {compact} B)"
  )
  return acc, out


def deploy(path: str) -> tuple[float, np.ndarray]:
  """Part 2 (the serving side): only the file and the model's class."""
  *_, xt, yt = data()
  with jc.export.open_file(path) as f:
    print("tensors:", ", ".join(f.names))
    small = jc.pruning.narrow_nnx(MLP(nnx.Rngs(1)), params=f.read())  # a fresh init: every value comes from the file
  served = jc.quantization.serve_file(path, apply_of(small), narrow=True)
  out = np.asarray(served(xt))
  acc = float(np.mean(out.argmax(-1) == yt))
  print(f"from the file: hidden {small.hidden.out_features}, accuracy {acc:.3f}")
  return acc, out


def main(dense_steps: int = 150, tune_steps: int = 60) -> tuple[np.ndarray, np.ndarray]:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "mlp.safetensors")
    acc, expected = train_and_save(path, dense_steps, tune_steps)
    acc_file, got = deploy(path)
  assert acc_file == acc and np.array_equal(got, expected), "the file does not serve what memory served"
  return expected, got


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="skip the training loops; run every other step and check")
  if parser.parse_args().smoke:
    main(dense_steps=0, tune_steps=0)
  else:
    main()
