"""Integer matmul throughput: W8A8 and weight-only int8 against bf16.

Run ``python -m experiments.bench_int8_gpu [--quick]`` on any backend. Each row times
``y = x @ W`` (and a 3-layer MLP) for one shape three ways, side by side: bf16 x bf16;
W8A8 (the activation quantized per row on the fly, ``int8 x int8 -> int32``, one
rescale), as ``jaxcompress.quantization.serve`` runs it; and weight-only int8 (int8
weights in memory, dequantized to bf16 inside the jitted matmul). On a GPU the shapes
are the large ones (4096-8192) and decode-like batches (1-16); on a CPU they are scaled
down so the run stays short. Targets on an NVIDIA H200 (reported, not asserted): W8A8
>= 1.2x bf16 at 8192; weight-only int8 >= 1.5x bf16 at batch <= 16.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments import timing


def matmuls(w_f32: jax.Array):
  """The three variants of ``x @ W`` for one weight matrix."""
  scale = jnp.max(jnp.abs(w_f32), axis=0, keepdims=True) / 127
  w_codes = jnp.clip(jnp.round(w_f32 / scale), -127, 127).astype(jnp.int8)
  w_bf16 = w_f32.astype(jnp.bfloat16)

  def bf16(x):
    return x.astype(jnp.bfloat16) @ w_bf16

  def w8a8(x):
    x_scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127
    x_codes = jnp.clip(jnp.round(x / x_scale), -127, 127).astype(jnp.int8)
    acc = jax.lax.dot_general(x_codes, w_codes, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return (acc.astype(jnp.float32) * x_scale * scale).astype(jnp.bfloat16)

  def weight_only(x):
    return x.astype(jnp.bfloat16) @ (w_codes.astype(jnp.bfloat16) * scale.astype(jnp.bfloat16))

  return {"bf16": bf16, "W8A8": w8a8, "weight-only int8": weight_only}


def mlp_variants(weights: list[jax.Array]):
  per_layer = [matmuls(w) for w in weights]

  def chain(name):
    def run(x):
      for i, layer in enumerate(per_layer):
        x = layer[name](x)
        x = jax.nn.relu(x).astype(jnp.float32) if i < len(per_layer) - 1 else x
      return x

    return run

  return {name: chain(name) for name in per_layer[0]}


def _runner(fn, x):
  """A timing runner calling ``fn(x)``; the returned output is only waited on."""
  return (lambda _: fn(x)), x


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  platform = jax.devices()[0].platform
  gpu = platform == "gpu"
  sizes = (4096, 8192) if gpu else (512, 1024)
  batches = (1, 16, 256, 4096) if gpu else (1, 16, 256)
  reps, inner = (3, 5) if args.quick else (7, 20)
  print(f"jax {jax.__version__} on {platform} ({jax.devices()[0].device_kind}); speed-up = bf16 time / variant time")
  head = f"{'shape':<28} {'variant':<18} {'ms':>9} {'speed-up':>9}"
  print(head + "\n" + "-" * len(head))
  rng = np.random.default_rng(0)
  for d in sizes:
    w = jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d), jnp.float32)
    for b in batches:
      x = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
      for label, variants in ((f"matmul {b}x{d}x{d}", matmuls(w)), (f"mlp3 {b}x{d}", mlp_variants([w, w, w]))):
        runners = {name: _runner(jax.jit(fn), x) for name, fn in variants.items()}
        times = timing.interleaved(runners, reps, inner)
        base = timing.median_ms(times["bf16"])
        for name, t in times.items():
          ms = timing.median_ms(t)
          print(f"{label:<28} {name:<18} {ms:>9.3f} {base / ms:>8.2f}x")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
