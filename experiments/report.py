"""Summaries of the digits runs: the table, the targets check and the Pareto plot."""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

Row = dict[str, Any]


def summarize(rows: Iterable[Row]) -> list[Row]:
  """Aggregates per-seed rows into one row per (model, technique), in input order.

  Accuracy is reported as mean and sample std over seeds, in percent; bytes are the
  mean over seeds (sparse formats vary by a few bytes with the surviving pattern).
  """
  groups: dict[tuple[str, str], list[Row]] = collections.OrderedDict()
  for r in rows:
    groups.setdefault((r["model"], r["technique"]), []).append(r)
  out = []
  for (model, technique), rs in groups.items():
    acc = 100 * np.array([r["accuracy"] for r in rs])
    nbytes = float(np.mean([r["bytes"] for r in rs]))
    out.append(
      {
        "model": model,
        "technique": technique,
        "seeds": len(rs),
        "acc_mean": float(acc.mean()),
        "acc_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
        "bytes": nbytes,
        "flops": float(np.mean([r.get("served_flops", 0) for r in rs])),
        "file_bytes": float(np.mean([r["file_bytes"] for r in rs])),
        "ratio": rs[0]["dense_bytes"] / nbytes,
        "sparsity": float(np.mean([r["sparsity"] for r in rs])),
        "train_seconds": float(np.mean([r["train_seconds"] for r in rs])),
        "roundtrip_ok": all(r["roundtrip_ok"] for r in rs),
        "packed_matches_apply": all(r["accuracy"] == r["accuracy_apply"] for r in rs),
        **_file_fields(rs),
      }
    )
  return out


def _file_fields(rs: list[Row]) -> Row:
  """The ratio against the dense float32 file and, for staged rows, the per-stage means."""
  if not all("dense_file_bytes" in r for r in rs):
    return {}
  dense = float(np.mean([r["dense_file_bytes"] for r in rs]))
  out: Row = {"dense_file_bytes": dense, "file_ratio": dense / float(np.mean([r["file_bytes"] for r in rs]))}
  if all("stages" in r for r in rs):
    stages = []
    for i, first in enumerate(rs[0]["stages"]):
      acc = 100 * np.array([r["stages"][i]["accuracy"] for r in rs])
      nbytes = float(np.mean([r["stages"][i]["file_bytes"] for r in rs]))
      stages.append(
        {
          "stage": first["stage"],
          "file_bytes": nbytes,
          "ratio": dense / nbytes,
          "acc_mean": float(acc.mean()),
          "acc_std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
          "roundtrip_ok": all(r["stages"][i]["roundtrip_ok"] for r in rs),
        }
      )
    out["stages"] = stages
  if all("huffman_streams" in r for r in rs):
    streams = []
    # by path: a stream can exist in some seeds only (a SparseArray picks bitmask or relative positions)
    by_path = [{h["path"]: h for h in r["huffman_streams"]} for r in rs]
    for first in rs[0]["huffman_streams"]:
      seen = [b[first["path"]] for b in by_path if first["path"] in b]
      mean = lambda key, seen=seen: float(np.mean([h[key] for h in seen]))
      bound, coded, table = mean("entropy_bytes"), mean("coded_bytes"), mean("table_bytes")
      over = {}  # code -> (payload bits / bound - 1, table bytes), means over the seeds that tried it
      for key in dict.fromkeys(_code_key(c) for h in seen for c in h.get("candidates", ())):
        got = [c for h in seen for c in h.get("candidates", ()) if _code_key(c) == key]
        bits, tab = float(np.mean([g[1] for g in got])), float(np.mean([g[2] for g in got]))
        over[key] = ((bits / (8 * bound) - 1) if bound else 0.0, tab)
      streams.append(
        {
          "path": first["path"],
          "raw_bytes": mean("raw_bytes"),
          "coded_bytes": coded,
          "table_bytes": table,
          "entropy_bytes": bound,
          "payload_over_bound": (mean("payload_bits") / (8 * bound) - 1) if bound else 0.0,
          "over_bound_by_block": {str(b): v for b, v in over.items()},
          # the target, coded <= 1.01 * bound + table, in bits: padding to a byte left out
          "within_target": mean("payload_bits") <= 1.01 * 8 * bound,
          "used": all(h["used"] for h in seen),
          "seeds": len(seen),
          "block": first.get("block", 1),
          "model": first.get("model"),
          "codes_kept": sorted({_code_name(h.get("block", 1), h.get("model")) for h in seen if h["used"]}),
        }
      )
    out["huffman_streams"] = streams
  return out


