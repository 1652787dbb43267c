"""Dynamic sparse training: drop and regrow connections on a schedule (SET, RigL).

The number of weights per leaf is fixed (by an allocation of the target sparsity); every
``frequency`` steps until ``end_step`` a fraction of the active weights (constant, decaying
along a cosine, or following a schedule) with the smallest ``|w|`` is dropped and as many
are regrown among the weights inactive after the drop, at random (SET) or by largest
dense-gradient magnitude (RigL). A regrown weight that was inactive before the update is
a new connection: it starts at 0 (RigL) or at a random value (SET), and
:func:`~jaxcompress.train.make_step` starts its optimizer moments at 0. A weight dropped
and regrown in the same update keeps its value and moments (RigL's reference
implementation, ``reinit_when_same=False``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import is_packed_leaf, leaves_with_paths
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._allocation import Allocation, as_allocation
from jaxcompress.pruning._masking import PruningState

DSTState = PruningState
"""State of :func:`rigl` and :func:`sparse_evolutionary`, the mask pruners' state:
``count`` (``int32`` steps), ``masks`` (``bool`` per selected leaf, ``None`` elsewhere),
``key`` (PRNG key data for the random initial mask and SET's regrowth); ``scores`` unused
(``None`` at every leaf)."""


def drop_fraction_at(step: jax.Array, drop_fraction: float, end_step: int) -> jax.Array:
  """RigL's cosine decay of the drop fraction: ``f/2 * (1 + cos(pi * min(t, T_end) / T_end))``.

  Args:
    step: the step ``t``, an integer scalar (traced or concrete).
    drop_fraction: ``f``, the fraction at step 0.
    end_step: ``T_end``, where the fraction reaches 0 (>= 1).

  Returns:
    A float32 scalar in ``[0, f]``.

  References:
    Evci et al. 2020, eq. 4, https://arxiv.org/abs/1911.11134.
  """
  t = jnp.asarray(step, jnp.float32)
  return drop_fraction / 2 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))


def drop_and_grow(
  w: jax.Array, mask: jax.Array, grow_scores: jax.Array, n_drop: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Drops the ``n_drop`` active weights with the smallest ``|w|`` and grows the
  ``n_drop`` inactive ones (after the drop) with the highest ``grow_scores``.

  Returns:
    ``(new_mask, grown)``: the active count is unchanged; ``grown`` marks the regrown
    positions (a weight dropped and regrown in the same step counts as regrown).
  """
  active = jnp.sum(mask, dtype=jnp.int32)
  kept = criteria.keep_top(jnp.where(mask, jnp.abs(w), -jnp.inf), active - n_drop)
  candidates = jnp.where(kept, -jnp.inf, jnp.nan_to_num(grow_scores, nan=-jnp.inf))
  grown = criteria.keep_top(candidates, n_drop) & ~kept
  return kept | grown, grown


_dense_grad_mask = masking.straight_through  # RigL needs the dense gradient at inactive weights


def _check_fraction(name: str, value: Any) -> float:
  return validate.check_float(name, value, low=0.0, high=1.0)


def _build(
  regrow: str,
  sparsity: float,
  frequency: int,
  end_step: int,
  drop_fraction: validate.ScalarOrSchedule,
  allocation: str | Allocation,
  init_mask: str,
  seed: int,
  where: select.Where,
  drop_fraction_anneal: str,
  grow_init: str,
) -> Compressor:
  """The compressor of :func:`rigl` (``regrow='gradient'``) and :func:`sparse_evolutionary`
  (``regrow='random'``), with their arguments, validated here."""
  s = validate.check_sparsity("sparsity", sparsity)
  frequency = validate.check_int("frequency", frequency, low=1)
  end_step = validate.check_int("end_step", end_step, low=1)
  if frequency > end_step:
    raise ValueError(f"frequency={frequency} is larger than end_step={end_step}: the mask would never be updated")
  if callable(drop_fraction):
    fraction = validate.as_schedule("drop_fraction", drop_fraction, _check_fraction)
    # the steps that rewire are known: check the schedule at each of them now, not mid-run
    validate.probe_schedule("drop_fraction", fraction, range(frequency, end_step, frequency), _check_fraction)
  else:
    alpha = _check_fraction("drop_fraction", drop_fraction)
    validate.check_choice("drop_fraction_anneal", drop_fraction_anneal, ("cosine", "constant"))
    if drop_fraction_anneal == "cosine":
      fraction = lambda step: drop_fraction_at(step, alpha, end_step)
    else:
      fraction = lambda step: jnp.asarray(alpha, jnp.float32)
  validate.check_choice("grow_init", grow_init, ("zeros", "normal"))
  alloc = as_allocation(allocation)
  validate.check_choice("init_mask", init_mask, ("random", "magnitude"))
  seed = validate.check_int("seed", seed)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    marker = leafwise.init_selected(params, where, lambda path, p: True)
    treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
    flat_p, flat_mk = treedef.flatten_up_to(params), treedef.flatten_up_to(marker)
    paths = [p for p, _ in leaves_with_paths(params)]
    idx = [i for i, m in enumerate(flat_mk) if m is not None]
    targets = alloc.sparsities([paths[i] for i in idx], [flat_p[i].shape for i in idx], s)
    key = jax.random.key(seed)
    flat_m: list[Any] = [None] * len(flat_p)
    for j, (i, t) in enumerate(zip(idx, targets)):
      w = flat_p[i]
      scores = jax.random.uniform(jax.random.fold_in(key, j), w.shape) if init_mask == "random" else jnp.abs(w)
      flat_m[i] = criteria.topk_mask(scores, jnp.minimum(t, (w.size - 1) / w.size))  # never the last weight
    unused = treedef.unflatten([None] * len(flat_p))
    state = PruningState(jnp.asarray(0, jnp.int32), treedef.unflatten(flat_m), unused, jax.random.key_data(key))
    return params, state

  who = "rigl" if regrow == "gradient" else "sparse_evolutionary"

  def apply(params, state):
    masking.check_state(state, PruningState, who)
    mask_fn = _dense_grad_mask if regrow == "gradient" else masking.zero_pruned
    return leafwise.map_selected(mask_fn, params, state.masks)

  def update(params, state, *, grads=None, **extra):
    del extra
    masking.check_state(state, PruningState, who)
    count = state.count + 1
    treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
    flat_p, flat_m = treedef.flatten_up_to(params), treedef.flatten_up_to(state.masks)
    flat_g = treedef.flatten_up_to(grads) if grads is not None else [None] * len(flat_p)
    idx = [i for i, m in enumerate(flat_m) if m is not None]
    frac = jnp.asarray(fraction(count), jnp.float32)  # traced: the schedule runs under jit
    frac = jnp.where(jnp.isnan(frac), 0.0, jnp.clip(frac, 0.0, 1.0))  # checked at construction; NaN: no rewiring
    due = (count % frequency == 0) & (count < end_step)
    base = jax.random.fold_in(jax.random.wrap_key_data(state.key), count)

    def rewire():
      masks, weights = [], []
      for j, i in enumerate(idx):
        w, m = flat_p[i], flat_m[i]
        n_drop = jnp.floor(frac * jnp.sum(m, dtype=jnp.int32)).astype(jnp.int32)
        if regrow == "gradient":
          grow_scores = jnp.abs(flat_g[i]).astype(jnp.float32)
        else:
          grow_scores = jax.random.uniform(jax.random.fold_in(base, j), w.shape)
        new_m, grown = drop_and_grow(w, m, grow_scores, n_drop)
        new = grown & ~m  # inactive before: a new connection (dropped and regrown keeps its value)
        if grow_init == "normal":
          active = jnp.maximum(jnp.sum(m, dtype=jnp.int32), 1)
          mean = jnp.sum(jnp.where(m, w, 0)) / active
          std = jnp.sqrt(jnp.sum(jnp.where(m, (w - mean) ** 2, 0)) / active)
          noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(base, j), 1), w.shape, jnp.float32)
          start = (std * noise).astype(w.dtype)
        else:
          start = jnp.zeros_like(w)
        masks.append(new_m)
        weights.append(jnp.where(new_m, jnp.where(new, start, w), jnp.zeros_like(w)))
      return masks, weights

    def keep():
      return [flat_m[i] for i in idx], [masking.zero_pruned(flat_p[i], flat_m[i]) for i in idx]

    if regrow == "gradient" and grads is None:
      masks, weights = keep()  # nothing to regrow by: the masks stay (make_step always passes grads)
    else:
      masks, weights = jax.lax.cond(due, rewire, keep)
    out_p, out_m = list(flat_p), list(flat_m)
    for j, i in enumerate(idx):
      out_p[i], out_m[i] = weights[j], masks[j]
    return treedef.unflatten(out_p), state._replace(count=count, masks=treedef.unflatten(out_m))

  def pack(params, state):
    masking.check_state(state, PruningState, who)
    return leafwise.map_selected(export.prune, params, state.masks)

  def masks(state):
    masking.check_state(state, PruningState, who)
    return state.masks

  return Compressor(init, apply, update, pack, masks=masks)


