"""A pruner that holds given masks: the bridge from one-shot pruning to fine-tuning."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import leafwise
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import PyTree, leaves_with_paths, map_with_path
from jaxcompress.pruning._masking import held, zero_pruned


class FixedMaskState(NamedTuple):
  """State of :func:`fixed`.

  Attributes:
    count: ``int32`` step counter.
    masks: ``bool`` keep-masks mirroring the params, ``None`` at unmasked leaves.
  """

  count: jax.Array
  masks: Any


def fixed(masks: PyTree) -> Compressor:
  """Holds the params to given keep-masks (from a one-shot method such as
  :func:`~jaxcompress.pruning.sparsegpt`, or any other source).

  ``init`` zeroes the pruned weights; ``apply`` masks them (so they get no gradient);
  ``update`` holds them at exactly 0 after each optimizer step; ``masks`` reports them
  through the protocol, so :func:`~jaxcompress.train.make_step` keeps the optimizer off
  them and ``chain(fixed(masks), quantizer)`` stores only the surviving codes; ``pack``
  stores each masked leaf with :func:`~jaxcompress.export.prune` (a
  :class:`~jaxcompress.export.SparseArray` when smaller).

  Args:
    masks: ``bool`` keep-masks (True = keep), either a tree mirroring the params with
      ``None`` at unmasked leaves, or a dict ``{path: mask}`` by path string.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`FixedMaskState`.

  Raises:
    ValueError: if ``masks`` holds no mask or a mask is not boolean; at ``init``, if a
      mask's path is not a param leaf or its shape differs from the leaf's (named).

  Example:
    >>> import jax.numpy as jnp
    >>> c = fixed({'w': jnp.array([[True, False], [False, True]])})
    >>> params, state = c.init({'w': jnp.ones((2, 2)), 'b': jnp.ones(2)})
    >>> c.apply(params, state)['w'].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  given = {path: m for path, m in leaves_with_paths(masks) if m is not None}
  if not given:
    raise ValueError("fixed(masks) needs at least one mask; got none")
  for path, m in given.items():
    if np.asarray(m).dtype != np.bool_:
      raise ValueError(f"mask {path!r} must be boolean (True = keep), got dtype {np.asarray(m).dtype}")
  given = {path: jnp.asarray(m, bool) for path, m in given.items()}

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: the chain ANDs them with these
    leaves = dict(leaves_with_paths(params))
    for path, m in given.items():
      if path not in leaves:
        raise ValueError(f"mask {path!r} names no param leaf; the leaves are {list(leaves)[:20]}")
      if tuple(m.shape) != tuple(jnp.shape(leaves[path])):
        raise ValueError(f"mask {path!r} has shape {tuple(m.shape)}, the leaf {tuple(jnp.shape(leaves[path]))}")
    tree = map_with_path(lambda path, leaf: given.get(path), params)
    state = FixedMaskState(count=jnp.asarray(0, jnp.int32), masks=tree)
    return leafwise.map_selected(zero_pruned, params, tree), state

  return held(init, FixedMaskState, "fixed")
