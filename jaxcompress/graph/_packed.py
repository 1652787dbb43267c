"""Running packed leaves through their own ops at the model's sites.

Low-rank factors (``lowrank.serve``) and structured FFT kernels (``sharing.serve``) are
served the same way: every other leaf is materialized, the chosen leaves get zero
placeholders of their dense shape, and :func:`~jaxcompress.graph.rewrite` replaces each
site that reads one by the leaf's own op, or by the site's op on the rebuilt kernel where
the leaf's op does not cover that use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import export
from jaxcompress.core.tree import PyTree, is_packed_leaf, path_str
from jaxcompress.graph._rewrite import rewrite
from jaxcompress.graph._trace import Site


def packed_sites(
  apply_fn: Callable[..., Any],
  kinds: tuple[type, ...],
  op: Callable[[Site, jax.Array, Any], jax.Array | None],
  dtype: Callable[[Any], Any],
  what: str,
) -> Callable[..., Any]:
  """``fn(packed, *inputs)``: ``apply_fn`` with each leaf of the types ``kinds`` run at its
  sites as ``op(site, activation, leaf)`` (``None``: not covered, so the site runs its own
  op on ``leaf.materialize()``). ``dtype(leaf)`` is the placeholder's dtype and ``what``
  names the leaves in the error a reshaped use raises."""

  def fn(packed: PyTree, *inputs: Any) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(packed, is_leaf=is_packed_leaf)
    chosen = {path_str(kp): leaf for kp, leaf in flat if isinstance(leaf, kinds)}
    dense = treedef.unflatten(
      [jnp.zeros(leaf.shape, dtype(leaf)) if isinstance(leaf, kinds) else export.materialize(leaf) for _, leaf in flat]
    )
    if not chosen:
      return apply_fn(dense, *inputs)

    def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      del weight  # a placeholder: the leaf's stored numbers stand in for it
      leaf = chosen[site.path]
      out = op(site, activation, leaf)
      if out is not None:
        return out
      if site.leaf_axes is None:
        raise ValueError(
          f"site {site.key!r} ({site.op}) uses the {what} kernel through a reshape, broadcast or slice; "
          "serve it dense (export.materialize_tree)"
        )
      return site.compute(activation, jnp.transpose(leaf.materialize(), site.leaf_axes))

    return rewrite(apply_fn, rule, where=lambda path, site: path in chosen)(dense, *inputs)

  return fn


def served(fn: Callable[..., Any], packed: PyTree) -> Callable[..., Any]:
  """``fn(packed, *inputs)`` jitted, with ``packed`` put on the default device once (packed
  leaves hold NumPy arrays: a host-to-device copy per array per call was most of a small
  model's serving time)."""
  run = jax.jit(fn)
  on_device = jax.device_put(packed)
  return lambda *inputs: run(on_device, *inputs)
