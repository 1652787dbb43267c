"""CPU inference time of the compact digit models against LeNet-5, side by side.

Run ``python -m experiments.bench_compact [--quick] [--batch B]``. Each model of
``experiments.models.COMPACT`` and LeNet-5 is built at its digits configuration
(8x8x1 inputs, 10 classes), jitted, and timed on the same batch with interleaved
repetitions (median); it prints parameters, multiply-adds per example (``jc.graph.flops``),
float32 bytes, milliseconds per batch and the ratio ``model / lenet5`` (< 1: faster
than LeNet-5). The weights are the initial ones: inference time does not depend on them.
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import numpy as np

import jaxcompress as jc
from experiments import models, timing


def measure(names, batch: int = 360, reps: int = 9, inner: int = 20) -> str:
  """Times ``names`` (LeNet-5 first, the reference) side by side, interleaved, on one batch of
  ``batch`` uniform 8x8x1 inputs; returns the table (params, MACs, bytes, ms, ratio)."""
  x = np.asarray(jax.random.uniform(jax.random.key(0), (batch, 8, 8, 1)))
  names = ("lenet5", *[n for n in names if n != "lenet5"])
  runners, rows = {}, {}
  for name in names:
    _, fn, params = models.build(name, 0)
    forward = jax.jit(fn.apply)
    runners[name] = ((lambda s, f=forward, p=params: (s[0], f(p, s[0]))), (x, forward(params, x)))
    n = sum(math.prod(np.shape(v)) for v in jax.tree.leaves(params))
    rows[name] = (n, jc.graph.flops(fn.apply, params, x[:1])["macs"], 4 * n)
  times = timing.interleaved(runners, reps, inner)
  base = timing.median_ms(times["lenet5"])
  lines = [f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; batch {batch}"]
  lines.append(f"{'model':<20} {'params':>8} {'MACs':>8} {'bytes':>8} {'ms':>8} {'vs lenet5':>9}")
  for name in names:
    n, macs, nbytes = rows[name]
    ms = timing.median_ms(times[name])
    lines.append(f"{name:<20} {n:>8,} {macs:>8,} {nbytes:>8,} {ms:>8.3f} {ms / base:>8.2f}x")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions")
  parser.add_argument("--batch", type=int, default=360, help="examples per call (default 360, the test split)")
  args = parser.parse_args()
  reps, inner = (3, 3) if args.quick else (9, 20)
  print(measure(models.COMPACT, args.batch, reps, inner), flush=True)


if __name__ == "__main__":
  main()
