"""The published claims (``experiments.claims``) and their reproduction table (``report.reproduction``)."""

import re

import pytest

from experiments import claims, recipes, report
from experiments.claims import Claim


@pytest.fixture(scope="module")
def registry():
  return recipes.discover()


def test_every_claim_is_on_a_row_with_its_source_and_reference_row(registry):
  for name, c in claims.CLAIMS.items():
    assert name in registry, f"claim {name!r} names no recipe"
    assert c.versus in registry, f"claim {name!r} compares with {c.versus!r}, which is no recipe"
    assert c.versus_model is None or c.versus_model in registry[c.versus].models, name
    assert re.search(r"(19|20)\d\d", c.reference), f"claim {name!r}: the reference has no year"
    assert re.fullmatch(r"abstract|(Table|Section|Figure) \d+", c.where), f"claim {name!r}: where is {c.where!r}"
    assert c.max_drop >= 0 and (c.min_ratio is None or c.min_ratio > 1), name
    assert c.number is None or c.number.strip(), name


def row(model, technique, acc, ratio=1.0):
  return {"model": model, "technique": technique, "acc_mean": acc, "acc_std": 0.0, "ratio": ratio}


def claim(max_drop, min_ratio=None, versus="dense", versus_model=None):
  return Claim("t", "Someone 2020", "abstract", "M", "D", "acc", None, "c", max_drop, min_ratio, versus, versus_model)


def test_reproduction_agrees_by_drop_and_ratio_and_marks_full_only_rows():
  summary = [
    row("m", "dense", 95.0),
    row("n", "dense", 90.0),
    row("m", "close", 94.5, 10.0),  # drop 0.5 <= 1
    row("m", "far", 93.0, 10.0),  # drop 2.0 > 1
    row("m", "small", 95.0, 3.0),  # no drop, but 3x < 4x
    row("n", "other_model", 89.0),  # against m's dense: drop 6 > 1
    row("k", "no_ref", 80.0),  # model k has no dense row
    row("m", "slow_ref", 94.0),  # its reference row is full-only and was not run
  ]
  table = {
    "close": claim(1.0),
    "far": claim(1.0),
    "small": claim(1.0, min_ratio=4.0),
    "other_model": claim(1.0, versus_model="m"),
    "no_ref": claim(1.0),
    "slow": claim(1.0),
    "absent": claim(1.0),
    "slow_ref": claim(1.0, versus="slow"),
  }
  text = report.reproduction(summary, table, full_only={"slow"})
  lines = {re.search(r"\(`(\w+)`\)", line).group(1): line for line in text.splitlines() if "(`" in line}
  verdict = {k: line.rstrip(" |").rsplit("| ", 1)[1] for k, line in lines.items()}
  assert verdict == {
    "close": "yes",
    "far": "no",
    "small": "no",
    "other_model": "no",
    "no_ref": "no reference row",
    "slow": "-",
    "absent": "-",
    "slow_ref": "reference `slow` --full only",
  }
  assert "--full only" in lines["slow"] and "not run" in lines["absent"] and "not run" not in lines["slow"]
  assert "m dense 95.00; drop +6.00" in lines["other_model"] and "needs 4x" in lines["small"]
