"""Block-circulant and Toeplitz products with the FFT against the dense matmul, side by side.

Run ``python -m experiments.bench_sharing [--quick] [--batch B]``. For each size ``n`` in
256, 1024, 2048, 4096 and a few block sizes ``b``, it times (jitted, interleaved
repetitions, median) ``y = x @ W`` for ``x: [B, n]`` and

- ``dense``: ``W`` an ``n x n`` float32 array (the matmul the structure replaces);
- ``fft``: :func:`jaxcompress.sharing.circulant_matmul` from the ``n^2 / b`` defining
  vectors (``b = n``: one circulant, Cheng et al. 2015; smaller ``b``: CirCNN's blocks);
- ``toeplitz fft``: :func:`jaxcompress.sharing.toeplitz_matmul` from ``2n - 1``
  diagonals (one row per ``n``);
- ``ldr fft``: :func:`jaxcompress.sharing.ldr_matmul`, a Toeplitz-like matrix of
  displacement rank ``r`` (1, 2, 4) from its ``2 r n`` generators (Sindhwani et al. 2015).

and prints the times and the ratio ``dense / fft`` (> 1: the FFT path is faster).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from experiments import timing
from jaxcompress import sharing

SIZES = (256, 1024, 2048, 4096)
BLOCKS = (64, 256, 1024, 4096)


def runners(n: int, block: int, batch: int):
  """``{name: (fn, x)}`` for the dense and FFT products at size ``n`` and block ``block``."""
  kx, kw = jax.random.split(jax.random.key(n + block))
  x = jax.random.normal(kx, (batch, n))
  vectors = jax.random.normal(kw, (n // block, n // block, block)) / jnp.sqrt(n)
  dense = jax.jit(lambda x, w: x @ w)
  fft = jax.jit(sharing.circulant_matmul)
  w = jax.random.normal(kw, (n, n)) / jnp.sqrt(n)
  return {
    "dense": ((lambda x: dense(x, w)), x),
    "fft": ((lambda x: fft(x, vectors)), x),
  }


def toeplitz_runners(n: int, batch: int):
  """``{name: (fn, x)}`` for the dense and FFT Toeplitz products at size ``n``."""
  kx, kw = jax.random.split(jax.random.key(n))
  x = jax.random.normal(kx, (batch, n))
  t = jax.random.normal(kw, (2 * n - 1,)) / jnp.sqrt(n)
  w = jax.random.normal(kw, (n, n)) / jnp.sqrt(n)
  dense = jax.jit(lambda x, w: x @ w)
  fft = jax.jit(sharing.toeplitz_matmul, static_argnums=2)
  return {"dense": ((lambda x: dense(x, w)), x), "fft": ((lambda x: fft(x, t, n)), x)}


def ldr_runners(n: int, rank: int, batch: int):
  """``{name: (fn, x)}`` for the dense product and the Toeplitz-like one of displacement rank ``rank``."""
  kx, kw = jax.random.split(jax.random.key(n + rank))
  x = jax.random.normal(kx, (batch, n))
  g, h = jax.random.normal(kw, (2, rank, n)) / n**0.5
  w = jax.random.normal(kw, (n, n)) / jnp.sqrt(n)
  dense = jax.jit(lambda x, w: x @ w)
  return {"dense": ((lambda x: dense(x, w)), x), "fft": ((lambda x: sharing.ldr_matmul(x, g, h, n)), x)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
  parser.add_argument("--batch", type=int, default=64, help="rows of x (default 64)")
  parser.add_argument(
    "--sizes", type=str, default=None, help="comma-separated sizes n (default: all; --quick: 256,1024)"
  )
  args = parser.parse_args()
  reps, inner = (3, 3) if args.quick else (7, 10)
  sizes = SIZES[:2] if args.quick else SIZES
  if args.sizes:
    sizes = tuple(int(n) for n in args.sizes.split(","))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; batch {args.batch}")
  print(f"{'n':>5} {'block':>5} {'params':>9} {'dense ms':>9} {'fft ms':>9} {'dense/fft':>9}")
  for n in sizes:
    for block in [b for b in BLOCKS if b <= n]:
      times = timing.interleaved(runners(n, block, args.batch), reps, inner)
      d, f = timing.median_ms(times["dense"]), timing.median_ms(times["fft"])
      print(f"{n:>5} {block:>5} {n * n // block:>9} {d:>9.3f} {f:>9.3f} {d / f:>9.2f}", flush=True)
  print("\nToeplitz (2n - 1 diagonals), one FFT product of length >= 2n - 1:")
  print(f"{'n':>5} {'dense ms':>9} {'fft ms':>9} {'dense/fft':>9}")
  for n in sizes:
    times = timing.interleaved(toeplitz_runners(n, args.batch), reps, inner)
    d, f = timing.median_ms(times["dense"]), timing.median_ms(times["fft"])
    print(f"{n:>5} {d:>9.3f} {f:>9.3f} {d / f:>9.2f}", flush=True)
  print("\nToeplitz-like, displacement rank r (2 r n generators): r circulant and r skew-circulant FFT products:")
  print(f"{'n':>5} {'r':>5} {'params':>9} {'dense ms':>9} {'fft ms':>9} {'dense/fft':>9}")
  for n in sizes:
    for rank in (1, 2, 4):
      times = timing.interleaved(ldr_runners(n, rank, args.batch), reps, inner)
      d, f = timing.median_ms(times["dense"]), timing.median_ms(times["fft"])
      print(f"{n:>5} {rank:>5} {2 * rank * n:>9} {d:>9.3f} {f:>9.3f} {d / f:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
