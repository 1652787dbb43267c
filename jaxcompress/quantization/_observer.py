"""A moving-average observer of activation ranges during QAT, and the outlier check.

:func:`observe` folds one training batch into the running ``{site.key: (xmin, xmax)}`` that
:func:`~jaxcompress.quantization.quantize_activations` (``observer='moving_average'``) keeps
in its state and fake-quantizes with, as PyTorch's ``MovingAverageMinMaxObserver`` inside
``FakeQuantize`` does: ``xmin <- xmin + c · (batch_min - xmin)`` (and ``xmax`` alike) with
``c = averaging_constant``, until ``freeze_step`` (PyTorch's ``disable_observer``).

:func:`warn_if_outlier` warns once per site when one outlier sets a range: the largest
``|x|`` of a batch is more than ``ratio`` times its 99.9th percentile of ``|x|``, so the
bulk of the values share a tenth (at ``ratio=10``) of the levels. It runs under ``jit``,
``pmap`` and ``grad`` through :func:`jax.debug.callback`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core.tree import PyTree

_SAMPLE = 1 << 16  # at most this many values enter the percentile (a strided sample; the max sees all)


class OutlierRangeWarning(UserWarning):
  """A quantization range is set by an outlier; silence it with ``outlier_ratio=None`` or
  ``warnings.filterwarnings('ignore', category=OutlierRangeWarning)``."""


def outlier_ratio_of(x: jax.Array) -> jax.Array:
  """``max |x| / q``, where ``q`` is the 99.9th percentile of ``|x|`` (the ``⌈n/1000⌉ + 1``-th
  largest of ``n`` values, over a strided sample of at most 65,536 values); a float32 scalar,
  0 when ``q`` is 0 and the max too, ``inf`` when only ``q`` is 0."""
  a = jnp.abs(jax.lax.stop_gradient(x)).astype(jnp.float32).ravel()
  top = jnp.max(a) if a.size else jnp.float32(0)
  stride = max(1, math.ceil(a.size / _SAMPLE))
  s = a[::stride]
  k = min(s.size, math.ceil(s.size / 1000) + 1)
  q = jax.lax.top_k(s, k)[0][-1] if s.size else jnp.float32(0)
  return jnp.where(q > 0, top / jnp.maximum(q, jnp.finfo(jnp.float32).tiny), jnp.where(top > 0, jnp.inf, 0.0))


def warn_if_outlier(key: str, x: jax.Array, ratio: float | None, warned: set[str]) -> None:
  """Warns (:class:`OutlierRangeWarning`, once per ``key`` in ``warned``) if ``x``'s largest
  ``|x|`` exceeds ``ratio`` times its 99.9th percentile; nothing when ``ratio`` is ``None``.
  Traceable: the check runs on device, the warning on the host through :func:`jax.debug.callback`."""
  if ratio is None or key in warned:
    return
  r = outlier_ratio_of(x)

  def report(value):
    value = float(value)
    if value > ratio and key not in warned:
      warned.add(key)
      warnings.warn(
        f"the activation range of site {key!r} is set by an outlier: max |x| is {value:.3g}x its 99.9th "
        f"percentile (> outlier_ratio={ratio}), so most values share a few quantization levels; check the "
        "inputs (a zero-variance feature standardized to a huge value?), or pass outlier_ratio=None to silence this",
        OutlierRangeWarning,
        stacklevel=2,
      )

  # the host is called only when the check fails, so a clean run pays no host round trip
  jax.lax.cond(r > ratio, lambda v: jax.debug.callback(report, v), lambda v: None, r)


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
