"""Movement pruning: keep the weights moving away from zero."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._allocation import Allocation


def accumulate_movement(acc: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
  """One step of movement scores: ``S <- S - g * w`` (Sanh et al. 2020, eq. 5/6), ``w``
  the dense weight and ``g`` the gradient of the loss at the masked weight."""
  return acc - (g * w).astype(acc.dtype)


def movement_score(w: jax.Array, g: Any, acc: jax.Array, key: Any = None) -> jax.Array:
  """The accumulated score ``S``: high when ``w`` and ``-g`` share a sign, over time."""
  del w, g, key
  return acc


def movement(
  sparsity: validate.ScalarOrSchedule,
  *,
  where: select.Where = None,
  scope: str = "layer",
  allocation: str | Allocation = "uniform",
  frequency: int = 1,
  total_steps: int | None = None,
) -> Compressor:
  """Movement pruning: ranks weights by ``S = -sum_t g_t * w_t`` accumulated in training.

  Hard movement pruning as in the paper: the forward pass uses ``W * M`` with
  ``M = TopK(S)``; ``apply`` masks with a straight-through (identity) gradient, so the
  gradient ``g`` that ``update`` receives is ``dL/d(W * M)`` at every weight, pruned ones
  included. ``update`` adds ``-g * W`` to every selected weight's score, with the dense
  ``W`` (a pruned weight keeps its value in the params, frozen while pruned: with
  :func:`~jaxcompress.train.make_step` the optimizer gets no gradient there), and
  recomputes ``M = TopK(S)`` over *all* scores every ``frequency`` steps and whenever the
  target count changes, so a pruned weight whose score rises returns, with its old value.
  A call without ``grads`` adds nothing. Use it with the gradual cubic schedule of the
  paper: a schedule that starts at 0, such as
  :func:`~jaxcompress.pruning.polynomial_sparsity`. Scores are float32.

  Without :func:`~jaxcompress.train.make_step` (which zeroes the optimizer's updates at
  pruned coordinates), mask the gradients given to the optimizer yourself, or the pruned
  weights move by the straight-through gradient.

  Args:
    sparsity: a schedule ``step -> sparsity`` with ``sparsity(0) == 0`` (or the constant
      0): scores are only known after training steps.
    where, scope, allocation: as for :func:`~jaxcompress.pruning.magnitude`.
    frequency: steps between recomputations of the mask from all scores (>= 1; the
      paper recomputes at every step, 1). The mask also changes on every step the target
      count changes.
    total_steps: the run's length, if known: a schedule is then checked at every step
      ``0 .. total_steps`` (1,025 evenly spaced ones beyond 10,000) and a value outside
      [0, 1) or NaN raises now, naming the step. Without it only step 0 is checked, and
      under ``jit`` a later target is made safe instead: clipped so every leaf keeps at
      least one weight (one block), and a NaN target holds the previous masks.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`~jaxcompress.pruning.PruningState` (``scores`` holds ``S``).

  Raises:
    ValueError: if ``sparsity(0) != 0``, a value (at step 0, or at any step of the run
      with ``total_steps``) lies outside [0, 1), or ``frequency < 1``.

  References:
    Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning",
    https://arxiv.org/abs/2005.07683.

  Example:
    >>> import jax.numpy as jnp
    >>> c = movement(lambda t: jnp.where(t >= 1, 0.5, 0.0))
    >>> params, state = c.init({'w': jnp.array([[1.0, 1.0], [1.0, 1.0]])})
    >>> grads = {'w': jnp.array([[-1.0, 1.0], [2.0, -3.0]])}  # S = -g*w
    >>> params, state = c.update(params, state, grads=grads)
    >>> state.masks['w'].tolist()
    [[True, False], [False, True]]
  """
  schedule = validate.as_schedule("sparsity", sparsity, validate.check_sparsity)
  frequency = validate.check_int("frequency", frequency, low=1)
  with jax.ensure_compile_time_eval():
    s0 = float(np.asarray(schedule(jnp.asarray(0, jnp.int32))))
  if s0 != 0.0:
    raise ValueError(f"movement pruning starts dense: sparsity(0) must be 0, got {s0}")
  return masking.build(
    schedule,
    movement_score,
    where=where,
    scope=scope,
    allocation=allocation,
    accumulate=accumulate_movement,
    revive_every=frequency,
    total_steps=total_steps,
    who="movement pruning",
  )
