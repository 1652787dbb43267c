"""Per-step cost of compressed training, measured side by side in one run.

Run ``python -m experiments.bench_overhead [--quick]``. For each MLP it jits one adam
cross-entropy step per variant (dense, masked by ``pruning.magnitude(0.9)``, fake-quant
by ``quantization.fake_quant(8)``), compiles and warms them up, then times them
interleaved (the order rotates every repetition to cancel drift) and reports the median
ms/step and the ratio to dense. Targets (reported, not asserted): masked <= 1.05x,
fake-quant <= 1.25x. ``--explain`` adds ablations that split the masked step's
overhead between the masking in ``apply`` and the projection in ``update``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc
from experiments import timing
from jaxcompress import pruning, quantization

VARIANTS = {
  "dense": jc.identity,
  "masked 90%": lambda: pruning.magnitude(0.9),
  "fake-quant int8": lambda: quantization.fake_quant(8),
  "chain prune90 + int8": lambda: jc.chain(pruning.magnitude(0.9), quantization.fake_quant(8)),
}
TARGETS = {"masked 90%": 1.05, "fake-quant int8": 1.25}
MODELS = {"lenet300100 64-300-100-10": (64, 300, 100, 10), "mlp 1024-4096-4096-10": (1024, 4096, 4096, 10)}


def _count_only(params, state, *, grads=None, **extra):
  del grads, extra
  return params, state._replace(count=state.count + 1)


def _unmasked(params, state):
  del state
  return params


def _explain_variants() -> dict:
  """Ablations of the masked step (``--explain``): which part of it costs time."""
  mag = pruning.magnitude(0.9)
  return {
    "  mask in apply": lambda: jc.Compressor(mag.init, mag.apply, _count_only, mag.pack),
    "  mask in update": lambda: jc.Compressor(mag.init, _unmasked, mag.update, mag.pack),
  }


def init_mlp(sizes: tuple[int, ...], seed: int = 0) -> dict:
  """Plain dict params ``{'fc1': {'kernel', 'bias'}, ...}`` with LeCun-normal kernels."""
  rng = np.random.default_rng(seed)
  return {
    f"fc{i + 1}": {
      "kernel": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
      "bias": jnp.zeros((n,), jnp.float32),
    }
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))
  }


def mlp(params: dict, x: jax.Array) -> jax.Array:
  """ReLU MLP over ``fc1, fc2, ...``; the last layer gives logits."""
  n = len(params)
  for i in range(1, n + 1):
    x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
    x = jax.nn.relu(x) if i < n else x
  return x


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


def compiled_step(params, compressor, x, y):
  """A compiled, buffer-donating step and its initial state."""
  optimizer = optax.adam(1e-3)
  state = jc.train.init(params, optimizer, compressor)
  step = jax.jit(jc.train.make_step(loss_fn, optimizer, compressor), donate_argnums=0)
  return step.lower(state, x, y).compile(), state


def bench_model(sizes, batch, reps, inner, variants=VARIANTS) -> dict[str, list[float]]:
  """Seconds per step of every variant on an MLP of ``sizes``, one entry per repetition."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(batch, sizes[0])), jnp.float32)
  y = jnp.asarray(rng.integers(0, sizes[-1], size=batch), jnp.int32)
  runners = {}
  for name, make in variants.items():
    step, state = compiled_step(init_mlp(sizes), make(), x, y)
    runners[name] = ((lambda s, step=step: step(s, x, y)[0]), state)
  return timing.interleaved(runners, reps, inner)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument(
    "--explain", action="store_true", help="also time the masked step's parts: masking in apply, projection in update"
  )
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, "
    f"adam + cross-entropy, median and min over interleaved repetitions; target on the median ratio; "
    f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work skews the ratios)"
  )
  head = f"{'model':<27} {'variant':<16} {'ms/step':>9} {'vs dense':>9} {'min ms':>9} {'vs dense':>9} {'target':>12}"
  print(head + "\n" + "-" * len(head))
  for model, sizes in MODELS.items():
    big = max(sizes) >= 1024
    reps = (3 if args.quick else 15) if big else (5 if args.quick else 21)
    inner = 1 if big else (20 if args.quick else 100)
    variants = {**VARIANTS, **(_explain_variants() if args.explain else {})}
    times = bench_model(sizes, args.batch, reps, inner, variants)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    for name in times:
      ratio = med[name] / med["dense"]
      goal = TARGETS.get(name)
      verdict = "" if goal is None else f"<={goal:.2f} {'ok' if ratio <= goal else 'MISS'}"
      print(
        f"{model:<27} {name:<16} {1e3 * med[name]:>9.3f} {ratio:>8.3f}x "
        f"{1e3 * best[name]:>9.3f} {best[name] / best['dense']:>8.3f}x {verdict:>12}"
      )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
