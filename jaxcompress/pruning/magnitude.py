"""Layer-wise unstructured magnitude pruning."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core.base import Compressor
from jaxcompress.pruning.criteria import num_pruned, topk_mask


class MagnitudeState(NamedTuple):
  """State of :func:`magnitude`.

  Attributes:
    count: ``int32`` step counter, advanced by ``update``.
    masks: ``bool`` masks (True = keep) mirroring the params, ``None`` at unselected
      leaves.
  """

  count: jax.Array
  masks: Any


def magnitude(sparsity: validate.ScalarOrSchedule, *, where: select.Where = None) -> Compressor:
  """Prunes the smallest-magnitude weights of each selected leaf.

  Each selected leaf keeps exactly its ``size - round(sparsity * size)`` largest
  ``|w|`` (see :func:`~jaxcompress.pruning.criteria.topk_mask` for rounding and ties).
  ``init`` computes the masks from the given weights at ``sparsity(0)`` (one-shot
  pruning of a trained model); ``update`` advances the step and recomputes a leaf's
  mask, from the masked weights, only on steps where its target count changes, so a
  constant sparsity keeps its masks fixed and a schedule such as
  :func:`~jaxcompress.pruning.schedules.polynomial_sparsity` prunes gradually.

  ``apply`` zeroes pruned weights, so they receive zero gradient; ``update`` sets them
  to exactly zero in the params after every optimizer step, so momentum or weight decay
  cannot revive them. ``pack`` stores each selected leaf as a
  :class:`~jaxcompress.export.SparseArray` (or, inside ``chain`` after a quantizer, a
  :class:`~jaxcompress.export.QArray` whose codes are sparse).

  Non-finite weights: ``init`` on concrete params raises. Under ``jit`` a NaN weight
  ranks below every number, so it is pruned first and replaced by zero.

  Args:
    sparsity: fraction of weights removed per selected leaf, in [0, 1), or a schedule
      ``step -> sparsity``.
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`MagnitudeState`.

  Raises:
    ValueError: if ``sparsity`` (or ``sparsity(0)``) is outside [0, 1); at ``init``, if
      ``where`` selects nothing or a selected leaf is integer, empty or non-finite.

  References:
    Han, Pool, Tran & Dally 2015, "Learning both Weights and Connections for Efficient
    Neural Networks", https://arxiv.org/abs/1506.02626.

  Example:
    >>> import jax.numpy as jnp
    >>> c = magnitude(0.5)
    >>> params, state = c.init({'w': jnp.array([[1.0, -4.0], [3.0, 0.5]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.0, -4.0], [3.0, 0.0]]
  """
  schedule = validate.as_schedule("sparsity", sparsity, validate.check_sparsity)

  def init(params):
    s0 = schedule(jnp.asarray(0, jnp.int32))
    masks = leafwise.init_selected(params, where, lambda path, p: topk_mask(jnp.abs(p), s0))
    return params, MagnitudeState(count=jnp.asarray(0, jnp.int32), masks=masks)

  def apply(params, state):
    return leafwise.map_selected(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, state.masks)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    count = state.count + 1
    s_old, s_new = schedule(state.count), schedule(count)

    def refresh(p, m):
      changed = num_pruned(s_new, p.size) != num_pruned(s_old, p.size)
      scores = jnp.abs(jnp.where(m, p, jnp.zeros_like(p)))
      m = jax.lax.cond(changed, lambda: topk_mask(scores, s_new), lambda: m)
      return jnp.where(m, p, jnp.zeros_like(p)), m

    params, masks = leafwise.update_selected(refresh, params, state.masks)
    return params, MagnitudeState(count=count, masks=masks)

  def pack(params, state):
    return leafwise.map_selected(_pack_leaf, params, state.masks)

  return Compressor(init, apply, update, pack)


def _pack_leaf(p: Any, mask_array: jax.Array) -> Any:
  mask = np.asarray(mask_array)
  if isinstance(p, export.QArray):  # chained after a quantizer: keep the scale, sparsify the codes
    codes = np.asarray(export.materialize(p.codes)) * mask
    sparse = export.from_dense(codes.astype(np.int32), value_bits=p.bits, signed=p.zero_point is None)
    return export.QArray(codes=sparse, scale=p.scale, zero_point=p.zero_point, bits=p.bits, dtype=p.dtype)
  dense = np.asarray(export.materialize(p))
  return export.from_dense(np.where(mask, dense, np.zeros_like(dense)))