def _code_key(candidate: list) -> str:
  """A tried code's key: its block length, ``'x'`` before it for an extended code (``'1'``, ``'2'``, ``'x3'``)."""
  block, model = candidate[0], candidate[3] if len(candidate) > 3 else None
  return f"{'x' if model == 'product' else ''}{block}"


def _code_name(block: int, model: str | None) -> str:
  if model == "product":
    return f"ext x{block}"
  return "pairs" if block == 2 else "single"


def stage_table(summary: list[Row]) -> str:
  """The per-stage table of the staged rows (Deep Compression's Table 1 shape): after each
  stage, the file's bytes on disk, its ratio against the dense float32 file, and the loaded
  file's accuracy; the dense file first. Empty when no row has stages."""
  staged = [s for s in summary if s.get("stages")]
  if not staged:
    return ""
  dense_acc = {s["model"]: s["acc_mean"] for s in summary if s["technique"] == "dense"}
  head = f"{'model':<12} {'technique':<17} {'stage':<10} {'file B':>9} {'ratio':>7} {'test acc %':>14} {'io':>3}"
  lines = [head, "-" * len(head)]
  for s in staged:
    acc = dense_acc.get(s["model"])
    dense = f"{acc:.2f}" if acc is not None else "-"
    lines.append(
      f"{s['model']:<12} {s['technique']:<17} {'dense f32':<10} {s['dense_file_bytes']:>9,.0f} {1:>6.1f}x {dense:>14}"
    )
    for st in s["stages"]:
      a = f"{st['acc_mean']:.2f} ± {st['acc_std']:.2f}"
      ok = "ok" if st["roundtrip_ok"] else "BAD"
      lines.append(
        f"{'':<12} {'':<17} {st['stage']:<10} {st['file_bytes']:>9,.0f} {st['ratio']:>6.1f}x {a:>14} {ok:>3}"
      )
  return "\n".join(lines)


def stream_table(summary: list[Row]) -> str:
  """Each Huffman stream's bytes beside its Shannon bound (means over seeds): the code's payload
  bits (before padding) over ``n * H``, one symbol at a time, in pairs where tried (with the
  pair table's bytes) and for the code chosen; whether that code meets ``coded <= 1.01 * bound
  + table`` (in bits: payload bits before padding <= 1.01 * n * H); and whether the file keeps
  the code (and which: ``single``, ``pairs``, ``ext xM`` for an extended code of M-symbol blocks)."""
  rows = [(s, h) for s in summary for h in s.get("huffman_streams", ())]
  if not rows:
    return ""
  head = (
    f"{'model':<12} {'stream':<30} {'raw B':>6} {'coded B':>7} {'table B':>7} {'bound B':>8} "
    f"{'over, 1':>8} {'over, 2':>8} {'table 2':>7} {'over':>8} {'target':>6} used"
  )
  lines = [head, "-" * len(head)]
  for s, h in rows:
    by = h.get("over_bound_by_block", {})
    one = f"{100 * by['1'][0]:+.2f}%" if "1" in by else f"{100 * h['payload_over_bound']:+.2f}%"
    two, tab2 = (f"{100 * by['2'][0]:+.2f}%", f"{by['2'][1]:,.0f}") if "2" in by else ("-", "-")
    kept = h.get("codes_kept") or [_code_name(h.get("block", 1), h.get("model"))]
    used = f"yes ({', '.join(kept)})" if h["used"] else "no"
    over = f"{100 * h['payload_over_bound']:+.2f}%"
    lines.append(
      f"{s['model']:<12} {h['path']:<30} {h['raw_bytes']:>6,.0f} {h['coded_bytes']:>7,.0f} {h['table_bytes']:>7,.0f} "
      f"{h['entropy_bytes']:>8,.1f} {one:>8} {two:>8} {tab2:>7} {over:>8} {'ok' if h.get('within_target') else 'no':>6} "
      f"{used}"
    )
  return "\n".join(lines)


def table(summary: list[Row]) -> str:
  """Renders the summary as a fixed-width text table."""
  head = (
    f"{'model':<12} {'technique':<15} {'test acc %':>14} {'packed B':>9} {'ratio':>6} {'FLOPs':>8} "
    f"{'sparsity':>8} {'file B':>8} {'train s':>7} {'io':>3}"
  )
  lines = [head, "-" * len(head)]
  for s in summary:
    acc = f"{s['acc_mean']:.2f} ± {s['acc_std']:.2f}"
    ok = "ok" if s["roundtrip_ok"] and s["packed_matches_apply"] else "BAD"
    lines.append(
      f"{s['model']:<12} {s['technique']:<15} {acc:>14} {s['bytes']:>9,.0f} {s['ratio']:>5.1f}x {s['flops']:>8,.0f} "
      f"{s['sparsity']:>8.3f} {s['file_bytes']:>8,.0f} {s['train_seconds']:>7.2f} {ok:>3}"
    )
  return "\n".join(lines)


