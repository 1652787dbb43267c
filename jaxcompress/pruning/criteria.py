"""Pruning numerics: exact top-k masks from importance scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_pruned(sparsity: jax.Array | float, size: int) -> jax.Array:
  """How many of ``size`` weights a ``sparsity`` removes: ``round(sparsity * size)``.

  Rounding is half to even, so the achieved sparsity is the closest one reachable:
  0.99 on a 10-weight layer prunes all 10, 0.94 prunes 9. Computed in float32, so for
  layers above 2**24 weights the count can be off by one.

  Returns:
    An ``int32`` scalar in ``[0, size]``.
  """
  count = jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)
  return jnp.clip(count, 0, size)


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
  flat = scores.reshape(-1)
  flat = jnp.where(jnp.isnan(flat), -jnp.inf, flat)
  keep = flat.size - num_pruned(sparsity, flat.size)
  order = jnp.argsort(flat, descending=True, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return (rank < keep).reshape(scores.shape)
