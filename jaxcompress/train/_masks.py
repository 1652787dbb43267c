"""Masks in training: keep the optimizer off pruned coordinates.

A compressor says which coordinates it prunes through ``Compressor.masks(state)``: keep-masks
mirroring the *model's* tree. ``Compressor.pull_masks`` carries them onto the trainable tree
(by default :func:`trainable_masks`: at each model leaf, every array of the trainable node
with the mask's shape; channel pruning gathers the kept channels),
and :func:`reset_pruned` zeroes the optimizer state where they are False, mapping optimizer
state to params exactly with ``optax.tree_map_params`` (no name or suffix matching), so
momentum and weight decay never revive a weight and a regrown weight starts with fresh
moments.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core._base import carry_masks
from jaxcompress.core.tree import PyTree


def _same_shape(x: Any, m: Any) -> bool:
  return m is not None and tuple(jnp.shape(x)) == tuple(jnp.shape(m))


def trainable_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Carries keep-masks over the model's tree onto a trainable tree, by shape.

  This is the default ``Compressor.pull_masks`` (:func:`jaxcompress.core._base.carry_masks`);
  the training step calls ``compressor.pull_masks``, which a restructuring compressor
  (channel pruning) overrides.

  Args:
    params: the trainable tree (``Compressor.init``'s first output; a
      :class:`~jaxcompress.Joint` is handled, its ``extra`` is never masked).
    masks: ``bool`` masks mirroring the model's tree, ``None`` at unmasked leaves
      (``Compressor.masks(state)``).

  Returns:
    A tree mirroring ``params`` leaf for leaf: the mask where a trainable array has the
    mask's shape under the masked model leaf (the weight itself, or the ``weight`` of a
    restructured node such as LSQ's), ``None`` elsewhere (a codebook, a step size).
  """
  return carry_masks(params, None, masks)


def hold_masks(masks: PyTree | None, frozen: PyTree | None) -> PyTree | None:
  """The coordinates the optimizer may move: ``masks`` (kept) and not ``frozen``.

  Args:
    masks: keep-masks over the model's tree (``Compressor.masks``), or ``None``.
    frozen: frozen coordinates over the model's tree (``Compressor.frozen``, True =
      held), or ``None``.

  Returns:
    ``bool`` masks over the model's tree (``None`` where neither has one), or ``None``
    when both are ``None``.
  """
  if frozen is None:
    return masks
  model_def = jax.tree.structure(frozen, is_leaf=lambda x: x is None)
  flat_f = model_def.flatten_up_to(frozen)
  flat_m = [None] * len(flat_f) if masks is None else model_def.flatten_up_to(masks)
  out = []
  for m, f in zip(flat_m, flat_f):
    if f is None:
      out.append(m)
    else:
      free = jnp.logical_not(f)
      out.append(free if m is None else jnp.logical_and(m, free))
  return model_def.unflatten(out)


def mask_tree(tree: PyTree, masks: PyTree) -> PyTree:
  """Zeroes ``tree``'s leaves where ``masks`` is False (``None`` masks pass through).

  ``masks`` mirrors ``tree`` up to its leaves, as :func:`trainable_masks` returns.
  """
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)) if _same_shape(x, m) else x, tree, masks)


def reset_pruned(optimizer: optax.GradientTransformation, opt_state: optax.OptState, masks: PyTree) -> optax.OptState:
  """Zeroes the optimizer state's per-parameter entries where ``masks`` is False.

  The entries that belong to a parameter (Adam's ``mu`` and ``nu``, momentum traces) are
  found by ``optax.tree_map_params``, which rebuilds the state's structure from the
  optimizer itself; leaves of another shape (factored statistics) and scalars (counts)
  are left alone.

  Args:
    optimizer: the optax transformation that built ``opt_state``.
    opt_state: its state.
    masks: keep-masks mirroring the trainable tree (:func:`trainable_masks`).

  Returns:
    The optimizer state with the pruned entries set to 0.
  """
  # optax.masked / multi_transform keep a MaskedNode where a transform has no state
  return optax.tree_map_params(
    optimizer.init,
    lambda s, m: jnp.where(m, s, jnp.zeros_like(s)) if _same_shape(s, m) else s,
    opt_state,
    masks,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