def targets(summary: list[Row], model: str = "lenet300100", *, judge: bool = True) -> tuple[bool, str]:
  """The project's accuracy targets on ``model``: baseline >= 97%, magnitude_90 within
  1 point of it, int8 within 0.5 points. Returns ``(all passed, one-line report)``; with
  ``judge=False`` (a quick run, for which the targets are not set) the report gives the
  values without verdicts."""
  acc = {s["technique"]: s["acc_mean"] for s in summary if s["model"] == model}
  base = acc.get("dense", np.nan)
  prune_drop = base - acc.get("magnitude_90", np.nan)
  int8_drop = base - acc.get("int8", np.nan)
  checks = [
    (f"baseline {base:.2f}>=97", base >= 97.0),
    (f"magnitude_90 drop {prune_drop:.2f}<=1", prune_drop <= 1.0),
    (f"int8 drop {int8_drop:.2f}<=0.5", int8_drop <= 0.5),
  ]
  checks = [(text.split(" ")[0] + " not run", False) if "nan" in text else (text, ok) for text, ok in checks]
  passed = all(ok for _, ok in checks)
  if not judge:
    values = "; ".join(text.split("<=")[0].split(">=")[0] for text, _ in checks)
    return passed, f"targets ({model}): not judged in a quick run (set for the full run); values: {values}"
  parts = [f"{text} {'PASS' if ok else 'FAIL'}" if "not run" not in text else text for text, ok in checks]
  return passed, f"targets ({model}): " + "; ".join(parts) + f" => {'PASS' if passed else 'FAIL'}"


# technique name -> family, first match wins (a row may also carry its own "family")
FAMILIES = (
  ("dense", r"dense$"),
  ("distillation", r"(kd|dkd|dist|ce)(_.*)?$"),
  ("hybrid", r"(deep_compression|prune90_.*|.*_then_.*|svd25_int8|.*_kmeans.*|.*prune.*_.*)$"),
  ("pruning", r"(magnitude|global|gradual|lottery|rigl|nm|channels|snip|movement|prune).*"),
  ("low-bit", r"(binary|xnor|twn|ttq|pot|lsq|bnn|.*w2).*"),
  ("quantization", r"(int\d|ptq|qat|served|mixed|hawq|w\da\d).*"),
  ("sharing", r"(kmeans|hashed|circulant|toeplitz|cross_layer|tied).*"),
  ("low-rank", r"(svd|spatial|tucker|cp|lora|lowrank).*"),
)
_STYLE = {  # family: (colour, marker)
  "dense": ("black", "*"),
  "pruning": ("tab:blue", "o"),
  "quantization": ("tab:orange", "s"),
  "low-bit": ("tab:red", "v"),
  "sharing": ("tab:green", "D"),
  "low-rank": ("tab:purple", "^"),
  "distillation": ("tab:brown", "P"),
  "hybrid": ("tab:pink", "X"),
  "other": ("tab:gray", "."),
}


def family(technique: str) -> str:
  """The family a technique's row belongs to, from its name (:data:`FAMILIES`)."""
  import re

  for name, pattern in FAMILIES:
    if re.match(pattern, technique):
      return name
  return "other"


