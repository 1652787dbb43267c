"""Pruning costs, measured side by side in one run.

Run ``python -m experiments.bench_pruning [--quick]``. It prints

1. the masked training step against dense (adam, cross-entropy, batch 256) for
   LeNet-300-100 and an MLP 1024-4096-4096-10: layer-wise and global 90% magnitude
   pruning at a constant sparsity;
2. the cost of one mask update, layer-wise and global top-k (``update`` on a step where
   the schedule changes every target), against one dense training step;
3. structured pruning: LeNet-5 and LeNet-300-100 with 50% of the channels / hidden
   units of every prunable group removed by ``pruning.channel_prune`` and made physically
   narrower with ``pruning.narrow_nnx``: parameters, FLOPs (``graph.flops``) and
   measured CPU inference time of the smaller model against the dense one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxcompress as jc
from experiments import bench_overhead, models, timing
from jaxcompress import graph, pruning

STEP_VARIANTS = {
  "dense": jc.identity,
  "masked 90% layer-wise": lambda: pruning.magnitude(0.9),
  "masked 90% global": lambda: pruning.magnitude(0.9, scope="global"),
}


def mask_update_runners(sizes, x, y):
  """One dense step vs ``update`` alone when every layer's mask is recomputed."""
  step, state = bench_overhead.compiled_step(bench_overhead.init_mlp(sizes), jc.identity(), x, y)
  runners = {"dense training step": ((lambda s: step(s, x, y)[0]), state)}
  ramp = lambda t: jnp.minimum(0.5 + 0.001 * jnp.asarray(t, jnp.float32), 0.95)  # a new target every step
  for scope in ("layer", "global"):
    c = pruning.magnitude(ramp, scope=scope)
    p, s = c.init(bench_overhead.init_mlp(sizes))  # fresh arrays: the dense step donates its own
    update = jax.jit(c.update)
    runners[f"mask update ({scope} top-k)"] = (lambda ps, update=update: update(*ps), (p, s))
  return runners


def structured_rows(name, x, quick):
  """Params, FLOPs and inference time of the channel-pruned, narrowed model vs dense."""
  model, fn, params = models.build(name, 0)
  c = pruning.channel_prune(0.5, apply_fn=fn.apply, inputs=[x[:1]])
  small, state = c.init(params)
  narrow = pruning.narrow_nnx(model, state, params)
  dense_count = sum(p.size for p in jax.tree.leaves(params))
  small_count = sum(p.size for p in jax.tree.leaves(small))

  def forward(m):
    graphdef, st = nnx.split(m)
    return (lambda s, x: nnx.merge(graphdef, s)(x)), st

  (f_dense, s_dense), (f_small, s_small) = forward(model), forward(narrow)
  np.testing.assert_allclose(f_small(s_small, x), fn.apply(c.apply(small, state), x), rtol=1e-4, atol=1e-4)
  flops_dense = graph.flops(f_dense, s_dense, x)["flops"]
  flops_small = graph.flops(f_small, s_small, x)["flops"]
  jd, js = jax.jit(f_dense), jax.jit(f_small)
  reps, inner = (5, 20) if quick else (15, 100)
  times = timing.interleaved(
    {"dense": ((lambda _: jd(s_dense, x)), x), "narrow": ((lambda _: js(s_small, x)), x)}, reps, inner
  )
  t_dense, t_small = timing.median_ms(times["dense"]), timing.median_ms(times["narrow"])
  return dense_count, small_count, flops_dense, flops_small, t_dense, t_small


def main(argv=None) -> int:
  parser = timing.parser(__doc__)
  args = parser.parse_args(argv)
  print(timing.banner(args.batch))
  rng = np.random.default_rng(1)
  print("\n1. training step (constant sparsity)")
  for model, sizes in bench_overhead.MODELS.items():
    big = max(sizes) >= 1024
    reps = (3 if args.quick else 9) if big else (5 if args.quick else 21)
    inner = 1 if big else (20 if args.quick else 100)
    times = bench_overhead.bench_model(sizes, args.batch, reps, inner, STEP_VARIANTS)
    base = timing.median_ms(times["dense"])
    for name, t in times.items():
      print(f"  {model:<27} {name:<24} {timing.median_ms(t):>9.3f} ms {timing.median_ms(t) / base:>7.3f}x")

  print("\n2. one mask update vs one dense training step")
  for model, sizes in bench_overhead.MODELS.items():
    big = max(sizes) >= 1024
    x = jnp.asarray(rng.normal(size=(args.batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], size=args.batch), jnp.int32)
    times = timing.interleaved(mask_update_runners(sizes, x, y), 3 if big else 7, 1 if big else 20)
    base = timing.median_ms(times["dense training step"])
    for name, t in times.items():
      print(f"  {model:<27} {name:<24} {timing.median_ms(t):>9.3f} ms {timing.median_ms(t) / base:>7.3f}x")

  print("\n3. structured: 50% of each prunable group's channels removed, narrowed model vs dense")
  print(
    f"  {'model':<14} {'params':>17} {'ratio':>6} {'FLOPs/batch':>25} {'ratio':>6} {'inference ms':>17} {'speed-up':>8}"
  )
  for name, shape in (("lenet5", (args.batch, 8, 8, 1)), ("lenet300100", (args.batch, 64))):
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    pd, ps, fd, fs, td, ts = structured_rows(name, x, args.quick)
    print(
      f"  {name:<14} {pd:>8,} -> {ps:>6,} {ps / pd:>6.3f} {fd:>12,} -> {fs:>10,} {fs / fd:>6.3f} "
      f"{td:>7.3f} -> {ts:>6.3f} {td / ts:>7.2f}x"
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
