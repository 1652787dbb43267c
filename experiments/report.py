"""Summaries of the digits runs: the table, the targets check and the Pareto plot."""

from __future__ import annotations

import collections
from collections.abc import Iterable
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
      }
    )
  return out


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


def pareto_plot(summary: list[Row], path: str) -> None:
  """Accuracy versus packed bytes (log x), one panel per model: every technique is a
  labelled point with its spread over seeds, and the Pareto frontier a step line."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = list(dict.fromkeys(s["model"] for s in summary))
  fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5.5), squeeze=False)
  for ax, model in zip(axes[0], models):
    pts = [s for s in summary if s["model"] == model]
    for s in pts:
      ax.errorbar(s["bytes"], s["acc_mean"], yerr=s["acc_std"], marker="o", markersize=4, linestyle="none", capsize=2)
      ax.annotate(s["technique"], (s["bytes"], s["acc_mean"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    front = _frontier(pts)
    ax.step([s["bytes"] for s in front], [s["acc_mean"] for s in front], where="post", color="black", alpha=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("packed bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: accuracy vs. size (frontier in grey)")
    ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
