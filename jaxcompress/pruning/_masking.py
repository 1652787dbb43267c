"""The engine shared by the mask-based pruners: scores -> masks on a schedule.

A criterion is a function of one leaf, ``score(w, g, acc, key) -> scores`` (higher =
keep), where ``w`` is the masked weight, ``g`` the gradient passed to ``update`` (or
``None``), ``acc`` the leaf's accumulated score (movement pruning) and ``key`` a PRNG key
for this leaf and step. A structure turns scores into a mask (unstructured top-k, blocks,
N:M); the scope is per leaf (``'layer'``) or over all selected leaves (``'global'``); an
:class:`~jaxcompress.pruning.Allocation` splits the target among leaves.

Masks are recomputed in ``update`` only when a target count changes (under
``lax.cond``), from scores in which already-pruned weights rank last, so gradual pruning
never revives a weight and a constant sparsity costs one ``where`` per step. Movement
pruning (``revive_every``) instead re-ranks all weights every ``frequency`` steps, so a
pruned weight whose score rises returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import check_matching, is_packed_leaf, leaves_with_paths
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning._allocation import Allocation, as_allocation

Score = Callable[[jax.Array, Any, Any, jax.Array], jax.Array]
Accumulate = Callable[[Any, jax.Array, Any], Any]


class PruningState(NamedTuple):
  """State of the mask-based pruners.

  Attributes:
    count: ``int32`` step counter, advanced by ``update``.
    masks: ``bool`` masks (True = keep) mirroring the params, ``None`` at unselected
      leaves.
    scores: accumulated scores per selected leaf (movement pruning), else ``None``.
    key: PRNG key data (``uint32[2]``) for random criteria.
  """

  count: jax.Array
  masks: Any
  scores: Any
  key: jax.Array


def zero_pruned(p: jax.Array, m: jax.Array) -> jax.Array:
  """``p`` with the entries where ``m`` is False set to exactly zero."""
  return jnp.where(m, p, jnp.zeros_like(p))


def straight_through(p: jax.Array, m: jax.Array) -> jax.Array:
  """``where(m, p, 0)`` exactly, with the identity as gradient: the gradient reaches pruned
  weights too (movement pruning scores them, RigL regrows by it)."""
  return p + jax.lax.stop_gradient(jnp.where(m, p, jnp.zeros_like(p)) - p)


def first_kept(scores: jax.Array) -> jax.Array:
  """``scores`` with the highest entry (the first of equals; NaN lowest) raised to ``+inf``."""
  flat = jnp.asarray(scores, jnp.float32).reshape(-1)
  best = jnp.argmax(jnp.where(jnp.isnan(flat), -jnp.inf, flat))
  return jnp.where(jnp.arange(flat.size) == best, jnp.inf, flat).reshape(scores.shape)


def global_masks_keeping_one(scores: list[jax.Array], sparsity: jax.Array | float) -> list[jax.Array]:
  """``global_topk_masks([first_kept(s) for s in scores], sparsity)``, ranking once in the usual case
  (:func:`~jaxcompress.pruning._criteria.keep_top_many_keeping_one`)."""
  n = sum(jnp.size(s) for s in scores)
  return criteria.keep_top_many_keeping_one(scores, n - criteria.num_pruned(sparsity, n))


def check_state(state: Any, expected: type, who: str) -> None:
  """Raises ``TypeError`` unless ``state`` is an ``expected`` (the state ``who``'s ``init`` returns).

  A state from another compressor (a quantizer's ``LeafwiseState``, a chain's
  ``ChainState``) would otherwise fail deep inside with a bare ``AttributeError``.
  """
  if not isinstance(state, expected):
    raise TypeError(
      f"{who} expected its own state, a {expected.__name__} (what its init returns), "
      f"got a {type(state).__name__}: pass the state from this compressor's init/update"
    )


def held(init: Callable[..., Any], state_type: type, who: str) -> Compressor:
  """A :class:`~jaxcompress.Compressor` holding the keep-masks its ``init`` puts in
  ``state.masks`` (a ``state_type`` with ``count`` and ``masks``): ``apply`` and ``update``
  zero the pruned weights (``update`` also counts the step), ``pack`` stores each masked
  leaf with :func:`~jaxcompress.export.prune`, and ``masks`` reports them; each checks
  that it got ``who``'s own state."""

  def apply(params, state):
    check_state(state, state_type, who)
    return leafwise.map_selected(zero_pruned, params, state.masks)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    check_state(state, state_type, who)
    return leafwise.map_selected(zero_pruned, params, state.masks), state._replace(count=state.count + 1)

  def pack(params, state):
    check_state(state, state_type, who)
    return leafwise.map_selected(export.prune, params, state.masks)

  def masks(state):
    check_state(state, state_type, who)
    return state.masks

  return Compressor(init, apply, update, pack, masks=masks)


def check_scope(scope: str) -> str:
  """Validates ``scope``: ``'layer'`` (per-leaf targets) or ``'global'`` (one ranking)."""
  return validate.check_choice("scope", scope, ("layer", "global"))


def check_block(block: Any) -> tuple[int, ...] | None:
  """Validates a block shape such as ``(1, 4)``: a non-empty tuple of positive ints, or ``None``."""
  if block is None:
    return None
  if not isinstance(block, tuple) or not block:
    raise ValueError(f"block must be a non-empty tuple of positive ints such as (1, 4), got {block!r}")
  return tuple(validate.check_int("block size", b, low=1) for b in block)


def check_grads(params: Any, grads: Any, who: str) -> None:
  """Raises ``ValueError`` unless ``grads`` mirrors ``params`` leaf for leaf in shape."""
  if grads is None:
    raise ValueError(f"{who} needs gradients: pass grads= (a tree like the params)")
  check_matching(params, grads, "grads")
  for (path, p), (_, g) in zip(leaves_with_paths(params), leaves_with_paths(grads)):
    if g is not None and getattr(g, "shape", None) != getattr(p, "shape", None):
      raise ValueError(f"grads leaf {path!r} has shape {getattr(g, 'shape', None)}, the param has {p.shape}")


def build(
  sparsity: validate.ScalarOrSchedule,
  score: Score,
  *,
  where: select.Where,
  scope: str = "layer",
  allocation: str | Allocation = "uniform",
  block: tuple[int, ...] | None = None,
  structure: Callable[[jax.Array, Any], jax.Array] | None = None,
  init_grads: Any = None,
  needs_grads: bool = False,
  accumulate: Accumulate | None = None,
  revive_every: int | None = None,
  total_steps: int | None = None,
  seed: int = 0,
  who: str = "pruning",
) -> Compressor:
  """Builds a mask-based pruner (see the module docstring). Factories call this after
  validating their own hyperparameters.

  ``revive_every=k`` (movement pruning) changes three things: ``apply`` masks with an
  identity gradient (so ``update`` gets the gradient at pruned weights too), ``update``
  accumulates scores with the dense weights and leaves the pruned weights' values in the
  params, and masks are recomputed from *all* scores (pruned weights can return) every
  ``k`` steps as well as whenever a target count changes.

  Traced targets are made safe rather than checked (under ``jit`` nothing can raise): a
  target is clipped so that every leaf keeps at least one weight (one block), and a NaN
  target holds the previous masks. With ``total_steps`` a schedule is checked at every
  step of the run (:func:`~jaxcompress.core.validate.probe_schedule`)."""
  schedule = validate.as_schedule("sparsity", sparsity, validate.check_sparsity)
  check_scope(scope)
  block = check_block(block)
  alloc = as_allocation(allocation)
  if scope == "global" and (alloc.method != "uniform" or alloc.overrides or block is not None):
    raise ValueError(
      "scope='global' ranks all selected weights together: it takes no ERK allocation, overrides or block"
    )
  if total_steps is not None and callable(sparsity):
    n = validate.check_int("total_steps", total_steps, low=1)
    validate.probe_schedule("sparsity", schedule, validate.run_steps(n), validate.check_sparsity)
  with jax.ensure_compile_time_eval():  # concrete even when the factory runs under jit/pmap
    s0 = float(np.asarray(schedule(jnp.asarray(0, jnp.int32))))

  def units_of(shapes):
    return [int(np.prod(s)) // (int(np.prod(block)) if block else 1) for s in shapes]

  def targets(paths, shapes, step):
    """Per-leaf targets, clipped so each leaf keeps one unit (NaN stays NaN: masks hold)."""
    s = jnp.asarray(schedule(step), jnp.float32)
    if scope == "global":
      total = sum(int(np.prod(sh)) for sh in shapes)
      return [jnp.minimum(s, (total - len(shapes)) / total)] * len(paths)
    per_leaf = alloc.sparsities(paths, shapes, s, step)
    return [jnp.minimum(jnp.asarray(t, jnp.float32), (u - 1) / u) for t, u in zip(per_leaf, units_of(shapes))]

  def structured(scores, s):
    if structure is not None:
      return structure(scores, s)
    return criteria.block_mask(scores, s, block) if block is not None else criteria.topk_mask(scores, s)

  def counts(paths, shapes, step):
    """The number of pruned units per leaf (or the single global count); -1 for NaN."""
    targets_ = targets(paths, shapes, step)
    if scope == "global":
      total = sum(int(np.prod(s)) for s in shapes)
      targets_, units = targets_[:1], [total]
    else:
      units = units_of(shapes)
    return [jnp.where(jnp.isnan(t), -1, criteria.num_pruned(t, u)) for t, u in zip(targets_, units)]

  def masks_from(paths, shapes, scores, step):
    targets_ = targets(paths, shapes, step)
    if scope == "global":
      # each leaf's best weight ranks first, so no leaf loses its last weight
      return global_masks_keeping_one(scores, targets_[0])
    return [structured(sc, t) for sc, t in zip(scores, targets_)]

  def selected(params, state_masks):
    check_matching(params, state_masks, "compressor state")
    treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
    flat_p = treedef.flatten_up_to(params)
    flat_m = treedef.flatten_up_to(state_masks)
    paths = [p for p, _ in leaves_with_paths(params)]
    idx = [i for i, m in enumerate(flat_m) if m is not None]
    return treedef, flat_p, flat_m, paths, idx

  def leaf_keys(key, step, n):
    base = jax.random.fold_in(jax.random.wrap_key_data(key), step)
    return [jax.random.fold_in(base, i) for i in range(n)]

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    if init_grads is not None:
      check_grads(params, init_grads, who)
    elif needs_grads and s0 > 0:
      raise ValueError(f"{who} at sparsity(0)={s0} needs gradients at init: pass grads= to the factory")
    marker = leafwise.init_selected(params, where, lambda path, p: True)
    treedef, flat_p, _flat_marker, paths, idx = selected(params, marker)
    flat_g = treedef.flatten_up_to(init_grads) if init_grads is not None else [None] * len(flat_p)
    key = jax.random.key_data(jax.random.key(seed))
    keys = leaf_keys(key, 0, len(idx))
    shapes = [tuple(flat_p[i].shape) for i in idx]
    if (needs_grads and init_grads is None) or accumulate is not None:
      masks = [jnp.ones(s, bool) for s in shapes]  # sparsity(0) is 0: nothing to rank yet
    else:
      scores = [score(flat_p[i], flat_g[i], None, k) for i, k in zip(idx, keys)]
      masks = masks_from([paths[i] for i in idx], shapes, scores, jnp.asarray(0, jnp.int32))
    flat_masks: list[Any] = [None] * len(flat_p)
    flat_acc: list[Any] = [None] * len(flat_p)
    for i, m in zip(idx, masks):
      flat_masks[i] = m
      if accumulate is not None:
        flat_acc[i] = jnp.zeros(flat_p[i].shape, jnp.float32)
    state = PruningState(
      count=jnp.asarray(0, jnp.int32),
      masks=treedef.unflatten(flat_masks),
      scores=treedef.unflatten(flat_acc),
      key=key,
    )
    return params, state

  def apply(params, state):
    check_state(state, PruningState, who)
    # Masking here, not only by projection in `update`, keeps chains right: in
    # chain(prune, quantize) the quantizer's output is masked, and a quantizer whose
    # grid has no exact zero (binary, k-means) would otherwise revive pruned weights.
    return leafwise.map_selected(straight_through if revive_every else zero_pruned, params, state.masks)

  def update(params, state, *, grads=None, **extra):
    del extra
    check_state(state, PruningState, who)
    if needs_grads and grads is None and callable(sparsity):
      raise ValueError(f"{who} on a schedule needs gradients: call update with grads= (train.make_step does)")
    count = state.count + 1
    treedef, flat_p, flat_m, paths, idx = selected(params, state.masks)
    flat_g = treedef.flatten_up_to(grads) if grads is not None else [None] * len(flat_p)
    flat_acc = treedef.flatten_up_to(state.scores)
    sel_paths = [paths[i] for i in idx]
    shapes = [tuple(flat_p[i].shape) for i in idx]
    acc = [flat_acc[i] for i in idx]
    if accumulate is not None and grads is not None:
      weights = [flat_p[i] if revive_every else zero_pruned(flat_p[i], flat_m[i]) for i in idx]
      acc = [accumulate(a, w, flat_g[i]) for a, w, i in zip(acc, weights, idx)]
    keys = leaf_keys(state.key, count, len(idx))
    old, new = counts(sel_paths, shapes, state.count), counts(sel_paths, shapes, count)

    current = [flat_m[i] for i in idx]

    def ranked(j, i):
      """Leaf ``j``'s scores; already-pruned weights rank last unless they may return. Masked
      here, inside the ``cond`` that recomputes the masks, so that it fuses with the scoring."""
      sc = score(zero_pruned(flat_p[i], flat_m[i]), flat_g[i], acc[j], keys[j]).astype(jnp.float32)
      return sc if revive_every else jnp.where(flat_m[i], sc, -jnp.inf)

    def due(n_new, n_old):
      changed = n_new != n_old
      changed = changed | (count % revive_every == 0) if revive_every else changed
      return changed & (n_new >= 0)  # a NaN target holds the masks

    def fresh_scores():
      return [ranked(j, i) for j, i in enumerate(idx)]

    if needs_grads and grads is None:
      masks = current  # constant sparsity (checked above): the masks never change
    elif scope == "global":
      masks = jax.lax.cond(
        due(new[0], old[0]), lambda: masks_from(sel_paths, shapes, fresh_scores(), count), lambda: current
      )
    else:
      # Each leaf's mask is recomputed only on the steps where its own count changes.
      targets_ = targets(sel_paths, shapes, count)
      masks = []
      for j, i in enumerate(idx):

        def recompute(j=j, i=i):
          return structured(ranked(j, i), targets_[j])

        masks.append(jax.lax.cond(due(new[j], old[j]), recompute, lambda c=current[j]: c))
    out_p, out_m, out_acc = list(flat_p), list(flat_m), list(flat_acc)
    for i, m, a in zip(idx, masks, acc):
      out_p[i] = flat_p[i] if revive_every else zero_pruned(flat_p[i], m)  # a pruned value waits to return
      out_m[i] = m
      out_acc[i] = a
    new_state = PruningState(count, treedef.unflatten(out_m), treedef.unflatten(out_acc), state.key)
    return treedef.unflatten(out_p), new_state

  def pack(params, state):
    check_state(state, PruningState, who)
    return leafwise.map_selected(export.prune, params, state.masks)

  def masks(state):
    check_state(state, PruningState, who)
    return state.masks

  return Compressor(init, apply, update, pack, masks=masks)
