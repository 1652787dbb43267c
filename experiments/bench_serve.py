"""Served int8 inference against float32, and against this CPU's own int8 ceiling, in one run.

Run ``python -m experiments.bench_serve [--quick]``. It prints the CPU's int8 features,
then for LeNet-300-100, the MLP 1024-4096-4096-10 and LeNet-5 (convs) at batch 256:
float32 inference (``jax.jit`` of the model) and the W8A8 model served through
``jaxcompress.quantization.serve`` (per-channel int8 weights from ``ptq``, calibrated
asymmetric 8-bit activations; also with symmetric activations, which need no zero-point
correction), timed interleaved. The ceiling is the raw speed-up of ``int8 x int8 ->
int32`` over float32 on the model's own matmuls (``lax.dot_general`` at the same shapes)
and convolutions (float32 ``lax.conv_general_dilated`` against the int8 matmul of their
im2col, which is how ``serve`` runs them: XLA's CPU int8 convolution is slower than its
float32 one, printed too), measured in the same run; each variant prints its speed-up and
its fraction of that ceiling. The model and its raw ops are timed in one interleaved group,
so load hits both alike.
Targets (reported, not asserted): served W8A8 on the big MLP >= 85% of the ceiling;
served LeNet-5 faster than float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import ceiling, models, timing
from experiments.bench_overhead import MODELS, init_mlp, mlp
from jaxcompress import quantization

CEILING_FRACTION = 0.85
LENET5_CONVS = (((3, 3, 1, 6), (8, 8)), ((3, 3, 6, 16), (4, 4)))  # (HWIO kernel, input spatial) of LeNet-5's convs


def conv_runners(kernels, batch: int, dtype, seed: int = 0) -> dict:
  """``{name: (fn, state)}``: one SAME, stride-1 NHWC convolution per ``(kernel, (h, w))``.

  int8 operands contract to int32 (as the served conv), float32 to float32.
  """
  rng = np.random.default_rng(seed)
  out = jnp.int32 if dtype == jnp.int8 else jnp.float32
  fn = jax.jit(
    lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=out
    )
  )
  runners = {}
  for kernel, (h, w) in kernels:
    shapes = ((batch, h, w, kernel[2]), kernel)
    if dtype == jnp.int8:
      a, b = (jnp.asarray(rng.integers(-127, 128, size=s), jnp.int8) for s in shapes)
    else:
      a, b = (jnp.asarray(rng.normal(size=s), dtype) for s in shapes)
    runners[f"conv {kernel} at {h}x{w}"] = (lambda s, a=a, b=b: fn(a, b), None)
  return runners


def im2col_shapes(kernels, batch: int) -> list[tuple[int, int, int]]:
  """The ``(m, k, n)`` matmul each SAME, stride-1 conv becomes as im2col (what ``serve`` runs)."""
  return [(batch * h * w, kh * kw * i, o) for (kh, kw, i, o), (h, w) in kernels]


def ceiling_runners(dots, convs, batch: int) -> dict:
  """The raw ops of a model for the ceiling: ``'f32 ...'`` matmuls and convs, ``'i8 ...'`` matmuls
  (the convs' im2col ones included) and ``'i8conv ...'`` XLA's own int8 convs."""
  runners = {f"f32 {k}": v for k, v in ceiling.dot_runners(dots, jnp.float32).items()}
  runners |= {f"f32 {k}": v for k, v in conv_runners(convs, batch, jnp.float32).items()}
  runners |= {f"i8 {k}": v for k, v in ceiling.dot_runners(dots + im2col_shapes(convs, batch), jnp.int8).items()}
  runners |= {f"i8conv {k}": v for k, v in conv_runners(convs, batch, jnp.int8).items()}
  return runners


def op_ceiling(times: dict) -> tuple[float, float | None]:
  """The int8 ceiling from ``ceiling_runners``' median ms, and the raw int8 conv's own ratio.

  Returns:
    ``(ceiling, conv_ratio)``: float32 time of the matmuls and convs over the int8 time of
    the same matmuls and of the convs' im2col matmuls (patch extraction excluded: the raw
    int8 arithmetic), as a ratio of the sums; and float32 / int8 ``lax.conv_general_dilated``
    of the convs alone (``None`` without convs).
  """
  total = {p: sum(t for k, t in times.items() if k.startswith(p + " ")) for p in ("f32", "i8", "i8conv")}
  f32_convs = sum(t for k, t in times.items() if k.startswith("f32 conv"))
  return total["f32"] / total["i8"], (f32_convs / total["i8conv"] if total["i8conv"] else None)


def served_runners(apply, params, x) -> dict:
  """float32 inference and the W8A8 model served, asymmetric and symmetric activations."""
  dense = jax.jit(apply)
  runners = {"float32": (lambda s: dense(params, x), x)}
  for symmetric in (False, True):
    q = quantization.ptq(apply, params, weight_bits=8, act_bits=8, act_symmetric=symmetric, batches=[x])
    served = quantization.serve(apply, q.packed, act_ranges=q.act_ranges, act_symmetric=symmetric)
    name = "served W8A8" + (" sym" if symmetric else "")
    runners[name] = (lambda s, served=served: served(x), x)
  return runners


def main(argv=None) -> int:
  parser = timing.parser(__doc__)
  args = parser.parse_args(argv)
  print(timing.banner(args.batch))
  head = f"{'model':<27} {'variant':<15} {'ms':>9} {'speed-up':>9} {'of ceiling':>11} {'target':>14}"
  print(head + "\n" + "-" * len(head))
  rng = np.random.default_rng(1)
  cases = []
  for model, sizes in MODELS.items():
    x = jnp.asarray(rng.normal(size=(args.batch, sizes[0])), jnp.float32)
    cases.append((model, mlp, init_mlp(sizes), x, ceiling.mlp_shapes(sizes, args.batch), (), max(sizes) >= 1024))
  _, fn, params = models.build("lenet5", 0)
  x = jnp.asarray(rng.normal(size=(args.batch, 8, 8, 1)), jnp.float32)
  dots = ceiling.mlp_shapes((64, 120, 84, 10), args.batch)
  cases.append(("lenet5 (2 convs + 3 dense)", fn.apply, params, x, dots, LENET5_CONVS, False))
  for model, apply, params, x, dots, convs, big in cases:
    reps = (3 if args.quick else 9) if big else (5 if args.quick else 15)
    inner = 1 if big else (10 if args.quick else 30)
    served = served_runners(apply, params, x)
    times = timing.interleaved({**served, **ceiling_runners(dots, convs, args.batch)}, reps, inner)
    limit, conv_ratio = op_ceiling({k: timing.median_ms(t) for k, t in times.items() if k not in served})
    times = {k: times[k] for k in served}
    base = timing.median_ms(times["float32"])
    print(f"{model:<27} {'int8 ceiling':<15} {'':>9} {limit:>8.2f}x {1:>10.0%}")
    if conv_ratio is not None:
      print(f"{model:<27} {'(lax int8 conv)':<15} {'':>9} {conv_ratio:>8.2f}x   (XLA's own int8 convs vs float32)")
    for name, t in times.items():
      speedup = base / timing.median_ms(t)
      verdict = ""
      if name == "served W8A8" and big:
        verdict = f">={CEILING_FRACTION:.0%} {'ok' if speedup >= CEILING_FRACTION * limit else 'MISS'}"
      elif name == "served W8A8" and convs:
        verdict = f">1x {'ok' if speedup > 1 else 'MISS'}"
      print(
        f"{model:<27} {name:<15} {timing.median_ms(t):>9.3f} {speedup:>8.2f}x {speedup / limit:>10.0%} {verdict:>14}"
      )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
