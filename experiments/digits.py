"""The main job: compress LeNet-300-100 and LeNet-5 on the digits with every recipe.

Run ``python -m experiments.digits [--quick | --full] [--out DIR] [--seeds N]``. For each seed
(which sets the init and the batch order) it trains the dense baselines, applies every
registered recipe, packs the result, measures its bytes with
``jaxcompress.accounting.report``, round-trips it through ``jaxcompress.export`` and
scores the *loaded* model. It prints a table, the per-stage table of staged rows (Deep
Compression), the Huffman streams against their entropy bound and a targets check, and writes
``results.json``, ``pareto.png`` and ``reproduction.md`` (published claims beside the run,
from ``experiments/claims.py``) into ``--out`` (and ``mixed_precision.png`` when the
mixed-precision rows ran: automatic bit allocations against uniform bit-widths by bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np
from tqdm.auto import tqdm

import jaxcompress as jc
from experiments import claims, data, models, recipes, report
from experiments.training import Trainer

BASELINE = {
  "lenet300100": (50, 1e-3),
  "lenet5": (60, 3e-3),
  "mlp64": (50, 3e-3),
  "lenet5bn": (60, 3e-3),
} | dict.fromkeys(models.COMPACT, (40, 3e-3))  # (epochs, adam lr)
QUICK_RECIPES = (
  "dense",
  "magnitude_90",
  "int8",
  "prune90_kmeans16",
  "qat_w4a8",
  "served_w8a8",
)  # --quick: a smoke test


def same_tree(a, b) -> bool:
  """Whether two packed trees have the same structure and bit-identical leaves."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  if ta != tb:
    return False
  return all(
    np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
  )


_materialize = jax.jit(jc.export.materialize_tree)  # one compile instead of many eager ops


def _score(trainer, compressor, params, cstate, packed, path, serve=None) -> tuple[int, object, float]:
  """Saves ``packed``, loads it back and scores the loaded model: (file bytes, loaded tree, accuracy)."""
  file_bytes = jc.export.save(path, packed)
  loaded = jc.export.load(path)
  if serve:  # the packed model through its deployment path (e.g. integer matmuls)
    served = serve(trainer.model.apply, loaded, cstate)
    return file_bytes, loaded, trainer.accuracy(None, lambda _, x: served(x))
  # The model as the compressor sees it (quantized activations, integer matmuls, ...).
  forward = jax.jit(compressor.rewrite(trainer.model.apply, params, cstate))
  return file_bytes, loaded, trainer.accuracy(_materialize(loaded), forward)


def _stage(name, file_bytes, accuracy, packed, loaded) -> dict:
  return {
    "stage": name,
    "file_bytes": file_bytes,
    "bytes": jc.accounting.report(packed).bytes,
    "accuracy": accuracy,
    "roundtrip_ok": same_tree(packed, loaded),
  }


def _streams(reports) -> list[dict]:
  """Each Huffman stream: raw, coded (payload + table), table and Shannon-bound bytes, the code's
  payload bits before padding, its block and model, and the codes tried (block, payload bits, table bytes, model)."""
  return [
    {
      "path": r.path,
      "raw_bytes": r.raw_bytes,
      "coded_bytes": r.coded_bytes,
      "table_bytes": r.table_bytes,
      "entropy_bytes": r.entropy_bytes,
      "payload_bits": r.payload_bits,
      "block": r.block,
      "model": r.model,
      "candidates": [list(c) for c in r.candidates],
      "used": r.coded,
    }
    for r in reports
  ]


