"""Shared validation of hyperparameters, so every factory rejects bad input the same way.

Each helper raises ``ValueError`` (or ``TypeError`` for the wrong kind of object) with a
message that names the argument and the offending value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[Any], Any]
"""A hyperparameter that varies over training: ``step -> value`` (optax schedules fit)."""

ScalarOrSchedule = float | int | Schedule


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
  """Checks that ``value`` is an integer in ``[low, high]`` and returns it as ``int``.

  Raises:
    ValueError: if it is not an integer (bools excluded) or lies outside the range.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  value = int(value)
  if (low is not None and value < low) or (high is not None and value > high):
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
  return value


def check_float(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_open: bool = False,
  high_open: bool = False,
) -> float:
  """Checks that ``value`` is a finite real number in the given interval.

  Args:
    name: the argument's name, for the message.
    value: the value to check.
    low, high: the bounds, ``None`` for unbounded.
    low_open, high_open: whether each bound is excluded.

  Returns:
    ``value`` as a Python ``float``.

  Raises:
    ValueError: if it is not a real number, not finite, or outside the interval.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  bad_low = low is not None and (value <= low if low_open else value < low)
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    lb = "(" if low_open else "["
    hb = ")" if high_open else "]"
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    raise ValueError(f"{name} must be in {lb}{lo}, {hi}{hb}, got {value}")
  return value


def check_sparsity(name: str, value: Any) -> float:
  """A sparsity is the fraction of weights removed: a float in ``[0, 1)``."""
  return check_float(name, value, low=0.0, high=1.0, high_open=True)


def check_bits(name: str, value: Any, *, low: int = 1, high: int = 16) -> int:
  """A bit-width is an integer in ``[low, high]`` (default 1..16)."""
  return check_int(name, value, low=low, high=high)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
  """Checks that ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")
  return value


def as_schedule(name: str, value: ScalarOrSchedule, check: Callable[[str, Any], Any]) -> Schedule:
  """Turns a constant or a ``step -> value`` callable into a schedule.

  A constant is validated at once with ``check``. A callable is probed at step 0, so a
  schedule that starts out of range fails at construction rather than mid-training. The
  probe runs under ``jax.ensure_compile_time_eval``, so a factory called inside ``jit``
  (or ``pmap``) still sees a concrete value.

  Args:
    name: the hyperparameter's name, for messages.
    value: a constant or a callable of the step (an int32 scalar).
    check: a validator such as :func:`check_sparsity`, called as ``check(name, v)``.

  Returns:
    A callable ``step -> value``.

  Raises:
    ValueError: if the constant or the schedule's value at step 0 is invalid: a
      schedule must return an integer or floating scalar (a string, even ``'0.5'``, a
      bool or an array is rejected, naming ``name``).
  """
  if callable(value):
    try:
      with jax.ensure_compile_time_eval():  # a factory called under jit still probes concretely
        out = value(jnp.asarray(0, jnp.int32))
        at_zero = np.asarray(out)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{name} schedule must return a number at step 0: {e}") from None
    if not (jnp.issubdtype(at_zero.dtype, jnp.integer) or jnp.issubdtype(at_zero.dtype, jnp.floating)):
      raise ValueError(f"{name} schedule must return a number at step 0, got {out!r} (dtype {at_zero.dtype})")
    if at_zero.shape != ():
      raise ValueError(f"{name} schedule must return a scalar, got shape {at_zero.shape} at step 0")
    check(f"{name}(0)", float(at_zero))
    return value
  constant = check(name, value)
  return lambda step: jnp.asarray(constant, jnp.float32)


def run_steps(total_steps: int) -> list[int]:
  """The steps a run of ``total_steps`` optimizer steps evaluates a schedule at: every
  step ``0 .. total_steps`` up to 10,000 steps, else 1,025 evenly spaced ones (ends included)."""
  if total_steps <= 10_000:
    return list(range(total_steps + 1))
  return sorted({int(x) for x in np.rint(np.linspace(0, total_steps, 1025))})


def probe_schedule(name: str, schedule: Schedule, steps: Any, check: Callable[[str, Any], Any]) -> None:
  """Checks a schedule's values at steps a run is known to reach.

  Under ``jit`` a bad value cannot raise, so a factory that knows the steps (a
  ``total_steps``, an ``end_step``, the rewiring or pruning steps) checks them at once.
  The schedule is evaluated once, vectorized over the steps (``jax.vmap``), or step by
  step when it cannot be vectorized, under ``jax.ensure_compile_time_eval``.

  Args:
    name: the hyperparameter's name, for messages.
    schedule: ``step -> value``.
    steps: the integer steps to check.
    check: a validator such as :func:`check_sparsity`.

  Raises:
    ValueError: from ``check``, naming the first bad step as ``name(step)`` and its value.
  """
  steps = sorted({int(t) for t in steps})
  if not steps:
    return
  with jax.ensure_compile_time_eval():
    try:
      values = np.asarray(jax.vmap(schedule)(jnp.asarray(steps, jnp.int32)), np.float64).reshape(-1)
    except (TypeError, ValueError):  # Python control flow on the step: one at a time
      values = np.asarray([np.asarray(schedule(jnp.asarray(t, jnp.int32))) for t in steps], np.float64)
  for t, v in zip(steps, values.tolist()):
    check(f"{name}({t})", v)


def check_weight_leaf(path: str, leaf: Any) -> None:
  """Checks that a selected leaf can be compressed: a non-empty floating array.

  Raises:
    ValueError: naming the path, if the leaf is not an array, is integer or boolean,
      or has no elements.
  """
  if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
    raise ValueError(f"selected leaf {path!r} is not an array: {type(leaf).__name__}")
  if not jnp.issubdtype(leaf.dtype, jnp.floating):
    raise ValueError(
      f"selected leaf {path!r} has dtype {leaf.dtype}; only floating-point leaves can be compressed (narrow `where=`)"
    )
  if math.prod(leaf.shape) == 0:
    raise ValueError(f"selected leaf {path!r} is empty (shape {tuple(leaf.shape)})")


def check_finite_if_concrete(path: str, leaf: Any) -> None:
  """Raises ``ValueError`` if a concrete (not traced) leaf holds NaN or infinity.

  Under ``jit`` the values are unknown and the check is skipped; each compressor's
  docstring says what it does with non-finite weights there.
  """
  if isinstance(leaf, jax.core.Tracer):
    return
  bad = ~np.isfinite(np.asarray(leaf))
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"leaf {path!r} holds {int(bad.sum())} non-finite value(s), first at index {first}")
