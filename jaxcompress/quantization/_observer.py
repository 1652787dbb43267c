"""A moving-average observer of activation ranges during QAT, and the outlier check.

:func:`observe` folds one training batch into the running ``{site.key: (xmin, xmax)}`` that
:func:`~jaxcompress.quantization.quantize_activations` (``observer='moving_average'``) keeps
in its state and fake-quantizes with, as PyTorch's ``MovingAverageMinMaxObserver`` inside
``FakeQuantize`` does: ``xmin <- xmin + c · (batch_min - xmin)`` (and ``xmax`` alike) with
``c = averaging_constant``, until ``freeze_step`` (PyTorch's ``disable_observer``).

:func:`warn_if_outlier` warns once per site when an outlier sets a range: the largest
``|x|`` of a batch is more than ``ratio`` times the 99.9th percentile of its nonzero ``|x|``
(at most 0.1% of them lie above ``max |x| / ratio``), so the bulk of the values share a tenth
(at ``ratio=10``) of the levels or less. It runs under ``jit``, ``pmap`` and ``grad``
through :func:`jax.debug.callback`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core.tree import PyTree


class OutlierRangeWarning(UserWarning):
  """A quantization range is set by an outlier; silence it with ``outlier_ratio=None`` or
  ``warnings.filterwarnings('ignore', category=OutlierRangeWarning)``."""


def outliers_set_range(x: jax.Array, ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Whether an outlier sets ``x``'s range: ``max |x| > ratio · q`` with ``q`` the 99.9th
  percentile of the nonzero ``|x|``, tested without a sort as "at most ``max(1, nnz // 1000)``
  of the ``nnz`` nonzero values lie above ``max |x| / ratio``" (three reductions). Zeros are
  left out so that sparse inputs (a one-hot row, ReLU outputs) are not taken for outliers.

  Returns:
    ``(flag, count, top)``: a ``bool`` scalar (False for an all-zero ``x``), the ``int32``
    number of values above ``max |x| / ratio`` and ``max |x|`` (float32).
  """
  a = jnp.abs(jax.lax.stop_gradient(x)).astype(jnp.float32)
  if not a.size:
    return jnp.asarray(False), jnp.asarray(0, jnp.int32), jnp.float32(0)
  top = jnp.max(a)
  count = jnp.sum(a > top / ratio, dtype=jnp.int32)
  nonzero = jnp.sum(a > 0, dtype=jnp.int32)
  return (top > 0) & (count <= jnp.maximum(1, nonzero // 1000)), count, top


def warn_if_outlier(key: str, x: jax.Array, ratio: float | None, warned: set[str], when: Any = None) -> None:
  """Warns (:class:`OutlierRangeWarning`, once per ``key`` in ``warned``) if an outlier sets
  ``x``'s range (:func:`outliers_set_range`); nothing when ``ratio`` is ``None``. Traceable:
  the test runs on device, the warning on the host through :func:`jax.debug.callback`, called
  only when the test fails. ``when`` (a traced ``bool``, e.g. "this step is a check step";
  ``None``: always) skips the test's reductions on the other steps."""
  warn_if_outliers([(key, x)], ratio, warned, when)


def warn_if_outliers(
  items: list[tuple[str, jax.Array]], ratio: float | None, warned: set[str], when: Any = None
) -> None:
  """:func:`warn_if_outlier` for several ``(key, x)`` at once, under one ``cond`` on ``when``
  (on XLA's CPU a ``cond`` costs about a millisecond of a step even when it is not taken)."""
  items = [(k, x) for k, x in items if k not in warned]
  if ratio is None or not items:
    return

  def check_one(key, x):
    n = x.size

    def report(count, top):
      if key in warned:
        return
      warned.add(key)
      warnings.warn(
        f"the activation range of site {key!r} is set by an outlier: max |x| = {float(top):.6g}, and only "
        f"{int(count)} of its {n} values exceed max |x| / {ratio} (outlier_ratio), so the rest share a tenth or "
        "less of the quantization levels; check the inputs (a zero-variance feature standardized to a huge "
        "value?), or pass outlier_ratio=None to silence this",
        OutlierRangeWarning,
        stacklevel=2,
      )

    flag, count, top = outliers_set_range(x, ratio)
    jax.lax.cond(flag, lambda c, t: jax.debug.callback(report, c, t), lambda c, t: None, count, top)

  def check(xs):
    for (key, _), x in zip(items, xs):
      check_one(key, x)

  xs = [jax.lax.stop_gradient(x) for _, x in items]
  if when is None:
    check(xs)
  else:
    jax.lax.cond(when, check, lambda xs: None, xs)


def observe(
  apply_fn: Callable[..., Any],
  params: PyTree,
  inputs: tuple[Any, ...],
  ranges: dict[str, tuple[jax.Array, jax.Array]],
  *,
  averaging_constant: float,
  where: Callable[[str, graph.Site], bool],
  axis_name: str | None = None,
) -> tuple[dict[str, tuple[jax.Array, jax.Array]], dict[str, jax.Array]]:
  """One moving-average step of every site's range on one batch.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the model's params.
    inputs: the batch's model inputs.
    ranges: the running ``{site.key: (xmin, xmax)}`` (float32 scalars).
    averaging_constant: ``c`` in ``range + c · (batch_range - range)``.
    where: which sites.
    axis_name: under ``pmap``, the axis over which the batch's min and max are reduced
      (``pmin``/``pmax``: every replica observes the whole batch's range, as one device would).

  Returns:
    ``(new_ranges, inputs_seen)``: the updated ranges (only the keys of ``ranges``) and each
    site's captured input (for the outlier check).
  """
  _, captured = graph.capture(apply_fn, where=where)(params, *inputs)
  new, seen = {}, {}
  for key, (lo, hi) in ranges.items():
    if key not in captured:
      new[key] = (lo, hi)
      continue
    x = jax.lax.stop_gradient(captured[key]["input"]).astype(jnp.float32)
    blo, bhi = jnp.min(x), jnp.max(x)
    if axis_name is not None:
      blo, bhi = jax.lax.pmin(blo, axis_name), jax.lax.pmax(bhi, axis_name)
    c = jnp.float32(averaging_constant)
    new[key] = (lo + c * (blo - lo), hi + c * (bhi - hi))
    seen[key] = x
  return new, seen