def evaluate(trainer, technique, fit, plan, path, first=None) -> dict:
  """Packs a trained state, saves and reloads it, and scores the loaded model.

  With a first phase (``first = (plan, fit)``) or Huffman coding, every stage's file is also
  saved, loaded and scored: the row's ``stages`` (the per-stage table) and ``huffman_streams``.
  """
  compressor = plan.compressor
  params, cstate = fit.state.params, fit.state.cstate
  packed = compressor.pack(params, cstate)
  stages, streams = [], []
  if first is not None:
    fplan, ffit = first
    fpacked = fplan.compressor.pack(ffit.state.params, ffit.state.cstate)
    fpath = path.replace(".safetensors", f".{fplan.stage or 'first'}.safetensors")
    fbytes, floaded, facc = _score(trainer, fplan.compressor, ffit.state.params, ffit.state.cstate, fpacked, fpath)
    stages.append(_stage(fplan.stage or "first", fbytes, facc, fpacked, floaded))
  if plan.huffman is not None:
    qpath = path.replace(".safetensors", f".{plan.stage or 'packed'}.safetensors")
    qbytes, qloaded, qacc = _score(trainer, compressor, params, cstate, packed, qpath, plan.serve)
    stages.append(_stage(plan.stage or "packed", qbytes, qacc, packed, qloaded))
    packed, reports = jc.export.huffman(packed, with_report=True, min_saving=plan.huffman, block=plan.huffman_block)
    streams = _streams(reports)
  rep = jc.accounting.report(packed)
  file_bytes, loaded, accuracy = _score(trainer, compressor, params, cstate, packed, path, plan.serve)
  if stages:
    stages.append(_stage("huffman" if plan.huffman is not None else plan.stage, file_bytes, accuracy, packed, loaded))
  forward = jax.jit(compressor.rewrite(trainer.model.apply, params, cstate))
  x1 = trainer.example_inputs(1)
  if plan.flops:
    flops = plan.flops(trainer.model.apply, loaded, x1)
  else:
    flops = jc.graph.flops(trainer.model.apply, compressor.apply(params, cstate), x1)["flops"]
  row = {
    "technique": technique,
    "accuracy": accuracy,
    "accuracy_apply": trainer.accuracy(compressor.apply(params, cstate), forward),
    "bytes": rep.bytes,
    "served_flops": int(flops),
    "dense_bytes": rep.dense_fp32_bytes,
    "sparsity": 1 - rep.nonzeros / rep.size,
    "file_bytes": file_bytes,
    "roundtrip_ok": same_tree(packed, loaded),
    "train_seconds": fit.seconds + (first[1].seconds if first else 0.0),
    "compile_seconds": fit.compile_seconds + (first[1].compile_seconds if first else 0.0),
  }
  if stages:
    row["stages"] = stages
  if streams:
    row["huffman_streams"] = streams
  return row


