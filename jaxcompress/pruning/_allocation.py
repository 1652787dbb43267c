"""Sparsity allocation: how an overall sparsity is split among the selected leaves.

- ``'uniform'``: every leaf gets the target sparsity.
- ``'erk'``: Erdős–Rényi-Kernel (Evci et al. 2020): leaf ``l`` keeps a density
  proportional to ``sum(shape_l) / prod(shape_l)`` (for a conv ``(h + w + in + out) /
  (h w in out)``), scaled so the selected leaves together reach the target; a leaf whose
  density would exceed 1 is kept dense and the others are rescaled.
- per-leaf overrides (a fixed sparsity for leaves whose path matches a regex) and
  excluding the first or last selected leaf (kept dense), as is usual for the input and
  classifier layers. Overridden and excluded leaves do not count toward the target of
  the others (as in the RigL code's ``custom_sparsity_map``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress.core import validate


@dataclasses.dataclass(frozen=True)
class Allocation:
  """A rule that splits a sparsity among leaves.

  Attributes:
    method: ``'uniform'`` or ``'erk'``.
    overrides: ``{path_regex: sparsity}``; the first regex that fully matches a leaf's
      path fixes its sparsity (a float in [0, 1) or a schedule ``step -> sparsity``).
    exclude_first: keep the first selected leaf (in flattening order) dense.
    exclude_last: keep the last selected leaf dense.
    power: ERK's exponent on the raw density (``erk_power_scale`` in the RigL code; 1).
  """

  method: str = "uniform"
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  exclude_first: bool = False
  exclude_last: bool = False
  power: float = 1.0

  def __post_init__(self) -> None:
    validate.check_choice("allocation method", self.method, ("uniform", "erk"))
    validate.check_float("power", self.power, low=0.0)
    for pattern, value in self.overrides.items():
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"override pattern {pattern!r} is not a valid regular expression: {e}") from None
      validate.as_schedule(f"overrides[{pattern!r}]", value, validate.check_sparsity)

  def fixed(self, paths: Sequence[str]) -> list[Any]:
    """Per leaf: its override schedule, ``0.0`` when excluded, or ``None`` (allocated)."""
    out: list[Any] = []
    for i, path in enumerate(paths):
      value = None
      for pattern, v in self.overrides.items():
        if re.fullmatch(pattern, path):
          value = validate.as_schedule(f"overrides[{pattern!r}]", v, validate.check_sparsity)
          break
      if value is None and ((self.exclude_first and i == 0) or (self.exclude_last and i == len(paths) - 1)):
        value = 0.0
      out.append(value)
    return out

  def sparsities(
    self, paths: Sequence[str], shapes: Sequence[tuple[int, ...]], sparsity: Any, step: Any = 0
  ) -> list[jax.Array]:
    """Per-leaf sparsities for an overall ``sparsity`` (may be traced).

    Args:
      paths: the selected leaves' paths, in flattening order.
      shapes: their shapes.
      sparsity: the target for the allocated (not overridden, not excluded) leaves.
      step: the step at which override schedules are evaluated.

    Returns:
      A float32 scalar per leaf.
    """
    fixed = self.fixed(paths)
    free = [i for i, f in enumerate(fixed) if f is None]
    s = jnp.asarray(sparsity, jnp.float32)
    if self.method == "erk":
      allocated = erk_sparsities([shapes[i] for i in free], s, power=self.power)
    else:
      allocated = [s] * len(free)
    out: list[jax.Array] = [jnp.asarray(0.0, jnp.float32)] * len(paths)
    for i, a in zip(free, allocated):
      out[i] = a
    for i, f in enumerate(fixed):
      if f is not None:
        out[i] = jnp.asarray(f(step) if callable(f) else f, jnp.float32)
    return out


def as_allocation(allocation: str | Allocation) -> Allocation:
  """Accepts ``'uniform'``, ``'erk'`` or an :class:`Allocation`.

  Raises:
    ValueError: for another string.
    TypeError: for another kind of object.
  """
  if isinstance(allocation, Allocation):
    return allocation
  if isinstance(allocation, str):
    return Allocation(method=allocation)
  raise TypeError(f"allocation must be 'uniform', 'erk' or an Allocation, got {allocation!r}")


def erk_sparsities(shapes: Sequence[tuple[int, ...]], sparsity: Any, *, power: float = 1.0) -> list[jax.Array]:
  """Erdős–Rényi-Kernel sparsities whose kept weights total ``(1 - sparsity) * n``.

  Leaf ``l`` with ``n_l`` weights gets density ``eps * raw_l`` with
  ``raw_l = (sum(shape_l) / prod(shape_l)) ** power``. ``eps`` solves
  ``sum_l n_l * density_l = (1 - sparsity) * sum_l n_l``; leaves whose density would
  exceed 1 are made dense one at a time (largest ``raw_l`` first) and ``eps`` is solved
  again over the rest, as in the RigL code. Traceable in ``sparsity``.

  Args:
    shapes: the leaves' shapes (at least one axis each).
    sparsity: overall target in [0, 1) (may be traced).
    power: exponent on the raw density.

  Returns:
    A float32 scalar sparsity per leaf.

  References:
    Evci, Gale, Menick, Castro & Elsen 2020, "Rigging the Lottery: Making All Tickets
    Winners", https://arxiv.org/abs/1911.11134, §3 and appendix.

  Example:
    >>> [round(float(s), 4) for s in erk_sparsities([(64, 300), (300, 100), (100, 10)], 0.9)]
    [0.8911, 0.9234, 0.3682]
  """
  if not shapes:
    return []
  n = jnp.asarray([math.prod(s) for s in shapes], jnp.float32)
  raw = jnp.asarray([(sum(s) / math.prod(s)) ** power for s in shapes], jnp.float32)
  s = jnp.asarray(sparsity, jnp.float32)
  dense = jnp.zeros(len(shapes), bool)

  def solve(dense):
    rhs = jnp.sum(jnp.where(dense, -n * s, n * (1 - s)))
    divisor = jnp.sum(jnp.where(dense, 0.0, raw * n))
    return rhs / jnp.maximum(divisor, jnp.finfo(jnp.float32).tiny)

  for _ in range(len(shapes)):
    eps = solve(dense)
    over = jnp.any(~dense & (eps * raw > 1.0))
    biggest = jnp.argmax(jnp.where(dense, -jnp.inf, raw))
    dense = jnp.where(over, dense.at[biggest].set(True), dense)
  density = jnp.where(dense, 1.0, jnp.clip(solve(dense) * raw, 0.0, 1.0))
  return [1.0 - density[i] for i in range(len(shapes))]