def pareto_plot(summary: list[Row], path: str) -> None:
  """Accuracy versus packed bytes (log x), one panel per model: each family has its colour
  and marker (legend), every row is a point with its spread over seeds, the Pareto frontier
  is a step line, and only frontier points are labelled, where a label does not collide
  with another (labels that would are left out). Rows far below the baseline are listed
  under the panel instead of stretching its accuracy axis."""
  import matplotlib

  matplotlib.use("Agg")
  import textwrap

  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter

  models = list(dict.fromkeys(s["model"] for s in summary))
  models = [m for m in models if any(s["model"] == m and s["technique"] != "dense" for s in summary)] or models
  cols = min(2, len(models))  # two panels a row: four in one row are too small to read
  rows = -(-len(models) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 6 * rows), squeeze=False)
  for ax in axes.flat[len(models) :]:
    ax.set_visible(False)
  for ax, model in zip(axes.flat, models):
    pts = [s for s in summary if s["model"] == model]
    dense = next((s["acc_mean"] for s in pts if s["technique"] == "dense"), max(s["acc_mean"] for s in pts))
    floor = max(min(s["acc_mean"] - s["acc_std"] for s in pts) - 0.5, dense - 10.0)
    shown = [s for s in pts if s["acc_mean"] >= floor]
    hidden = [s for s in pts if s["acc_mean"] < floor]
    seen = set()
    for s in shown:
      fam = s.get("family") or family(s["technique"])
      colour, marker = _STYLE.get(fam, _STYLE["other"])
      ax.errorbar(
        s["bytes"], s["acc_mean"], yerr=s["acc_std"], marker=marker, color=colour, markersize=6, linestyle="none",
        capsize=2, alpha=0.85, label=None if fam in seen else fam,
      )  # fmt: skip
      seen.add(fam)
    front = _frontier(shown)
    ax.step([s["bytes"] for s in front], [s["acc_mean"] for s in front], where="post", color="black", alpha=0.35)
    ax.set_xscale("log")
    xs = [s["bytes"] for s in shown]
    if max(xs) > 20 * min(xs):  # decade labels only, as minor ones would collide; a narrow span keeps them
      ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(floor, min(100.0, max(s["acc_mean"] + s["acc_std"] for s in shown) + 0.6))
    xlabel = "packed bytes (log scale)"
    if hidden:  # under the axis label, so that the layout leaves room for it
      names = ", ".join(f"{s['technique']} {s['acc_mean']:.1f}%" for s in hidden)
      xlabel += "\n" + textwrap.fill(f"below {floor:.1f}% (not drawn): {names}", 85)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: accuracy vs. size (frontier labelled)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8, title="family", title_fontsize=8)  # where it hides the fewest points
    _label_frontier(fig, ax, front)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _label_frontier(fig: Any, ax: Any, front: list[Row]) -> None:
  """Labels the frontier points, trying a few offsets each and skipping any that would overlap."""
  renderer = fig.canvas.get_renderer()
  taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
  offsets = ((5, 4), (5, -11), (-8, 8), (-8, -14), (5, 14), (5, -20))
  for s in front:
    for dx, dy in offsets:
      text = ax.annotate(
        s["technique"], (s["bytes"], s["acc_mean"]), xytext=(dx, dy), textcoords="offset points", fontsize=7,
        ha="left" if dx > 0 else "right",
      )  # fmt: skip
      box = text.get_window_extent(renderer).expanded(1.05, 1.15)
      inside = ax.get_window_extent(renderer)
      fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
      if fits and not any(box.overlaps(t) for t in taken):
        taken.append(box)
        break
      text.remove()


def _frontier(points: list[Row]) -> list[Row]:
  """Points not beaten by a smaller-or-equal one with higher accuracy, by bytes."""
  front, best = [], -np.inf
  for s in sorted(points, key=lambda s: (s["bytes"], -s["acc_mean"])):
    if s["acc_mean"] > best:
      front.append(s)
      best = s["acc_mean"]
  return front


def _mixed_series(summary: list[Row], model: str) -> dict[str, list[Row]]:
  """The uniform ``int{b}`` rows and the ``mixed_hawq_*`` / ``mixed_loss_*`` rows of a model,
  by bytes."""
  import re

  pts = [s for s in summary if s["model"] == model]
  series = {
    "uniform bits (QAT)": [s for s in pts if re.fullmatch(r"int[2-8]", s["technique"])],
    "HAWQ-v2 mixed (QAT)": [s for s in pts if s["technique"].startswith("mixed_hawq_")],
    "measured-loss mixed (QAT)": [s for s in pts if s["technique"].startswith("mixed_loss_")],
  }
  return {k: sorted(v, key=lambda s: s["bytes"]) for k, v in series.items() if v}


def mixed_precision_note(summary: list[Row]) -> str:
  """One line per model: each automatic allocation against the uniform row at its budget
  (``mixed_hawq_3bit`` vs ``int3``), accuracy difference in points (seeds averaged) and bytes."""
  acc = {(s["model"], s["technique"]): s for s in summary}
  lines = []
  for model in dict.fromkeys(s["model"] for s in summary):
    parts = []
    for kind in ("hawq", "loss"):
      for b in (2, 3, 4):
        mixed, uniform = acc.get((model, f"mixed_{kind}_{b}bit")), acc.get((model, f"int{b}"))
        if mixed and uniform:
          parts.append(
            f"{kind} {b}-bit budget: {mixed['acc_mean']:.2f}% vs uniform {uniform['acc_mean']:.2f}% "
            f"({mixed['acc_mean'] - uniform['acc_mean']:+.2f} points; {mixed['bytes']:,.0f} B vs {uniform['bytes']:,.0f} B)"
          )
    if parts:
      lines.append(f"mixed precision ({model}): " + "; ".join(parts))
  return "\n".join(lines)