def rigl(
  sparsity: float,
  *,
  frequency: int = 100,
  end_step: int,
  drop_fraction: validate.ScalarOrSchedule = 0.3,
  allocation: str | Allocation = "erk",
  init_mask: str = "random",
  seed: int = 0,
  where: select.Where = None,
  drop_fraction_anneal: str = "cosine",
  grow_init: str = "zeros",
) -> Compressor:
  """RigL: rewires sparse layers, regrowing the inactive weights with the largest
  gradient magnitude.

  Every ``frequency`` steps before ``end_step``, each selected leaf drops its
  ``floor(f_t * active)`` smallest-magnitude active weights and activates as many
  inactive weights with the largest ``|g|``, where ``g`` is the **dense** gradient:
  ``apply`` masks the weights with an identity gradient, so ``update`` receives gradients
  at inactive positions too (use :func:`~jaxcompress.train.make_step` so those do not move
  the optimizer's moments). ``f_t`` is the paper's cosine decay of a constant
  ``drop_fraction`` (:func:`drop_fraction_at`), or the value of a schedule at the step,
  evaluated inside ``update`` (so under ``jit``). New connections (inactive before the
  update) start at exactly 0; a weight dropped and regrown in the same update keeps its
  value (the reference implementation's default, ``reinit_when_same=False``). The
  active count per leaf never changes. An ``update`` called without ``grads`` cannot
  regrow and leaves the masks as they are.

  Args:
    sparsity: fraction removed overall, in [0, 1); the per-leaf split follows
      ``allocation`` and stays fixed.
    frequency: ``ΔT``, steps between mask updates (>= 1, <= ``end_step``).
    end_step: ``T_end``, the step from which masks stay fixed (>= 1).
    drop_fraction: ``α``, the fraction of active weights rewired: a constant in [0, 1],
      decayed along a cosine from ``α`` at step 0 to 0 at ``end_step``; or a schedule
      ``step -> f_t`` (an ``int32`` step in, a float scalar out), used as it is, such as
      ``optax.cosine_decay_schedule(0.3, end_step)`` (the same decay) or
      ``optax.constant_schedule(0.3)``. A schedule is checked at step 0 and at every
      rewiring step (``frequency, 2 frequency, ... < end_step``), naming the first bad
      step; under ``jit`` a value is also clipped to [0, 1], and NaN rewires nothing.
    allocation: ``'erk'`` (the paper's default), ``'uniform'`` or an
      :class:`~jaxcompress.pruning.Allocation`.
    init_mask: ``'random'`` (the paper: train a random sparse network from scratch) or
      ``'magnitude'`` (start from the largest weights of a trained model).
    seed: PRNG seed for the initial mask (and SET's regrowth).
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).
    drop_fraction_anneal: how a constant ``drop_fraction`` varies: ``'cosine'`` (the
      paper's default) or ``'constant'``.
    grow_init: the value of a new connection: ``'zeros'`` (the paper's) or
      ``'normal'`` (``N(0, sigma^2)``, ``sigma`` the standard deviation of the leaf's
      active weights at that update).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`DSTState`.

  Raises:
    ValueError: for a sparsity outside [0, 1), an unknown ``drop_fraction_anneal`` or
      ``grow_init``, ``frequency < 1`` or larger than
      ``end_step``, a ``drop_fraction`` (or its value at step 0 or a rewiring step)
      outside [0, 1] or a
      schedule that does not return a number, an unknown ``init_mask``; at ``init`` as
      for :func:`~jaxcompress.pruning.magnitude`.

  References:
    Evci, Gale, Menick, Castro & Elsen 2020, "Rigging the Lottery: Making All Tickets
    Winners", https://arxiv.org/abs/1911.11134.

  Example:
    >>> import jax.numpy as jnp
    >>> c = rigl(0.5, frequency=1, end_step=1000, drop_fraction=1.0, init_mask="magnitude",
    ...          allocation='uniform')
    >>> params, state = c.init({'w': jnp.array([[4.0, 3.0, 2.0, 1.0]])})
    >>> grads = {'w': jnp.array([[0.0, 0.0, 0.5, 9.0]])}
    >>> params, state = c.update(params, state, grads=grads)  # drop 3.0, grow the 9.0 gradient (at 0)
    >>> state.masks['w'].tolist(), params['w'].tolist()
    ([[True, False, False, True]], [[4.0, 0.0, 0.0, 0.0]])
  """
  return _build(
    "gradient",
    sparsity,
    frequency,
    end_step,
    drop_fraction,
    allocation,
    init_mask,
    seed,
    where,
    drop_fraction_anneal,
    grow_init,
  )


