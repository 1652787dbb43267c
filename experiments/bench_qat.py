"""QAT step time and served inference, jaxcompress vs Qwix, measured side by side.

Run ``python -m experiments.bench_qat [--quick]``. For LeNet-300-100 and an MLP
1024-4096-4096-10 at batch 256 it times one adam cross-entropy training step of: dense
float32; jaxcompress QAT W8A8 with fake quantization (``integer=False``); jaxcompress
QAT with integer forward matmuls, W8A8 and W4A8 (``integer=True``); Qwix's QAT
(``QtProvider``) W8A8 and W4A8 when Qwix is installed. Then it times inference of the
W8A8 model served through ``jaxcompress.quantization.serve`` against float32. Ratios
are to dense, from medians of interleaved repetitions.
Targets on the big MLP (reported, not asserted): integer W8A8 <= 0.8x dense, integer
W4A8 <= 0.9x, served W8A8 >= 4x faster than float32.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxcompress as jc
from experiments import timing
from experiments.bench_overhead import MODELS, init_mlp, mlp
from jaxcompress import quantization

TARGETS = {"ours int W8A8": 0.8, "ours int W4A8": 0.9}


def ce(apply):
  return lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()


def our_step(apply, compressor, params, x, y):
  optimizer = optax.adam(1e-3)
  params = jax.tree.map(jnp.copy, params)  # the step donates its state: no sharing between variants
  state = jc.train.init(params, optimizer, compressor)
  step = jax.jit(jc.train.make_step(ce(apply), optimizer, compressor), donate_argnums=0)
  step = step.lower(state, x, y).compile()
  return (lambda s: step(s, x, y)[0]), state


class NnxMLP(nnx.Module):
  def __init__(self, params: dict):
    self.layers = nnx.List()
    for i in range(1, len(params) + 1):
      k = params[f"fc{i}"]["kernel"]
      layer = nnx.Linear(k.shape[0], k.shape[1], rngs=nnx.Rngs(0))
      layer.kernel[...] = k
      self.layers.append(layer)

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      x = jax.nn.relu(x) if i < len(self.layers) - 1 else x
    return x


def qwix_step(params, weight_qtype, x, y):
  import qwix

  rules = [qwix.QtRule(module_path=".*", weight_qtype=weight_qtype, act_qtype=jnp.int8)]
  model = qwix.quantize_model(NnxMLP(params), qwix.QtProvider(rules), x)
  graphdef, qparams, rest = nnx.split(model, nnx.Param, ...)
  return our_step(lambda p, x: nnx.merge(graphdef, p, rest)(x), jc.identity(), qparams, x, y)


def training_runners(sizes, x, y, with_qwix):
  params = init_mlp(sizes)
  runners = {"dense float32": our_step(mlp, jc.identity(), params, x, y)}
  runners["ours fake-quant W8A8"] = our_step(mlp, quantization.qat(8, 8, integer=False), params, x, y)
  for bits in (8, 4):
    runners[f"ours int W{bits}A8"] = our_step(mlp, quantization.qat(bits, 8, integer=True), params, x, y)
  if with_qwix:
    runners["qwix W8A8"] = qwix_step(params, jnp.int8, x, y)
    runners["qwix W4A8"] = qwix_step(params, jnp.int4, x, y)
  return runners


def inference_runners(sizes, x):
  params = init_mlp(sizes)
  q = quantization.ptq(mlp, params, weight_bits=8, act_bits=8, batches=[x])
  served = quantization.serve(mlp, q.packed, act_ranges=q.act_ranges)
  dense = jax.jit(mlp)
  return {
    "float32 inference": (lambda s: dense(params, x), x),
    "served W8A8 inference": (lambda s: served(x), x),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions")
  parser.add_argument("--batch", type=int, default=256)
  args = parser.parse_args(argv)
  try:
    import qwix

    with_qwix, qwix_version = True, qwix.__version__
  except ImportError:
    with_qwix, qwix_version = False, "not installed"
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, qwix {qwix_version}, batch {args.batch}; "
    f"median ms over interleaved repetitions; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
  )
  head = f"{'model':<27} {'variant':<24} {'ms':>9} {'vs dense':>9} {'target':>12}"
  print(head + "\n" + "-" * len(head))
  rng = np.random.default_rng(1)
  for model, sizes in MODELS.items():
    big = max(sizes) >= 1024
    reps = (3 if args.quick else 9) if big else (5 if args.quick else 21)
    inner = 1 if big else (10 if args.quick else 50)
    x = jnp.asarray(rng.normal(size=(args.batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], size=args.batch), jnp.int32)
    for group in (training_runners(sizes, x, y, with_qwix), inference_runners(sizes, x)):
      times = timing.interleaved(group, reps, inner)
      base = timing.median_ms(next(iter(times.values())))
      for name, t in times.items():
        ms = timing.median_ms(t)
        goal = TARGETS.get(name) if big else None
        verdict = "" if goal is None else f"<={goal:.2f} {'ok' if ms / base <= goal else 'MISS'}"
        print(f"{model:<27} {name:<24} {ms:>9.3f} {ms / base:>8.3f}x {verdict:>12}")
      if "served W8A8 inference" in times:
        speedup = base / timing.median_ms(times["served W8A8 inference"])
        target = " (target >= 4x)" if big else ""
        print(f"{model:<27} {'served speed-up':<24} {speedup:>9.2f}x{target}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
