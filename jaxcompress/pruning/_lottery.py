"""Iterative magnitude pruning with rewinding: the lottery ticket procedure."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor, no_restart
from jaxcompress.core.tree import is_packed_leaf
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning import _masking as masking


class LotteryState(NamedTuple):
  """State of :func:`lottery_ticket`.

  Attributes:
    count: ``int32`` step counter.
    masks: ``bool`` masks per selected leaf (``None`` elsewhere).
    rewind: the weights that survivors are reset to at the end of each round: the
      params at ``rewind_step`` (``init``'s params when it is 0).
  """

  count: jax.Array
  masks: Any
  rewind: Any


def round_sparsity(rates: jax.Array | float, rounds: jax.Array | int) -> jax.Array:
  """Sparsity after ``rounds`` rounds that each remove a fraction of the survivors.

  Args:
    rates: the fraction pruned per round: a scalar (the same every round) or a float
      vector ``[n]`` whose entry ``k`` is round ``k + 1``'s rate.
    rounds: the number of rounds done (an integer scalar, traced or concrete; with a
      vector, at most ``n`` count).

  Returns:
    A float32 scalar: ``1 - (1 - rate) ** rounds``, or ``1 - prod_{k < rounds} (1 - rates[k])``.

  Example:
    >>> float(round_sparsity(0.5, 2)), float(round_sparsity(jnp.array([0.5, 0.25, 0.9]), 2))
    (0.75, 0.625)
  """
  rates = jnp.asarray(rates, jnp.float32)
  if rates.ndim == 0:
    return 1.0 - (1.0 - rates) ** jnp.asarray(rounds, jnp.float32)
  done = jnp.arange(1, rates.shape[0] + 1) <= jnp.asarray(rounds)
  return 1.0 - jnp.prod(jnp.where(done, 1.0 - rates, 1.0))


def _check_rate(name: str, value: Any) -> float:
  return validate.check_float(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def lottery_ticket(
  rate: validate.ScalarOrSchedule,
  *,
  rounds: int,
  frequency: int,
  rewind_step: int = 0,
  total_steps: int | None = None,
  where: select.Where = None,
  scope: str = "layer",
  restart_optimizer: bool = True,
) -> Compressor:
  """Iterative magnitude pruning (IMP) with weight rewinding.

  Training runs in rounds of ``frequency`` steps. At the end of round ``r``
  (``update`` at step ``r * frequency``, for ``r = 1..rounds``) the ``rate`` fraction
  of the surviving weights with the smallest ``|w|`` is pruned (per leaf, or over all
  selected leaves with ``scope='global'``), so the sparsity becomes exactly
  ``1 - (1 - rate) ** r`` up to rounding (with a schedule, ``1 - prod_k (1 - rate_k)``
  over the rounds ``k <= r``, ``rate_k = rate(k * frequency)``, evaluated inside
  ``update``), and the survivors are **rewound** to their
  values at ``rewind_step`` (0: the initialization, Frankle & Carbin 2019; a few hundred
  steps: late rewinding, Frankle et al. 2020); then training restarts from there.
  After the last round the ticket trains to the end of the run.

  Each round retrains the rewound ticket from a fresh optimizer, as Frankle & Carbin
  train every round from scratch: the compressor's ``restart`` seam is True after each
  pruning update, and :func:`~jaxcompress.train.make_step` then replaces the optimizer
  state by ``optimizer.init(params)`` (the survivors' moments too, and the step count,
  so an optax learning-rate schedule inside the optimizer restarts with each round).
  With late rewinding the weights return to ``rewind_step``'s values but the optimizer
  still starts fresh (its state at ``rewind_step`` is not stored). A training loop of
  one's own should do the same where ``compressor.restart(state)`` is True.

  Args:
    rate: fraction of the surviving weights pruned per round, in (0, 1) (0.2 in the
      paper for fully connected layers), or a schedule ``step -> rate`` (an ``int32``
      step in, a float scalar out, e.g. an optax schedule): round ``k`` prunes
      ``rate(k * frequency)``. A schedule is checked at step 0 and at every round's end.
    rounds: number of pruning rounds (>= 1).
    frequency: training steps per round, so steps between prunings (>= 1).
    rewind_step: the step whose weights survivors are rewound to, in
      ``[0, frequency)``.
    total_steps: the run's length, if known: checked so the last round ends before
      it (a ticket that is never retrained is an error).
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).
    scope: ``'layer'`` or ``'global'``.
    restart_optimizer: restart the optimizer state at each round's rewind (the paper);
      False keeps it (only the pruned weights' moments are reset, by ``make_step``).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`LotteryState`.

  Raises:
    ValueError: if ``rate`` (or a schedule's value at step 0 or at a round's end) is
      outside (0, 1) or a schedule does not return a number, ``rounds`` or
      ``frequency`` < 1, ``rewind_step`` is outside ``[0, frequency)``, ``scope`` is
      unknown, ``restart_optimizer`` is not a bool, or ``rounds * frequency >= total_steps``.

  References:
    Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
    Neural Networks", https://arxiv.org/abs/1803.03635; Frankle, Dziugaite, Roy &
    Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
    https://arxiv.org/abs/1912.05671.

  Example:
    >>> import jax.numpy as jnp
    >>> c = lottery_ticket(0.5, rounds=2, frequency=1)
    >>> params, state = c.init({'w': jnp.array([[1.0, 2.0, 3.0, 4.0]])})
    >>> trained = {'w': jnp.array([[9.0, 1.0, 8.0, 7.0]])}
    >>> params, state = c.update(trained, state)  # round 1: prune 2 of 4, rewind
    >>> params['w'].tolist()
    [[1.0, 0.0, 3.0, 0.0]]
  """
  schedule = validate.as_schedule("rate", rate, _check_rate)
  rounds = validate.check_int("rounds", rounds, low=1)
  if not isinstance(restart_optimizer, bool):
    raise ValueError(f"restart_optimizer must be True or False, got {restart_optimizer!r}")
  frequency = validate.check_int("frequency", frequency, low=1)
  rewind_step = validate.check_int("rewind_step", rewind_step, low=0, high=frequency - 1)
  masking.check_scope(scope)
  if total_steps is not None:
    total = validate.check_int("total_steps", total_steps, low=1)
    if rounds * frequency >= total:
      raise ValueError(
        f"the last of rounds={rounds} ends at step {rounds * frequency}, not before the run's "
        f"total_steps={total}: the final ticket would never be retrained"
      )
  round_ends = jnp.arange(1, rounds + 1, dtype=jnp.int32) * frequency
  if callable(rate):  # the steps that use it are known: check them now, not mid-run
    for step, value in zip(round_ends.tolist(), np.asarray(jax.vmap(schedule)(round_ends)).tolist()):
      _check_rate(f"rate({step})", value)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    masks = leafwise.init_selected(params, where, lambda path, p: jnp.ones(p.shape, bool))
    rewind = leafwise.map_selected(lambda p, m: p, params, masks)
    rewind = jax.tree.map(lambda r, m: None if m is None else r, rewind, masks, is_leaf=lambda x: x is None)
    return params, LotteryState(jnp.asarray(0, jnp.int32), masks, rewind)

  def apply(params, state):
    masking.check_state(state, LotteryState, "lottery_ticket")
    return leafwise.map_selected(masking.zero_pruned, params, state.masks)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    masking.check_state(state, LotteryState, "lottery_ticket")
    count = state.count + 1
    treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
    flat_p = treedef.flatten_up_to(params)
    flat_m = treedef.flatten_up_to(state.masks)
    flat_r = treedef.flatten_up_to(state.rewind)
    idx = [i for i, m in enumerate(flat_m) if m is not None]
    masked = [masking.zero_pruned(flat_p[i], flat_m[i]) for i in idx]
    rewind = [jnp.where(count == rewind_step, w, flat_r[i]) if rewind_step else flat_r[i] for w, i in zip(masked, idx)]
    r = count // frequency
    end = (count % frequency == 0) & (r <= rounds)
    rates = jax.vmap(schedule)(round_ends) if callable(rate) else rate  # a schedule runs traced, under jit
    s = round_sparsity(rates, r)

    def prune():
      scores = [jnp.where(flat_m[i], jnp.abs(w), -jnp.inf) for w, i in zip(masked, idx)]
      if scope == "global":  # every leaf keeps its best weight
        total = sum(sc.size for sc in scores)
        s_all = jnp.minimum(s, (total - len(scores)) / total)
        masks = masking.global_masks_keeping_one(scores, s_all)
      else:  # rounding never takes a leaf's last weight
        masks = [criteria.topk_mask(sc, jnp.minimum(s, (sc.size - 1) / sc.size)) for sc in scores]
      return masks, [masking.zero_pruned(rw, m) for rw, m in zip(rewind, masks)]

    masks, new_p = jax.lax.cond(end, prune, lambda: ([flat_m[i] for i in idx], masked))
    out_p, out_m, out_r = list(flat_p), list(flat_m), list(flat_r)
    for j, i in enumerate(idx):
      out_p[i], out_m[i], out_r[i] = new_p[j], masks[j], rewind[j]
    state = LotteryState(count, treedef.unflatten(out_m), treedef.unflatten(out_r))
    return treedef.unflatten(out_p), state

  def pack(params, state):
    masking.check_state(state, LotteryState, "lottery_ticket")
    return leafwise.map_selected(export.prune, params, state.masks)

  def masks(state):
    masking.check_state(state, LotteryState, "lottery_ticket")
    return state.masks

  def restart(state):
    masking.check_state(state, LotteryState, "lottery_ticket")
    r = state.count // frequency
    return (state.count % frequency == 0) & (r >= 1) & (r <= rounds)  # the update that just rewound

  return Compressor(init, apply, update, pack, masks=masks, restart=restart if restart_optimizer else no_restart)