def run_model(name, seed, digits, registry, budget, out, progress) -> list[dict]:
  """Trains one baseline and runs every recipe that applies to ``name``."""
  model, fn, init_params = models.build(name, seed)
  trainer = Trainer(fn, digits, budget=budget, progress=progress)
  epochs, lr = BASELINE[name]
  # identity, or batch-statistics BatchNorm training followed by re-estimated running statistics
  compressor, finish = models.baseline_training(name, fn, init_params, trainer.example_inputs(1))
  base = trainer.fit(
    init_params, compressor, epochs=trainer.epochs(epochs), lr=lr, seed=seed, desc=f"{name} s{seed} baseline"
  )
  params = finish(base.state.params, trainer.calibration_batches(len(digits.train_labels) // trainer.batch_size))
  # the reference every ratio of the per-stage table is taken against: the dense float32 file
  dense_file = jc.export.save(os.path.join(out, "packed", f"{name}-dense-float32-s{seed}.safetensors"), params)
  rows = []
  for recipe in (r for r in registry.values() if name in r.models):
    plan = recipe.build(params, trainer)
    start, first = (init_params if plan.from_init else params), None
    if plan.start is not None:  # a pre-training stage (FitNets' hints)
      start = plan.start(start)
    if plan.first is not None:  # an earlier phase (Deep Compression's pruning), trained from the baseline
      fp = plan.first
      ffit = trainer.fit(
        start,
        fp.compressor,
        epochs=fp.epochs,
        lr=fp.lr,
        seed=seed + 1000,
        desc=f"{name} s{seed} {recipe.name} 1",
        loss=fp.loss,
      )
      start, first = fp.compressor.apply(ffit.state.params, ffit.state.cstate), (fp, ffit)
    fit = trainer.fit(
      start,
      plan.compressor,
      epochs=plan.epochs,
      lr=plan.lr,
      seed=seed + 1000,
      desc=f"{name} s{seed} {recipe.name}",
      loss=plan.loss,
    )
    if recipe.name == "dense":  # the dense row reports the baseline's own training time
      fit = dataclasses.replace(fit, seconds=base.seconds, compile_seconds=base.compile_seconds)
    path = os.path.join(out, "packed", f"{name}-{recipe.name}-s{seed}.safetensors")
    row = evaluate(trainer, recipe.name, fit, plan, path, first)
    rows.append(
      {
        "model": name,
        "seed": seed,
        "model_flops": model.flops(),
        "epochs": plan.epochs + (plan.first.epochs if plan.first else 0),
        "dense_file_bytes": dense_file,
        **row,
      }
    )
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help=f"smoke test: 1 seed, few epochs, recipes {', '.join(QUICK_RECIPES)}"
  )
  parser.add_argument(
    "--full", action="store_true", help="every recipe (also those marked full_only) over 3 seeds: the reproduction run"
  )
  parser.add_argument("--out", default="out", help="output folder (default: out/)")
  parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1; --full 3)")
  parser.add_argument(
    "--no-progress", action="store_true", help="hide progress bars (they are off when stderr is not a terminal)"
  )
  parser.add_argument("--recipes", default=None, help="comma-separated recipe names to run (default: all)")
  parser.add_argument(
    "--compile-cache",
    default=None,
    help="JAX's persistent compilation cache (default: OUT/jax-cache; 'none': off). Each recipe compiles "
    "its training step anew for every seed, and compiling is most of a row's time on CPU: later seeds "
    "(and later runs) read the same programs from the cache",
  )
  args = parser.parse_args(argv)
  args.no_progress = args.no_progress or not sys.stderr.isatty()  # no control codes in a log file
  seeds = args.seeds or (3 if args.full else 1)  # the default run must stay under 10 minutes on 2 cores
  budget = 0.2 if args.quick else 1.0
  os.makedirs(os.path.join(args.out, "packed"), exist_ok=True)
  cache = args.compile_cache or os.path.join(args.out, "jax-cache")
  if cache != "none":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

  start = time.perf_counter()
  digits = data.load()
  registry = recipes.discover()
  full_only = {k for k, v in registry.items() if v.full_only}
  chosen = args.recipes or (",".join(QUICK_RECIPES) if args.quick else None)
  if chosen:
    wanted = set(chosen.split(",")) | {"dense"}
    unknown = wanted - set(registry)
    if unknown:
      parser.error(f"unknown recipes {sorted(unknown)}; available: {sorted(registry)}")
    registry = {k: v for k, v in registry.items() if k in wanted}
  elif not args.full:
    registry = {k: v for k, v in registry.items() if not v.full_only}
  # a model's baseline trains only when a recipe other than the dense row needs it
  needs = lambda name, rs: any(name in r.models for r in rs)
  others = [r for r in registry.values() if r.name != "dense"]
  used = [n for n in models.MODELS if needs(n, others)] or [n for n in models.MODELS if needs(n, registry.values())]
  jobs = [(name, seed) for seed in range(seeds) for name in used]
  rows = []
  for name, seed in tqdm(jobs, desc="models x seeds", disable=args.no_progress):
    rows += run_model(name, seed, digits, registry, budget, args.out, not args.no_progress)
  summary = report.summarize(rows)
  passed, check = report.targets(summary, judge=not args.quick)
  wall = time.perf_counter() - start

  flops = {r["model"]: r["model_flops"] for r in rows}
  print(
    f"\ndigits: {len(digits.train_labels)} train / {len(digits.test_labels)} test, "
    f"{seeds} seed(s){', quick' if args.quick else ''}; forward FLOPs/example: "
    + ", ".join(f"{k} {v:,}" for k, v in flops.items())
  )
  print(
    "packed B = jaxcompress.accounting.report(pack(...)).bytes; ratio vs dense float32; "
    "FLOPs = graph.flops per example of the model as served (matmuls and convs only); file B = export.save size; train s = fine-tune loop (dense: baseline), compile excluded; "
    "io = save/load bit-exact and loaded accuracy == apply accuracy"
  )
  print(report.table(summary))
  stages = report.stage_table(summary)
  if stages:
    print(
      "\nper stage (Deep Compression's Table 1 shape): bytes of the file on disk, ratio vs the dense float32 file, "
      "accuracy of the loaded file"
    )
    print(stages)
    print(
      "\nHuffman streams: coded = payload + table of the code chosen (kept, or not where it saves too little); "
      "over bound = payload bits (before padding) / (n * H) - 1, one symbol at a time, in pairs, and of the "
      "code chosen (an extended code 'ext xM': blocks of M symbols under the stored single-symbol model); "
      "target: coded <= 1.01 * bound + table, i.e. payload bits <= 1.01 n H"
    )
    print(report.stream_table(summary))
  print(check)
  compact = [n for n in models.COMPACT if n in flops]
  if compact:  # the compact rows' CPU inference time, against LeNet-5, side by side in one run
    from experiments import bench_compact

    print("\ninference on this CPU (initial weights, jitted forward of the test batch; measured under this run's load)")
    print(bench_compact.measure(compact, reps=5, inner=10))
  print(f"wall time: {wall:.1f}s")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(
      {
        "seeds": seeds,
        "quick": args.quick,
        "wall_seconds": wall,
        "flops": flops,
        "targets_passed": None if args.quick else passed,
        "summary": summary,
        "runs": rows,
      },
      f,
      indent=1,
    )
  report.pareto_plot(summary, os.path.join(args.out, "pareto.png"))
  with open(os.path.join(args.out, "reproduction.md"), "w") as f:
    f.write(report.reproduction(summary, claims.CLAIMS, full_only=set() if args.full else full_only))
  print(f"wrote {args.out}/results.json, {args.out}/pareto.png and {args.out}/reproduction.md")
  note = report.mixed_precision_note(summary)
  if note:
    print(note)
  if report.mixed_precision_plot(summary, os.path.join(args.out, "mixed_precision.png")):
    print(f"wrote {args.out}/mixed_precision.png")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
