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
  """One step of movement scores: ``S <- S - g * w`` (Sanh et al. 2020, eq. 5/6)."""
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
) -> Compressor:
  """Movement pruning: ranks weights by ``S = -sum_t g_t * w_t`` accumulated in training.

  ``update`` adds ``-g * w`` to each selected weight's score on every step (``g`` is the
  gradient it receives; a call without ``grads`` adds nothing) and, on steps where a
  target count changes, keeps the highest scores among the surviving weights. This is
  hard movement pruning with the gradual cubic schedule of the paper: pass a schedule
  that starts at 0, such as :func:`~jaxcompress.pruning.polynomial_sparsity`.
  Scores are float32.

  Args:
    sparsity: a schedule ``step -> sparsity`` with ``sparsity(0) == 0`` (or the constant
      0): scores are only known after training steps.
    where, scope, allocation: as for :func:`~jaxcompress.pruning.magnitude`.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`~jaxcompress.pruning.PruningState` (``scores`` holds ``S``).

  Raises:
    ValueError: if ``sparsity(0) != 0`` or a value lies outside [0, 1).

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
    who="movement pruning",
  )
