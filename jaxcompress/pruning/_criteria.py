"""Pruning numerics: importance scores and exact masks (top-k, global top-k, block, N:M).

Every function here works on plain arrays and is jit-, grad- and shard-safe: counts are
computed with :func:`num_pruned`, and a mask always holds exactly its target number of
kept entries, ties broken by position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp


def num_pruned(sparsity: jax.Array | float, size: int) -> jax.Array:
  """How many of ``size`` weights a ``sparsity`` removes: ``round(sparsity * size)``.

  Rounding is half to even, so the achieved sparsity is the closest one reachable:
  0.99 on a 10-weight layer prunes all 10, 0.94 prunes 9. Computed in float32, so for
  layers above 2**24 weights the count can be off by one. A traced sparsity cannot be
  checked: one outside [0, 1] is clipped to it and NaN counts as 0 (factories check
  constants, and schedules at step 0).

  Returns:
    An ``int32`` scalar in ``[0, size]``.
  """
  s = jnp.asarray(sparsity, jnp.float32)
  s = jnp.where(jnp.isnan(s), 0.0, jnp.clip(s, 0.0, 1.0))
  return jnp.round(s * size).astype(jnp.int32)


def _sortable_key(x: jax.Array) -> jax.Array:
  """``uint32`` keys whose unsigned order is the float order (NaN lowest, -0.0 == 0.0)."""
  x = jnp.asarray(x, jnp.float32)
  x = jnp.where(jnp.isnan(x), -jnp.inf, x)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


HISTOGRAM_MIN_SIZE = 1 << 16
"""From this many scores on, the threshold is found by two 16-bit histogram passes instead of
32 one-bit counting passes (which compile smaller and are as fast on small arrays)."""


def _total(counts: Iterable[jax.Array]) -> jax.Array:
  return jnp.sum(jnp.stack(list(counts)))


def _select_threshold(keys: Sequence[jax.Array], keep: jax.Array) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
  """The ``keep``-th largest of all the ``uint32`` ``keys`` together, and for each array how
  many of its keys lie above it and how many equal it.

  Below :data:`HISTOGRAM_MIN_SIZE` keys, bit by bit: 32 counting passes. From it on, digit by
  digit: each of two passes histograms one 16-bit digit (most significant first) of each
  array's keys that share the digits found so far, and picks the digit where the running
  count of the summed histograms from the top reaches ``keep``; the per-array counts come
  from the per-array histograms. For ``keep == 0`` the threshold is ``0xFFFFFFFF`` (no
  score's key: NaN is ranked as ``-inf``).
  """
  if sum(k.size for k in keys) < HISTOGRAM_MIN_SIZE:

    def refine(i, threshold):
      candidate = threshold | jnp.left_shift(jnp.uint32(1), jnp.uint32(31 - i))
      at_least = _total(jnp.sum(k >= candidate, dtype=jnp.int32) for k in keys)
      return jnp.where(at_least >= keep, candidate, threshold)

    threshold = jax.lax.fori_loop(0, 32, refine, jnp.uint32(0))
    above = [jnp.sum(k > threshold, dtype=jnp.int32) for k in keys]
    return threshold, above, [jnp.sum(k == threshold, dtype=jnp.int32) for k in keys]
  width, bins = 16, 1 << 16
  prefix = jnp.uint32(0)
  above = [jnp.zeros((), jnp.int32) for _ in keys]
  for level in range(2):
    shift = jnp.uint32(32 - width * (level + 1))
    hists = []
    for k in keys:
      digit = (k >> shift) & jnp.uint32(bins - 1)
      if level:  # only the keys that share the first digit
        digit = jnp.where((k >> jnp.uint32(width)) == (prefix >> jnp.uint32(width)), digit, jnp.uint32(bins))
      hists.append(jnp.zeros(bins, jnp.int32).at[digit.astype(jnp.int32)].add(1, mode="drop"))
    hist = hists[0] if len(hists) == 1 else jnp.sum(jnp.stack(hists), axis=0)
    at_least = jnp.cumsum(hist[::-1])[::-1] + _total(above)  # keys above, plus those of this prefix with digit >= d
    d = jnp.maximum(jnp.sum(at_least >= keep, dtype=jnp.int32) - 1, 0)  # the last digit reaching keep
    higher = jnp.arange(bins) > d
    above = [a + jnp.sum(jnp.where(higher, h, 0)) for a, h in zip(above, hists)]
    prefix = prefix | jnp.left_shift(d.astype(jnp.uint32), shift)
  return prefix, above, [h[d] for h in hists]


def _row_width(n: int) -> int:
  """The largest divisor of ``n`` up to its square root: ``n`` keys are viewed as rows of it."""
  return next(w for w in range(max(math.isqrt(n), 1), 0, -1) if n % w == 0)


def _earliest_ties(key: jax.Array, threshold: jax.Array, take: jax.Array) -> jax.Array:
  """``key > threshold``, plus the first ``take`` (in ``[0, count]``) of the keys equal to it.

  The cut is found in two levels, not by a running count over every key: the ties are
  counted per row of :func:`_row_width` keys, the row holding the ``take``-th is picked from
  the rows' running count and a running count over that one row places it; what is kept is
  then every tie before the cut's flat index.
  """
  n = key.size
  if n == 0:
    return key > threshold
  width = _row_width(n)
  rows = key.reshape(n // width, width)
  per_row = jnp.sum(rows == threshold, axis=1, dtype=jnp.int32)
  through = jnp.cumsum(per_row)  # ties up to and including each row
  row = jnp.minimum(jnp.sum(through < take, dtype=jnp.int32), n // width - 1)  # the row of the take-th tie
  needed = take - (through[row] - per_row[row])  # ties wanted from that row, >= 1 when take >= 1
  in_row = jnp.cumsum(jax.lax.dynamic_index_in_dim(rows, row, keepdims=False) == threshold, dtype=jnp.int32)
  cut = jnp.where(take > 0, row * width + jnp.sum(in_row < needed, dtype=jnp.int32) + 1, 0)
  return (key > threshold) | ((key == threshold) & (jnp.arange(n, dtype=jnp.int32) < cut))


def keep_top(scores: jax.Array, keep: jax.Array | int) -> jax.Array:
  """Keeps the ``keep`` highest scores exactly (ties: the earlier element wins).

  A radix select instead of a sort: the ``keep``-th largest score is found over the scores'
  order-preserving 32-bit keys, bit by bit (32 counting passes) on small arrays and by two
  histogram passes of 16-bit digits from :data:`HISTOGRAM_MIN_SIZE` scores on; everything
  above it is kept, and among the scores equal to it the earliest in row-major order fill
  the remaining places, placed by tie counts per row and a running count over one row (on
  big arrays only when not all of them fit). Linear in the size; the result is that of a stable descending sort.
  On a 4096x4096 layer this is several times faster than the 32 counting passes alone and
  an order of magnitude faster than a full sort.

  Args:
    scores: float array of any shape; higher means more important. NaN ranks lowest.
    keep: how many to keep, an integer scalar (may be traced).

  Returns:
    A ``bool`` mask of ``scores.shape`` with exactly ``clip(keep, 0, size)`` True.
  """
  return keep_top_many([scores], keep)[0]


def _keep_top_keys(keys: Sequence[jax.Array], keep: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
  """Flat masks keeping the ``keep`` highest of the ``uint32`` ``keys`` (ties: earlier array,
  then earlier element) and how many each array keeps, counted from the selection's tallies."""
  threshold, above, tied = _select_threshold(keys, keep)
  room = keep - _total(above)
  before = jnp.cumsum(jnp.stack(tied)) - jnp.stack(tied)  # ties in the earlier arrays
  kept = [a + jnp.clip(room - before[j], 0, t) for j, (a, t) in enumerate(zip(above, tied))]

  def earliest_ties():
    return [_earliest_ties(k, threshold, c - a) for k, c, a in zip(keys, kept, above)]

  if sum(k.size for k in keys) < HISTOGRAM_MIN_SIZE:
    return earliest_ties(), kept
  # placing the ties costs a pass over the keys: skipped when every tie fits
  return jax.lax.cond(_total(tied) == room, lambda: [k >= threshold for k in keys], earliest_ties), kept


def _keys_and_count(scores: Sequence[jax.Array], keep: jax.Array | int) -> tuple[list[jax.Array], jax.Array]:
  keys = [_sortable_key(jnp.reshape(s, -1)) for s in scores]
  return keys, jnp.clip(jnp.asarray(keep, jnp.int32), 0, sum(k.size for k in keys))


def keep_top_many(scores: Sequence[jax.Array], keep: jax.Array | int) -> list[jax.Array]:
  """:func:`keep_top` over several arrays at once, ranked as if flattened and concatenated.

  Ties keep the earlier array, then the earlier element. Nothing is concatenated: the
  histograms of all arrays are summed.

  Args:
    scores: float arrays of any shapes (any float dtype; ranked as float32, which is exact).
    keep: how many to keep in all, an integer scalar (may be traced).

  Returns:
    ``bool`` masks of the arrays' shapes with exactly ``clip(keep, 0, total size)`` True in all.
  """
  masks, _ = _keep_top_keys(*_keys_and_count(scores, keep))
  return [m.reshape(jnp.shape(s)) for m, s in zip(masks, scores)]


def keep_top_many_keeping_one(scores: Sequence[jax.Array], keep: jax.Array | int) -> list[jax.Array]:
  """:func:`keep_top_many`, except that no array loses all its entries: where one would, every
  array's highest score (the first of equals; NaN lowest) ranks above all others.

  Raising an array's best changes nothing when the plain ranking already keeps some of that
  array (it keeps its best then), so the second ranking runs, under ``lax.cond``, only when
  the plain one would empty an array, which the selection's per-array counts tell without a
  pass over the masks. The raised best gets the key of ``+inf``, so the result is
  ``keep_top_many([s with its best set to +inf for s in scores], keep)`` exactly.

  Args:
    scores: float arrays of any shapes.
    keep: how many to keep in all, an integer scalar (may be traced); at least
      ``len(scores)`` for every array to keep one.

  Returns:
    ``bool`` masks of the arrays' shapes with exactly ``clip(keep, 0, total size)`` True in all.
  """
  keys, keep = _keys_and_count(scores, keep)
  plain, kept = _keep_top_keys(keys, keep)

  def raised():
    inf = _sortable_key(jnp.asarray(jnp.inf, jnp.float32))
    best = [jnp.where(jnp.arange(k.size) == jnp.argmax(k), inf, k) for k in keys]
    return _keep_top_keys(best, keep)[0]

  masks = jax.lax.cond(jnp.any(jnp.stack(kept) == 0), raised, lambda: plain)
  return [m.reshape(jnp.shape(s)) for m, s in zip(masks, scores)]


def topk_mask(scores: jax.Array, sparsity: jax.Array | float) -> jax.Array:
  """Keeps the ``size - num_pruned(sparsity, size)`` highest scores, exactly.

  Ties are broken deterministically: among equal scores the earlier element in
  row-major order is kept. NaN scores rank below every number, so they are pruned
  first.

  Args:
    scores: float array of any shape; higher means more important.
    sparsity: fraction to remove, scalar in [0, 1] (may be traced).

  Returns:
    A ``bool`` mask of ``scores.shape``, True where kept, with exactly the target
    number of True entries.
  """
  return keep_top(scores, scores.size - num_pruned(sparsity, scores.size))


def global_topk_masks(scores: Sequence[jax.Array], sparsity: jax.Array | float) -> list[jax.Array]:
  """One top-k over several arrays: keeps the highest scores wherever they are.

  The arrays are ranked as if flattened and concatenated in the given order, so ties
  keep the earlier array, then the earlier element. Works on sharded arrays (the
  histograms are summed under ``jit``, whatever the leaves' shardings).

  Args:
    scores: float arrays of any shapes.
    sparsity: fraction of all their entries to remove (may be traced).

  Returns:
    ``bool`` masks of the arrays' shapes whose True entries total exactly
    ``n - num_pruned(sparsity, n)``, ``n`` being the total size.
  """
  n = sum(jnp.size(s) for s in scores)
  return keep_top_many(scores, n - num_pruned(sparsity, n))


def block_scores(scores: jax.Array, block: tuple[int, ...]) -> jax.Array:
  """Sums ``scores`` over blocks tiling the trailing ``len(block)`` axes.

  Args:
    scores: array whose trailing axes are divisible by ``block``.
    block: block shape, e.g. ``(1, 4)``: one input row by four outputs of a Dense kernel.

  Returns:
    An array with each trailing axis ``d`` reduced to ``d // b``.

  Raises:
    ValueError: if an axis is not divisible by its block size.
  """
  lead = scores.ndim - len(block)
  if lead < 0:
    raise ValueError(f"block={block} has more axes than the leaf's shape {scores.shape}")
  shape = list(scores.shape[:lead])
  for d, b in zip(scores.shape[lead:], block):
    if d % b:
      raise ValueError(f"block={block} does not tile shape {scores.shape}: {d} is not divisible by {b}")
    shape += [d // b, b]
  summed_axes = tuple(lead + 2 * i + 1 for i in range(len(block)))
  return scores.reshape(shape).sum(axis=summed_axes)


def expand_blocks(mask: jax.Array, block: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`block_scores` for masks: repeats each block entry over its block."""
  lead = mask.ndim - len(block)
  for i, b in enumerate(block):
    mask = jnp.repeat(mask, b, axis=lead + i)
  return mask


def block_mask(scores: jax.Array, sparsity: jax.Array | float, block: tuple[int, ...]) -> jax.Array:
  """Keeps whole blocks: the ``n_blocks - num_pruned(sparsity, n_blocks)`` blocks with
  the highest summed scores (ties keep the earlier block).

  Raises:
    ValueError: if ``block`` does not tile ``scores``'s trailing axes.
  """
  return expand_blocks(topk_mask(block_scores(scores, block), sparsity), block)


def nm_mask(scores: jax.Array, n: int, m: int, axis: int = -2) -> jax.Array:
  """N:M sparsity: in every group of ``m`` consecutive entries along ``axis``, keeps the
  ``n`` highest scores (ties keep the earlier entry), so each group holds exactly ``n``.

  Args:
    scores: float array; ``scores.shape[axis]`` must be divisible by ``m``.
    n: entries kept per group, ``1 <= n <= m``.
    m: group length.
    axis: the grouped axis; for Flax kernels the contraction (input) axis is ``-2``
      (Dense ``(in, out)``, Conv ``(h, w, in, out)``).

  Returns:
    A ``bool`` mask of ``scores.shape``.

  Raises:
    ValueError: if ``n > m`` or the axis length is not divisible by ``m``.
  """
  if not 1 <= n <= m:
    raise ValueError(f"N:M sparsity needs 1 <= n <= m, got n={n}, m={m}")
  if scores.ndim == 0:
    raise ValueError("N:M sparsity needs an array with at least one axis, got a scalar")
  if not -scores.ndim <= axis < scores.ndim:
    raise ValueError(f"axis={axis} is out of range for shape {scores.shape}")
  axis = axis % scores.ndim
  if scores.shape[axis] % m:
    raise ValueError(f"axis {axis} of shape {scores.shape} has length {scores.shape[axis]}, not divisible by m={m}")
  moved = jnp.moveaxis(scores, axis, -1)
  groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
  groups = jnp.where(jnp.isnan(groups), -jnp.inf, groups)
  order = jnp.argsort(groups, axis=-1, descending=True, stable=True)
  ranks = jnp.argsort(order, axis=-1, stable=True)
  keep = (ranks < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)
