"""Checkpoint a compressed training run with Orbax mid-schedule, resume it, and get the same model.

A small MLP on scikit-learn's bundled digits (nothing is downloaded) is trained with gradual
magnitude pruning (polynomial schedule to 90% sparsity) by ``jc.train.make_step``. Its whole
``jc.train.TrainState`` -- params, optax state *and* the compressor's state (masks, step
count) -- is one pytree, so Orbax saves it as it is. Halfway through the schedule the run is
saved, restored into a freshly initialized state (a new jitted step too, as a new process
would have), and continued; the resumed run must equal the straight run bit for bit:

  python examples/orbax_resume.py            # --smoke: a short schedule, the same checks
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from sklearn.datasets import load_digits

import jaxcompress as jc


def init_params(key):
  k1, k2 = jax.random.split(key)
  return {
    "hidden": {"kernel": jax.random.normal(k1, (64, 128)) * 0.125, "bias": jnp.zeros(128)},
    "out": {"kernel": jax.random.normal(k2, (128, 10)) * 0.09, "bias": jnp.zeros(10)},
  }


def apply(params, x):
  h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return h @ params["out"]["kernel"] + params["out"]["bias"]


def loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


def main(steps: int) -> None:
  digits = load_digits()
  x = jnp.asarray(digits.data / 16.0, jnp.float32)
  y = jnp.asarray(digits.target)
  batches = np.random.default_rng(0).integers(0, 1500, size=(steps, 64))  # batch i is the same in both runs

  sparsity = jc.pruning.polynomial_sparsity(0.9, begin_step=0, end_step=steps * 3 // 4, frequency=max(1, steps // 20))
  compressor = jc.pruning.magnitude(sparsity)
  opt = optax.adam(1e-2)

  def fresh():  # what a new process builds before it restores
    return jc.train.init(init_params(jax.random.key(0)), opt, compressor), jax.jit(
      jc.train.make_step(loss, opt, compressor)
    )

  def run(state, step, start, stop):
    for i in range(start, stop):
      state, _ = step(state, x[batches[i]], y[batches[i]])
    return state

  # the straight run
  state, step = fresh()
  straight = run(state, step, 0, steps)

  # the same run, checkpointed at the middle of the pruning schedule
  half = steps // 2
  state, step = fresh()
  state = run(state, step, 0, half)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    del state, step  # nothing from the first half survives but the checkpoint
    target, step = fresh()
    restored = checkpointer.restore(path, target)  # the fresh state gives the tree structure (NamedTuples, masks)
    checkpointer.close()
  assert jax.tree.structure(restored) == jax.tree.structure(target), "restored into a different tree"
  resumed = run(restored, step, half, steps)

  # equal bit for bit: params, optimizer moments, masks and the compressor's step count
  for name, a, b in (("params", straight.params, resumed.params), ("opt_state", straight.opt_state, resumed.opt_state)):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert np.array_equal(np.asarray(u), np.asarray(v)), f"resumed {name} differ from the straight run"
  masks_a, masks_b = compressor.masks(straight.cstate), compressor.masks(resumed.cstate)
  for u, v in zip(jax.tree.leaves(masks_a), jax.tree.leaves(masks_b), strict=True):
    assert np.array_equal(np.asarray(u), np.asarray(v)), "resumed masks differ from the straight run"
  for u, v in zip(jax.tree.leaves(straight.cstate), jax.tree.leaves(resumed.cstate), strict=True):
    assert np.array_equal(np.asarray(u), np.asarray(v)), "resumed compressor state differs"

  model = compressor.apply(resumed.params, resumed.cstate)
  kernel = np.asarray(model["hidden"]["kernel"])
  accuracy = float(np.mean(np.asarray(apply(model, x[1500:])).argmax(-1) == digits.target[1500:]))
  print(f"checkpoint at step {half} of {steps}; resumed run == straight run (params, opt_state, masks, cstate)")
  print(f"hidden sparsity {np.mean(kernel == 0):.3f}  test accuracy {accuracy:.3f}")
  assert abs(np.mean(kernel == 0) - 0.9) < 0.005, "the schedule did not reach 90% sparsity"


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--smoke", action="store_true", help="a 20-step run: the whole path and every check")
  args = parser.parse_args()
  main(20 if args.smoke else args.steps)