def sparse_evolutionary(
  sparsity: float,
  *,
  frequency: int = 100,
  end_step: int,
  drop_fraction: validate.ScalarOrSchedule = 0.3,
  allocation: str | Allocation = "erk",
  init_mask: str = "random",
  seed: int = 0,
  where: select.Where = None,
  drop_fraction_anneal: str = "constant",
  grow_init: str = "normal",
) -> Compressor:
  """SET (sparse evolutionary training): rewires sparse layers, regrowing at random.

  As :func:`rigl`, but the regrown weights are drawn uniformly among the inactive ones
  (gradients are not needed, and ``apply`` masks with a zero gradient at pruned
  weights). Every ``frequency`` steps before ``end_step`` each selected leaf drops its
  ``floor(zeta * active)`` smallest-magnitude active weights and regrows as many. As in
  the paper, ``zeta`` is constant (no decay) and the new connections start at random
  values; the paper's code draws them from the initialization's distribution
  (``N(0, 0.1^2)``), which a compressor cannot know, so this draws ``N(0, sigma^2)`` with
  ``sigma`` the standard deviation of the leaf's active weights at that update
  (``grow_init='zeros'`` starts them at 0, as RigL's reference does for SET). A weight
  dropped and regrown at once keeps its value. The paper removes the smallest positive
  and largest negative weights separately (a fraction ``zeta`` of each); this drops the
  smallest ``|w|`` overall.

  Args:
    sparsity: as for :func:`rigl`: fraction removed overall, in [0, 1).
    frequency: as for :func:`rigl`: steps between mask updates.
    end_step: as for :func:`rigl`: the step from which masks stay fixed.
    drop_fraction: ``zeta``: a constant in [0, 1] (0.3 in the paper), or a schedule
      ``step -> f_t`` as for :func:`rigl`.
    allocation: as for :func:`rigl` (default ``'erk'``).
    init_mask: as for :func:`rigl`: ``'random'`` or ``'magnitude'``.
    seed: PRNG seed for the initial mask, the random regrowth and the new values.
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).
    drop_fraction_anneal: ``'constant'`` (the paper) or ``'cosine'`` (RigL's decay).
    grow_init: ``'normal'`` (the paper: random values) or ``'zeros'``.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`DSTState`.

  Raises:
    ValueError: as for :func:`rigl`.

  References:
    Mocanu, Mocanu, Stone, Nguyen, Gibescu & Liotta 2018, "Scalable training of
    artificial neural networks with adaptive sparse connectivity inspired by network
    science", https://arxiv.org/abs/1707.04780.

  Example:
    >>> import jax.numpy as jnp
    >>> c = sparse_evolutionary(0.5, frequency=1, end_step=1000, drop_fraction=1.0,
    ...                         allocation='uniform', init_mask='magnitude')
    >>> params, state = c.init({'w': jnp.array([[4.0, 3.0, 2.0, 1.0]])})
    >>> params, state = c.update(params, state)
    >>> int(state.masks['w'].sum()), bool(state.masks['w'][0, 0])
    (2, True)
  """
  return _build(
    "random",
    sparsity,
    frequency,
    end_step,
    drop_fraction,
    allocation,
    init_mask,
    seed,
    where,
    drop_fraction_anneal,
    grow_init,
  )
