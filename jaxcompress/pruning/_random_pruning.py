"""Random pruning: the baseline every criterion must beat."""

from __future__ import annotations

from typing import Any

import jax

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._allocation import Allocation


def random_score(w: jax.Array, g: Any, acc: Any, key: jax.Array) -> jax.Array:
  """Uniform random scores, independent of the weights."""
  del g, acc
  return jax.random.uniform(key, w.shape)


def random(
  sparsity: validate.ScalarOrSchedule,
  *,
  seed: int = 0,
  where: select.Where = None,
  scope: str = "layer",
  allocation: str | Allocation = "uniform",
) -> Compressor:
  """Prunes weights chosen uniformly at random, with the exact target count.

  Each leaf (or, with ``scope='global'``, the whole selection) keeps exactly the target
  count of weights drawn without replacement. On a schedule, each new pruning step
  draws fresh random scores among the surviving weights (pruned ones stay pruned). The
  draws depend only on ``seed``, the step and the leaf's position, so runs repeat.

  Args:
    sparsity: fraction removed, in [0, 1), or a schedule ``step -> sparsity``.
    seed: the PRNG seed (an int).
    where, scope, allocation: as for :func:`~jaxcompress.pruning.magnitude`.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`~jaxcompress.pruning.PruningState`.

  Raises:
    ValueError: for a sparsity outside [0, 1), a non-integer ``seed``, an unknown
      ``scope``; at ``init`` as for :func:`~jaxcompress.pruning.magnitude`.

  References:
    Liu, Chen, Chen, Atashgahi, Yin, Kou, Shen, Pechenizkiy, Wang & Mocanu 2022, "The
    Unreasonable Effectiveness of Random Pruning", https://arxiv.org/abs/2202.02643.

  Example:
    >>> import jax.numpy as jnp
    >>> c = random(0.75, seed=1)
    >>> params, state = c.init({'w': jnp.ones((4, 4))})
    >>> int((c.apply(params, state)['w'] != 0).sum())
    4
  """
  seed = validate.check_int("seed", seed)
  return masking.build(
    sparsity, random_score, where=where, scope=scope, allocation=allocation, seed=seed, who="random pruning"
  )
