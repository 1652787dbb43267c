"""Low-rank serving: parameters, FLOPs and CPU inference time, dense and factorized side by side.

Run ``python -m experiments.bench_lowrank [--quick] [--only dense|conv] [--allocator both|default|serving]``.
It prints, for

1. Dense layers: LeNet-300-100 and an MLP 1024-4096-4096-10, every kernel by truncated
   SVD at 25% and 10% of its full rank (``lowrank.svd(0.25)``, ``svd(0.1)``);
2. a conv layer ``(3, 3, 64, 128)`` (SAME, on 16×16 inputs): spatial SVD, Tucker-2 and CP
   at a quarter of the kernel's parameters (``ratio=0.25``),

the parameters, FLOPs (``jc.graph.flops`` of the served function) and the measured
inference time of the dense model (the faster of ``jax.jit`` and ``lowrank.serve`` given the
dense params, which compiles with serve's XLA option) against ``lowrank.serve`` (the factorized ops through
``jc.graph.rewrite``), at batch 256, the speed-up, and the speed-up as a fraction of the
FLOP ratio (the target is at least 0.7); after ``|``, the same for the factorized program
given the packed NumPy leaves at every call and compiled by a plain ``jax.jit``, as
``lowrank.serve`` did before it put them on the device once (a host-to-device copy per array
per call) and compiled with its XLA option. Kernels are random: the time does not depend on
the values. ``graph.flops`` counts matmuls and convolutions only: CP's two depthwise stages,
served as shifted multiply-adds, add ``2·(h + w)·R`` FLOPs per output pixel that it omits
(printed below the table). Below the conv rows: the model's bias add alone, timed in each
row's interleaving (both programs end with it, and it writes the program's fresh 32 MiB
result, page-faulted on every call), the GFLOP/s of each program without it, and the
``speed-up x FLOP ratio`` the factors would reach at the dense conv's GFLOP/s (this fixed
cost alone keeps that under 0.7 here).

The conv rows are printed twice (``--allocator both``, the default), labelled: under glibc
malloc's defaults and under malloc configured for serving (``SERVING_MALLOC``: blocks under
64 MiB from the heap, freed memory kept). With the defaults the 32 MiB result of every call
is a fresh ``mmap`` (32 MiB is glibc's largest dynamic mmap threshold), page-faulted as it is
written: on the 2-core machine the bias add alone then costs 7-8 ms instead of ~2 ms, more
than a quarter of what the factorized program may take to reach 0.7. The setting not in this
process's environment runs in a child process (``python -m experiments.bench_lowrank --only
conv --allocator ...``) started with the ``MALLOC_`` variables it needs, rather than by
``mallopt`` through ``ctypes``: glibc reads them before the first allocation, so JAX's and
XLA's own allocations follow the same policy, as a server's launcher would set it, and
``mallopt`` cannot switch glibc's dynamic threshold back on, so the default rows could not
follow it in one process. The library never changes the allocator (``lowrank.serve`` does
not call ``mallopt``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxcompress as jc
from experiments import bench_overhead, timing
from jaxcompress import lowrank

CONV_SHAPE = (3, 3, 64, 128)
# glibc's malloc configured for serving: blocks under 64 MiB come from the heap (not a fresh,
# page-faulted mmap per call) and freed memory is kept, not trimmed back to the kernel
SERVING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
CONV_VARIANTS = {
  "spatial SVD": lambda: lowrank.spatial_svd(ratio=0.25),
  "Tucker-2": lambda: lowrank.tucker2(ratio=0.25),
  "CP": lambda: lowrank.cp(ratio=0.25),
}


def conv_layer(params: dict, x: jax.Array) -> jax.Array:
  """One Flax-layout conv (``NHWC``, ``HWIO``, SAME) plus bias."""
  y = jax.lax.conv_general_dilated(
    x, params["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return y + params["conv"]["bias"]


def count(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def row(apply_fn, params, compressor, x, reps, inner, extra=None):
  """``(params, FLOPs, ms)`` of the dense model and of the factorized one, the report, the
  host-leaves ms and the ms of each ``extra`` runner (interleaved with the others)."""
  trainable, state = compressor.init(params)
  packed = compressor.pack(trainable, state)
  served = lowrank.serve(apply_fn, packed)
  np.testing.assert_allclose(
    served(x), apply_fn(jc.export.materialize_tree(packed), x), rtol=2e-3, atol=2e-3 * float(jnp.abs(x).max())
  )
  dense_fn = jax.jit(apply_fn)
  dense_served = lowrank.serve(apply_fn, params)  # the dense model compiled as serve compiles (its XLA option)
  f_dense = jc.graph.flops(apply_fn, params, x)["flops"]
  f_fact = jc.graph.flops(lowrank.factorized(apply_fn), packed, x)["flops"]
  host = jax.jit(lowrank.factorized(apply_fn))  # the same program, given the packed NumPy leaves at every call
  times = timing.interleaved(
    {
      "dense": (lambda _: dense_fn(params, x), x),
      "dense, serve's option": (lambda _: dense_served(x), x),
      "factorized": (lambda _: served(x), x),
      "host leaves": (lambda _: host(packed, x), x),
      **(extra or {}),
    },
    reps,
    inner,
  )
  dense_ms = min(timing.median_ms(times["dense"]), timing.median_ms(times["dense, serve's option"]))
  return (
    (count(params), f_dense, dense_ms),
    (count(packed), f_fact, timing.median_ms(times["factorized"])),
    lowrank.report(state),
    timing.median_ms(times["host leaves"]),
    {name: timing.median_ms(times[name]) for name in extra or {}},
  )


def show(name, dense, fact, host_ms):
  (pd, fd, td), (pf, ff, tf) = dense, fact
  speed, flop_ratio = td / tf, ff / fd
  before = td / host_ms
  print(
    f"  {name:<36} {pd:>10,} -> {pf:>9,} {pf / pd:>6.3f} {fd:>14,} -> {ff:>13,} {flop_ratio:>6.3f} "
    f"{td:>8.3f} -> {tf:>7.3f} {speed:>6.2f}x {speed * flop_ratio:>6.2f} | {host_ms:>7.3f} {before:>6.2f}x "
    f"{before * flop_ratio:>6.2f}"
  )


def main(argv=None) -> int:
  parser = timing.parser(__doc__)
  parser.add_argument("--only", choices=("dense", "conv"), help="run only the dense layers or only the conv layer")
  parser.add_argument(
    "--allocator",
    choices=("both", "default", "serving"),
    default="both",
    help="the conv rows under glibc's default malloc, under SERVING_MALLOC, or both (default; one of them "
    "in a child process started with the MALLOC_ environment it needs)",
  )
  args = parser.parse_args(argv)
  here = allocator()
  print(timing.banner(args.batch, f", allocator: {ALLOCATORS[here]}"))
  header = (
    f"  {'':<36} {'params':>23} {'ratio':>6} {'FLOPs/batch':>31} {'ratio':>6} {'inference ms':>19} "
    f"{'speed-up':>7} {'x FLOP ratio (target >= 0.7)':>6} | before: NumPy leaves per call (ms, speed-up, x FLOP ratio)"
  )
  rng = np.random.default_rng(0)
  if args.only != "conv":
    dense_rows(args, rng, header)
  if args.only != "dense":
    for setting in ("default", "serving"):
      if args.allocator not in ("both", setting):
        continue
      if setting == here:
        print(f"\n== conv rows, allocator: {ALLOCATORS[setting]}")
        conv_rows(args, rng, header)
      else:
        sys.stdout.flush()
        rerun(args, setting)
  return 0


ALLOCATORS = {
  "default": "glibc malloc's defaults (no MALLOC_ tunables)",
  "serving": "glibc malloc configured for serving (" + " ".join(f"{k}={v}" for k, v in SERVING_MALLOC.items()) + ")",
  "other": "MALLOC_ tunables other than SERVING_MALLOC",
}


def allocator() -> str:
  """Which of ``ALLOCATORS`` this process runs under (glibc reads the ``MALLOC_`` variables at start-up)."""
  tunables = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
  return "default" if not tunables else "serving" if tunables == SERVING_MALLOC else "other"


def rerun(args, setting: str) -> None:
  """The conv rows in a fresh process whose environment holds ``setting``'s ``MALLOC_`` variables."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env.update(SERVING_MALLOC if setting == "serving" else {})
  cmd = [sys.executable, "-m", "experiments.bench_lowrank", "--only", "conv", "--allocator", setting]
  cmd += ["--batch", str(args.batch)] + (["--quick"] if args.quick else [])
  subprocess.run(cmd, env=env, check=True)