def mixed_precision_plot(summary: list[Row], path: str) -> bool:
  """Accuracy versus packed bytes of the automatic bit allocations against uniform
  bit-widths, one panel per model with such rows. Returns whether a plot was written
  (False when no mixed-precision row ran)."""
  models = [m for m in dict.fromkeys(s["model"] for s in summary) if len(_mixed_series(summary, m)) > 1]
  if not models:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5), squeeze=False)
  for ax, model in zip(axes[0], models):
    for (label, pts), marker in zip(_mixed_series(summary, model).items(), "osd"):
      x, y, e = ([s[k] for s in pts] for k in ("bytes", "acc_mean", "acc_std"))
      ax.errorbar(x, y, yerr=e, marker=marker, capsize=3, label=label)
      for s in pts:
        ax.annotate(s["technique"], (s["bytes"], s["acc_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("packed bytes")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: mixed precision vs uniform bits")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def reproduction(summary: list[Row], claims: dict[str, Any], full_only: Collection[str] = ()) -> str:
  """``reproduction.md``: for each row with a published claim (``experiments.claims``), the
  paper's claim beside what the digits run shows and whether the direction agrees.

  Args:
    summary: :func:`summarize`'s rows of this run.
    claims: ``{recipe name: Claim}``.
    full_only: names of the rows that run only under ``--full``: a claim on one of them that
      this run left out reads ``--full only`` (``not run`` is kept for the other rows missing),
      and so does the verdict of a row whose reference row is one of them.
  """
  by = {(s["model"], s["technique"]): s for s in summary}
  lines = [
    "# Reproduction: published claims beside the digits run",
    "",
    "The digits (8x8, 1,797 images) are not the papers' data and the models are smaller, so only the",
    "*direction* of each claim is compared: a row agrees when it loses at most the claim's allowed points",
    "against its reference row (the dense baseline, or the named control) and, where the claim is about",
    "size, reaches the claim's compression (ratio against the dense float32 file on disk). Numbers are",
    "the papers' own, with the table or section; a claim without a certain figure is stated in words.",
    "Rows marked `--full only` are slow and run only in `python -m experiments.digits --full`; rows marked",
    "`not run` were left out of this run (a `--recipes` subset or `--quick`).",
    "",
    "| technique | paper (where) | paper's model / data | paper's claim | digits model | digits: accuracy (ref) | size ratio | agrees |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, c in claims.items():
    runs = [s for s in summary if s["technique"] == name]
    claim = f"{c.claim}" + (f" ({c.number})" if c.number else "")
    if not runs:
      missing = "--full only" if name in full_only else "not run"
      lines.append(
        f"| {c.technique} (`{name}`) | {c.reference} ({c.where}) | {c.model} / {c.data} | {claim} | - | {missing} | - | - |"
      )
      continue
    for s in runs:
      ref_model = c.versus_model or s["model"]
      ref = by.get((ref_model, c.versus))
      ratio = s.get("file_ratio", s["ratio"])
      if ref is None:
        verdict = f"reference `{c.versus}` --full only" if c.versus in full_only else "no reference row"
        acc = f"{s['acc_mean']:.2f}"
      else:
        drop = ref["acc_mean"] - s["acc_mean"]
        ok = drop <= c.max_drop and (c.min_ratio is None or ratio >= c.min_ratio)
        verdict = "yes" if ok else "no"
        label = c.versus if ref_model == s["model"] else f"{ref_model} {c.versus}"
        acc = f"{s['acc_mean']:.2f} ± {s['acc_std']:.2f} ({label} {ref['acc_mean']:.2f}; drop {drop:+.2f}, allowed {c.max_drop:g})"
      need = f", needs {c.min_ratio:g}x" if c.min_ratio else ""
      lines.append(
        f"| {c.technique} (`{name}`) | {c.reference} ({c.where}) | {c.model} / {c.data} | {claim} | {s['model']} "
        f"| {acc} | {ratio:.1f}x{need} | {verdict} |"
      )
  return "\n".join(lines) + "\n"
