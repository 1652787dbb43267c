"""Timing side by side: interleaved repetitions, so drift and load hit every variant alike."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def interleaved(runners: dict[str, tuple[Callable[[Any], Any], Any]], reps: int, inner: int) -> dict[str, list[float]]:
  """Seconds per call of each runner, one entry per repetition.

  Args:
    runners: ``{name: (fn, state)}``; ``fn(state) -> state`` is called ``inner`` times
      per repetition (a training step threads its state; inference can return its input).
    reps: repetitions; the order of the runners rotates every repetition.
    inner: calls per timed repetition.

  Returns:
    ``{name: [seconds per call, ...]}``.
  """
  states = {name: state for name, (_, state) in runners.items()}
  for name, (fn, _) in runners.items():  # warm-up
    for _ in range(2):
      states[name] = fn(states[name])
    jax.block_until_ready(states[name])
  times: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for r in range(reps):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      fn, state = runners[name][0], states[name]
      start = time.perf_counter()
      for _ in range(inner):
        state = fn(state)
      jax.block_until_ready(state)
      times[name].append((time.perf_counter() - start) / inner)
      states[name] = state
  return times


def median_ms(times: list[float]) -> float:
  return 1e3 * statistics.median(times)


def parser(doc: str, batch: int = 256) -> argparse.ArgumentParser:
  """A benchmark's command line: ``--quick`` (fewer repetitions) and ``--batch``."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer repetitions")
  p.add_argument("--batch", type=int, default=batch)
  return p


def banner(batch: int, extra: str = "") -> str:
  """The first lines a benchmark prints: the CPU's int8 features, JAX, the batch and the load
  (other work on the machine skews the ratios)."""
  from experiments import ceiling  # ceiling times with this module

  return (
    f"CPU: {ceiling.cpu_features()}\njax {jax.__version__} on {jax.devices()[0].platform}{extra}, batch {batch}; "
    f"medians of interleaved repetitions; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
  )