def dense_rows(args, rng, header) -> None:
  print("\n1. Dense layers, truncated SVD of every kernel")
  print(header)
  for model, sizes in bench_overhead.MODELS.items():
    big = max(sizes) >= 1024
    reps, inner = ((3, 2) if args.quick else (9, 5)) if big else ((5, 20) if args.quick else (15, 100))
    params = bench_overhead.init_mlp(sizes)
    x = jnp.asarray(rng.normal(size=(args.batch, sizes[0])), jnp.float32)
    for frac in (0.25, 0.1):
      dense, fact, _, host_ms, _ = row(bench_overhead.mlp, params, lowrank.svd(frac), x, reps, inner)
      show(f"{model.split()[0]} rank {frac:.0%}", dense, fact, host_ms)


def conv_rows(args, rng, header) -> None:
  print(f"\n2. conv {CONV_SHAPE} SAME on {args.batch}x16x16x{CONV_SHAPE[2]}, ratio=0.25")
  print(header)
  params = {
    "conv": {
      "kernel": jnp.asarray(rng.normal(size=CONV_SHAPE) / np.sqrt(np.prod(CONV_SHAPE[:3])), jnp.float32),
      "bias": jnp.zeros((CONV_SHAPE[3],), jnp.float32),
    }
  }
  x = jnp.asarray(rng.normal(size=(args.batch, 16, 16, CONV_SHAPE[2])), jnp.float32)
  reps, inner = (3, 3) if args.quick else (9, 10)
  bias, y = params["conv"]["bias"], jax.jit(conv_layer)(params, x)
  add = jax.jit(lambda b, y: y + b)
  fixed = {"bias add": (lambda _: add(bias, y), y)}
  rows = []
  for name, make in CONV_VARIANTS.items():
    dense, fact, rep, host_ms, more = row(conv_layer, params, make(), x, reps, inner, fixed)
    show(f"{name} ranks {rep[0].ranks}", dense, fact, host_ms)
    rows.append((name, dense, fact, more["bias add"]))
    if name == "CP":
      extra = 2 * (CONV_SHAPE[0] + CONV_SHAPE[1]) * rep[0].ranks[0] * args.batch * 16 * 16
      print(f"  (CP's depthwise multiply-adds, not in graph.flops: {extra:,} FLOPs, {extra / fact[1]:.1%} more)")
  faults = {"default": ", page-faulted every call", "serving": ", on pages kept from the last call"}.get(
    allocator(), ""
  )
  print(
    "\n  fixed cost both programs pay: the model's bias add alone (reads the conv's output, writes a fresh "
    f"{y.nbytes / 2**20:.0f} MiB result{faults}), timed in each row's interleaving; without it, "
    "the GFLOP/s of the rest, and the speed-up x FLOP ratio that the factors would reach at the dense conv's "
    "GFLOP/s:"
  )
  for name, (_, fd, td), (_, ff, tf), t_add in rows:
    rho, rest = ff / fd, td - t_add
    print(
      f"  {name:<12} bias add {t_add:7.3f} ms; dense {fd / rest / 1e6:6.1f} GFLOP/s, factorized "
      f"{ff / (tf - t_add) / 1e6:6.1f} GFLOP/s; at the dense conv's GFLOP/s {rho * td / (t_add + rest * rho):.2f}"
    )


if __name__ == "__main__":
  raise SystemExit(main())
