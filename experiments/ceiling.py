"""The machine's own limit for integer speed, measured in the same run as a benchmark.

Absolute times and even ratios move with the CPU (AMX-int8 or only AVX512-VNNI), so a
benchmark of served int8 or of an integer forward reports against what this CPU's raw
int8 x int8 -> int32 dot gains over a float32 dot at the benchmark's own shapes.

``python -m experiments.ceiling`` prints the features and the ceiling for the big MLP.
"""

from __future__ import annotations

import platform

import jax
import jax.numpy as jnp
import numpy as np

from experiments import timing

FEATURES = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_features() -> str:
  """The CPU's model name and which of ``FEATURES`` it has (from /proc/cpuinfo on Linux)."""
  name, flags = platform.processor() or "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          name = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  have = [f for f in FEATURES if f in flags]
  return f"{name}; {', '.join(have) if have else 'none of ' + ', '.join(FEATURES)}"


def _dot(dtype):
  out = jnp.int32 if dtype == jnp.int8 else jnp.float32
  return jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=out))


def dot_runners(shapes: list[tuple[int, int, int]], dtype, seed: int = 0) -> dict:
  """``{f'{m}x{k}x{n}': (fn, state)}`` runners for ``timing.interleaved``: one (m, k) @ (k, n) dot each.

  int8 operands contract to int32 (the served and integer-forward matmul); float32 to float32.
  """
  rng = np.random.default_rng(seed)
  runners = {}
  for m, k, n in shapes:
    if dtype == jnp.int8:
      a, b = (jnp.asarray(rng.integers(-127, 128, size=s), jnp.int8) for s in ((m, k), (k, n)))
    else:
      a, b = (jnp.asarray(rng.normal(size=s), dtype) for s in ((m, k), (k, n)))
    fn = _dot(dtype)
    runners[f"{m}x{k}x{n}"] = (lambda s, fn=fn, a=a, b=b: fn(a, b), None)
  return runners


def int8_dot_ceiling(shapes: list[tuple[int, int, int]], reps: int = 7, inner: int = 3) -> dict:
  """Time the float32 and the int8 dots of ``shapes`` side by side (interleaved repetitions).

  Args:
    shapes: ``(m, k, n)`` of each matmul, e.g. one per layer of a model at its batch.
    reps, inner: as ``timing.interleaved``.

  Returns:
    ``{'float32_ms': [...], 'int8_ms': [...], 'speedup': [...], 'total_speedup': float}``: per-shape
    median ms and float32 / int8 ratios, and the ratio of the sums (the whole model's matmuls).
  """
  f32 = {f"f32 {k}": v for k, v in dot_runners(shapes, jnp.float32).items()}
  i8 = {f"i8 {k}": v for k, v in dot_runners(shapes, jnp.int8).items()}
  times = timing.interleaved({**f32, **i8}, reps, inner)
  f = [timing.median_ms(times[k]) for k in f32]
  i = [timing.median_ms(times[k]) for k in i8]
  return {"float32_ms": f, "int8_ms": i, "speedup": [a / b for a, b in zip(f, i)], "total_speedup": sum(f) / sum(i)}


def mlp_shapes(sizes: tuple[int, ...], batch: int) -> list[tuple[int, int, int]]:
  """The forward matmuls of an MLP with layer widths ``sizes`` at ``batch``."""
  return [(batch, a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def main() -> int:
  sizes, batch = (1024, 4096, 4096, 10), 256
  print(f"CPU: {cpu_features()}")
  c = int8_dot_ceiling(mlp_shapes(sizes, batch))
  for shape, f, i, s in zip(mlp_shapes(sizes, batch), c["float32_ms"], c["int8_ms"], c["speedup"]):
    print(f"dot {shape}: float32 {f:.3f} ms, int8 {i:.3f} ms, {s:.2f}x")
  print(f"MLP {'-'.join(map(str, sizes))} at batch {batch}: int8 dot ceiling {c['total_speedup']:.2f}x")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
