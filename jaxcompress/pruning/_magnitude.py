"""Magnitude pruning: keep the largest ``|w|``, per leaf or over the whole tree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._allocation import Allocation
from jaxcompress.pruning._masking import PruningState

MagnitudeState = PruningState
"""State of :func:`magnitude` (``count``, ``masks``; ``scores`` and ``key`` unused)."""


def magnitude_score(w: jax.Array, g: Any = None, acc: Any = None, key: Any = None) -> jax.Array:
  """``|w|``, the magnitude criterion."""
  del g, acc, key
  return jnp.abs(w)


def magnitude(
  sparsity: validate.ScalarOrSchedule,
  *,
  where: select.Where = None,
  scope: str = "layer",
  allocation: str | Allocation = "uniform",
  block: tuple[int, ...] | None = None,
  total_steps: int | None = None,
) -> Compressor:
  """Prunes the smallest-magnitude weights, per leaf or globally, unstructured or in blocks.

  With ``scope='layer'`` each selected leaf keeps exactly its
  ``size - round(sparsity_l * size)`` largest ``|w|`` (see
  :func:`~jaxcompress.pruning.topk_mask` for rounding and ties), where
  ``sparsity_l`` comes from ``allocation`` (uniform by default; ``'erk'`` or an
  :class:`~jaxcompress.pruning.Allocation` with overrides and exclusions).
  With ``scope='global'`` one exact top-k runs over all selected weights together
  (ties: earlier leaf in flattening order, then earlier element), except that each
  leaf's largest ``|w|`` is always kept (no leaf is pruned away). With ``block=(1, 4)``
  whole blocks tiling the trailing axes are kept or removed by their summed ``|w|``.

  ``init`` computes the masks from the given weights at ``sparsity(0)`` (one-shot
  pruning of a trained model); ``update`` advances the step and recomputes masks, from
  the masked weights, only on steps where a target count changes, so a constant
  sparsity keeps its masks fixed and a schedule such as
  :func:`~jaxcompress.pruning.polynomial_sparsity` prunes gradually.

  ``apply`` zeroes pruned weights, so they receive zero gradient (and, inside ``chain``
  after a quantizer, the quantized values are masked); ``update`` sets them to exactly
  zero in the params after every optimizer step, so momentum or weight decay cannot
  revive them. :func:`~jaxcompress.train.make_step` also gives them no update and resets
  their optimizer moments when a mask changes. ``pack`` stores each selected leaf as a
  :class:`~jaxcompress.export.SparseArray` (or, inside ``chain`` after a quantizer, a
  :class:`~jaxcompress.export.QArray` whose codes are sparse).

  Non-finite weights: ``init`` on concrete params raises. Under ``jit`` a NaN weight
  ranks below every number, so it is pruned first and replaced by zero.

  Args:
    sparsity: fraction of weights removed, in [0, 1), or a schedule ``step -> sparsity``.
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).
    scope: ``'layer'`` (each leaf reaches its own target) or ``'global'`` (one ranking
      over all selected leaves; the overall sparsity is exact).
    allocation: ``'uniform'``, ``'erk'`` or an :class:`Allocation` (layer scope only).
    block: a block shape such as ``(1, 4)`` tiling each leaf's trailing axes, or
      ``None`` for unstructured pruning (layer scope only).
    total_steps: the run's length, if known: a schedule is then checked at every step
      ``0 .. total_steps`` (1,025 evenly spaced ones beyond 10,000) and a value outside
      [0, 1) or NaN raises now, naming the step. Without it only step 0 is checked, and
      under ``jit`` a later target is made safe instead: clipped so every leaf keeps at
      least one weight (one block), and a NaN target holds the previous masks.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`MagnitudeState`.

  Raises:
    ValueError: if ``sparsity`` (or ``sparsity(0)``, or with ``total_steps`` its value at
      any step of the run) is outside [0, 1), ``scope`` is
      unknown, ``block`` is not a tuple of positive ints or is combined with
      ``scope='global'``; at ``init``, if ``where`` selects nothing, a selected leaf is
      integer, empty or non-finite, or ``block`` does not tile a selected leaf.
    TypeError: from ``apply``, ``update``, ``pack`` or ``masks`` given a state that is
      not a :class:`MagnitudeState` (another compressor's), naming both types.

  References:
    Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections for Efficient
    Neural Networks", https://arxiv.org/abs/1506.02626.

  Example:
    >>> import jax.numpy as jnp
    >>> c = magnitude(0.5)
    >>> params, state = c.init({'w': jnp.array([[1.0, -4.0], [3.0, 0.5]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.0, -4.0], [3.0, 0.0]]
    >>> c = magnitude(0.5, scope='global')
    >>> params, state = c.init({'a': jnp.array([[1.0, 2.0, 5.0]]), 'b': jnp.array([[3.0, 4.0, 6.0]])})
    >>> c.apply(params, state)  # the three smallest anywhere: 'a' loses two, 'b' one
    {'a': Array([[0., 0., 5.]], dtype=float32), 'b': Array([[0., 4., 6.]], dtype=float32)}
  """
  return masking.build(
    sparsity,
    magnitude_score,
    where=where,
    scope=scope,
    allocation=allocation,
    block=block,
    total_steps=total_steps,
    who="magnitude",
  )
