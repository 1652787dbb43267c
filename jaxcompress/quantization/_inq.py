"""Incremental Network Quantization (INQ): partition by magnitude, quantize, freeze, retrain.

Numerics (:func:`inq_exponents`, :func:`inq_partition`, :func:`inq_quantize`) act on one
array; :func:`inq` walks the tree. The incremental machinery (a validated schedule of
accumulated portions, the frozen set, the ``frozen`` seam) is shared with ELQ
(``_elq.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning._criteria import keep_top, num_pruned
from jaxcompress.quantization._power_of_two import max_exponent, pot_codebook, pot_indices


def check_schedule(portions: Sequence[float], steps: Sequence[int]) -> tuple[tuple[float, ...], tuple[int, ...]]:
  """Validates an incremental schedule: accumulated ``portions[i]`` from step ``steps[i]``.

  Args:
    portions: accumulated fractions of each layer's weights quantized and frozen, each in
      ``(0, 1]``, nondecreasing, the last exactly 1.
    steps: the step (``update`` count) from which each portion holds: integers ``>= 0``,
      strictly increasing, one per portion.

  Returns:
    ``(portions, steps)`` as tuples of floats and ints.

  Raises:
    ValueError: naming ``portions`` or ``steps`` and the value, if a rule above is broken.
  """
  try:
    portions = tuple(float(p) for p in portions)
  except (TypeError, ValueError):
    raise ValueError(f"portions must be a sequence of numbers, got {portions!r}") from None
  if not portions:
    raise ValueError("portions must not be empty")
  for p in portions:
    if not (0.0 < p <= 1.0):
      raise ValueError(f"portions must lie in (0, 1], got {portions!r}")
  if any(b < a for a, b in zip(portions, portions[1:])):
    raise ValueError(f"portions must be nondecreasing, got {portions!r}")
  if portions[-1] != 1.0:
    raise ValueError(f"portions must reach 1.0 (every weight quantized at the end), got {portions!r}")
  if isinstance(steps, (int, np.integer)) or not isinstance(steps, Sequence | np.ndarray):
    raise ValueError(f"steps must be a sequence of integers, got {steps!r}")
  steps = tuple(validate.check_int("steps", s, low=0) for s in steps)
  if len(steps) != len(portions):
    raise ValueError(f"steps must have one entry per portion ({len(portions)}), got {steps!r}")
  if any(b <= a for a, b in zip(steps, steps[1:])):
    raise ValueError(f"steps must be strictly increasing, got {steps!r}")
  return portions, steps


def portion_at(count: jax.Array, portions: tuple[float, ...], steps: tuple[int, ...]) -> jax.Array:
  """The accumulated portion in force at step ``count`` (0 before ``steps[0]``), ``float32``."""
  i = jnp.searchsorted(jnp.asarray(steps, jnp.int32), count, side="right") - 1
  return jnp.where(i >= 0, jnp.asarray(portions, jnp.float32)[jnp.maximum(i, 0)], 0.0)


def inq_exponents(w: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """INQ's exponent range ``(n1, n2)`` for a layer (Zhou et al. 2017, Eqs. 2-3).

  ``n1 = floor(log2(4 s / 3))`` with ``s = max|w|`` (exact, from the float's bits:
  :func:`~jaxcompress.quantization._power_of_two.max_exponent`), and ``n2 = n1 + 1 -
  2^(b-1) / 2``: ``b - 1`` bits index the ``2^(b-2)`` exponents of each sign and one
  more value is zero, so the levels are ``{0} ∪ {±2^n : n2 <= n <= n1}``.

  Args:
    w: float array.
    bits: the bit-width ``b``, 2..8.

  Returns:
    ``int32`` scalars ``(n1, n2)``.
  """
  n1 = max_exponent(w)
  return n1, n1 + 1 - 2 ** (bits - 1) // 2


def inq_levels(bits: int) -> int:
  """The number of exponents of each sign at ``bits`` bits: ``n1 - n2 + 1 = 2^(b-2)``."""
  return 2 ** (bits - 2)


def inq_partition(score: jax.Array, frozen: jax.Array, count: jax.Array) -> jax.Array:
  """The frozen set grown to ``count`` weights: the ``frozen`` ones, then the highest
  ``score`` among the others (ties: the earlier element, as
  :func:`~jaxcompress.pruning.keep_top`).

  Args:
    score: float array (INQ: ``|w|``, larger first).
    frozen: ``bool`` array of the weights already frozen (at most ``count``).
    count: the number of weights frozen afterwards (an ``int32`` scalar, may be traced).

  Returns:
    ``bool`` array, a superset of ``frozen`` with exactly ``count`` True entries.
  """
  ranked = jnp.where(frozen, jnp.inf, jnp.asarray(score, jnp.float32))
  return keep_top(ranked, count)


def inq_quantize(w: jax.Array, emax: jax.Array, bits: int) -> jax.Array:
  """Each weight rounded to the nearest of INQ's levels ``{0, ±2^n2, ..., ±2^n1}``
  (``n1 = emax``): ``β sgn(w)`` where ``(α + β)/2 <= |w| < 3β/2`` for adjacent levels
  ``α < β`` (Zhou et al. 2017, Eq. 4), 0 below ``2^(n2-1)``. Exact (the float's bits)."""
  levels = inq_levels(bits)
  return pot_codebook(emax, levels, w.dtype)[pot_indices(w, emax, levels)]


class INQLeaf(NamedTuple):
  """Per-leaf state of :func:`inq`.

  Attributes:
    frozen: ``bool[shape]``, the quantized-and-frozen weights.
    emax: ``int32`` scalar, ``n1`` of the layer, fixed from the weights at ``init``.
  """

  frozen: jax.Array
  emax: jax.Array


def frozen_of(leaves: object, leaf_type: type) -> object:
  """The ``frozen`` seam's tree: each selected leaf's ``frozen`` mask (its state is a
  ``leaf_type``), ``None`` elsewhere."""
  return jax.tree.map(lambda s: s.frozen, leaves, is_leaf=lambda x: isinstance(x, leaf_type))


def inq(
  bits: int = 5,
  *,
  steps: Sequence[int],
  portions: Sequence[float] = (0.5, 0.75, 0.875, 1.0),
  where: select.Where = None,
) -> Compressor:
  """Incremental Network Quantization: weights become powers of two (or zero) in stages.

  Per layer, the levels are ``{0} ∪ {±2^n : n2 <= n <= n1}`` with ``n1 = floor(log2(4
  max|W| / 3))`` (from the weights at ``init``, fixed afterwards: the largest weight is
  frozen first, so it never changes) and ``n2 = n1 + 1 - 2^(b-1)/2``
  (:func:`inq_exponents`). From step ``steps[i]`` on, the accumulated portion
  ``portions[i]`` of each layer's weights is quantized (:func:`inq_quantize`) and frozen:
  at each new portion, the largest ``|w|`` among the weights not yet frozen join the
  frozen set (:func:`inq_partition`; the paper's "pruning-inspired" partition), and the
  rest keep training in float to make up for the error. A frozen weight is held by the
  :class:`~jaxcompress.Compressor`'s ``frozen`` seam: ``train.make_step`` gives it no
  gradient, no update and no optimizer moments (weight decay cannot move it), and
  ``update`` writes its quantized value into the params. The paper's schedule is
  50%, 75%, 87.5%, 100%.

  ``apply`` shows the frozen weights at their levels and the others as they are (no
  gradient reaches the frozen ones). ``pack`` stores a
  :class:`~jaxcompress.export.CodebookArray` of the ``2^(b-1) + 1`` levels at ``b``-bit
  indices once every weight of the leaf is frozen (the last portion reached); before
  that, the dense view.

  Args:
    bits: the bit-width ``b``, 2..8 (the paper's 5 gives 17 levels; 3 gives 5).
    steps: the step (``update`` count; 0 is the step of ``init``) from which each portion
      holds, strictly increasing integers ``>= 0``, one per portion.
    portions: the accumulated portions, in ``(0, 1]``, nondecreasing, ending at 1.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` holding :class:`INQLeaf`.

  Raises:
    ValueError: if ``bits`` is not an integer in 2..8, or the schedule is invalid
      (:func:`check_schedule`: portions outside ``(0, 1]``, decreasing, or not reaching
      1; steps not strictly increasing or not one per portion); at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Zhou, Yao, Guo, Xu & Chen 2017, "Incremental Network Quantization: Towards Lossless
    CNNs with Low-Precision Weights", https://arxiv.org/abs/1702.03044.

  Example:
    >>> import jax.numpy as jnp
    >>> c = inq(3, steps=(0, 1), portions=(0.5, 1.0))  # levels 0, ±0.5, ±1 here
    >>> params, state = c.init({'w': jnp.array([[1.1, -0.3], [0.2, -0.6]])})
    >>> c.apply(params, state)['w'].tolist()  # the two largest are frozen
    [[1.0, -0.30000001192092896], [0.20000000298023224, -0.5]]
  """
  bits = validate.check_int("bits", bits, low=2, high=8)
  portions, steps = check_schedule(portions, steps)
  levels = inq_levels(bits)

  def quantize_frozen(w, leaf):
    return jnp.where(leaf.frozen, inq_quantize(w, leaf.emax, bits), w)

  def refreeze(w, leaf, count):
    frozen = inq_partition(jnp.abs(w), leaf.frozen, count)
    leaf = leaf._replace(frozen=frozen)
    return quantize_frozen(w, leaf), leaf

  def init_leaf(path, p):
    del path
    n1, _ = inq_exponents(p, bits)
    return INQLeaf(frozen=jnp.zeros(p.shape, bool), emax=n1)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: their zeros are frozen at level 0 like any weight
    leaves = leafwise.init_selected(params, where, init_leaf)
    state = leafwise.LeafwiseState.start(leaves)
    portion = portion_at(state.count, portions, steps)
    params, leaves = leafwise.update_selected(
      lambda w, leaf: refreeze(w, leaf, num_pruned(portion, w.size)), params, leaves
    )
    return params, state._replace(leaves=leaves)

  def apply(params, state):
    # the frozen weights already hold their levels; quantizing again keeps the view exact
    # even if something outside make_step moved them, and stops their gradient
    return leafwise.map_selected(
      lambda w, leaf: jnp.where(leaf.frozen, jax.lax.stop_gradient(inq_quantize(w, leaf.emax, bits)), w),
      params,
      state.leaves,
    )

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    before = portion_at(state.count, portions, steps)
    state = state.advance()
    after = portion_at(state.count, portions, steps)

    def one(w, leaf):
      return jax.lax.cond(
        num_pruned(after, w.size) != num_pruned(before, w.size),
        lambda w, leaf: refreeze(w, leaf, num_pruned(after, w.size)),
        lambda w, leaf: (quantize_frozen(w, leaf), leaf),
        w,
        leaf,
      )

    params, leaves = leafwise.update_selected(one, params, state.leaves)
    return params, state._replace(leaves=leaves)

  def pack_leaf(p, leaf):
    w = jnp.asarray(export.materialize(p))
    frozen = np.asarray(leaf.frozen)
    if not frozen.all():
      return np.asarray(jnp.where(leaf.frozen, inq_quantize(w, leaf.emax, bits), w))
    codebook = pot_codebook(leaf.emax, levels, w.dtype)
    return export.from_assignments(np.asarray(codebook), np.asarray(pot_indices(w, leaf.emax, levels)))

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  def frozen(state):
    return frozen_of(state.leaves, INQLeaf)

  return Compressor(init, apply, update, pack, frozen=frozen)
