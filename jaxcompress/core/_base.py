"""The Compressor protocol and ``identity``; ``chain`` lives in :mod:`jaxcompress.core.chain`.

A compressor is a ``NamedTuple`` of pure functions built by a factory, in the spirit of
optax's ``GradientTransformation``. Four are required:

- ``init(params, *, masks=None) -> (params, state)``: returns the *trainable* tree (which
  may differ from the model's, for example a codebook instead of a kernel) and the state.
  ``masks`` are the keep-masks of earlier stages of a :func:`~jaxcompress.chain` (passed
  only when there are some): a stage that can use them (k-means clusters the survivors
  only) does; others ignore them;
- ``apply(params, state) -> params``: the dense view the model sees; it is the only
  thing that enters the loss and it is differentiable;
- ``update(params, state, *, grads=None, **extra) -> (params, state)``: runs once per
  step after the optimizer: advances the step count, refreshes masks on schedule,
  projects params (pruned weights to exactly zero, ...). Unused keywords are ignored;
- ``pack(params, state) -> packed``: the deployable tree, whose compressed leaves
  (``jaxcompress.export``) report their true storage in ``nbytes``.

The others are seams with defaults, through which techniques meet the rest of training
without knowing each other:

- ``masks(state) -> tree | None``: the keep-masks (``bool``, True = keep) this compressor
  holds the model's params to, mirroring the model's tree with ``None`` at unmasked
  leaves; ``None`` when it prunes nothing. ``chain`` ANDs them, ``train.make_step`` keeps
  the optimizer off the pruned coordinates, and ``pack`` of a chain prunes the packed
  leaf of the other stages with them (:func:`jaxcompress.export.prune`);
- ``penalty(params, state) -> scalar | None``: a term added to the loss (network
  slimming's L1 on BatchNorm scales, PACT's L2 on its clipping levels), or ``None``;
- ``rewrite(fn, params, state) -> fn``: a model-side transformation of any function of
  the model's params ``fn(model_params, *args)`` (the loss in training, the model's
  apply in evaluation), for techniques that act on the computation rather than on the
  params (activation quantization, integer matmuls); the identity by default;
- ``restart(state) -> bool scalar | None``: whether the optimizer's state starts afresh
  after the ``update`` that produced ``state`` (lottery-ticket rewinding retrains each
  round's ticket with a fresh optimizer); ``None`` (the default) when it never does.
  ``chain`` ORs them; ``train.make_step`` replaces the optimizer state by
  ``optimizer.init(params)`` where it is True;
- ``frozen(state) -> tree | None``: coordinates held at their current (nonzero) values,
  ``bool`` (True = frozen) mirroring the model's tree with ``None`` at leaves with none
  (INQ's quantized portion); ``None`` (the default) when nothing is frozen. ``chain``
  ORs them; ``train.make_step`` treats them like pruned coordinates for the optimizer
  (no gradient, no update, no moments, so weight decay cannot move them), but, unlike
  ``masks``, nothing sets them to zero and ``pack`` prunes nothing with them;
- ``pull_masks(params, state, masks) -> tree``: masks over the model's tree (the view this
  compressor's ``apply`` makes) carried back onto its trainable tree ``params``, mirroring
  it, ``None`` where a trainable array has no coordinate of the view (a codebook, a step
  size). The default (:func:`carry_masks`) gives the mask to every trainable array of the
  mask's shape under the masked leaf; a compressor whose trainable arrays hold the view's
  coordinates in another layout (channel pruning's narrowed arrays: the kept channels)
  maps the mask the way ``apply`` maps the arrays. ``train.make_step`` masks gradients,
  moments and updates with it, and ``chain`` projects an owned leaf's trainable arrays
  with it, so a pruner after a restructuring stage zeroes what it prunes in the trainable
  tree, not only in the view.

A compressor whose model-side technique learns parameters (LSQ's activation steps)
returns its trainable tree as :class:`Joint` ``(params, extra)``.

``pack`` runs on concrete arrays (its output sizes depend on the values, for example the
number of nonzeros); the other functions are jit-, grad-, vmap- and shard-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from jaxcompress.core.tree import PyTree


class InitFn(Protocol):
  """``init(params, *, masks=None) -> (trainable_params, state)``."""

  def __call__(self, params: PyTree, *, masks: PyTree | None = None) -> tuple[PyTree, Any]: ...


class ApplyFn(Protocol):
  """``apply(params, state) -> model_params``; differentiable in ``params``."""

  def __call__(self, params: PyTree, state: Any) -> PyTree: ...


class UpdateFn(Protocol):
  """``update(params, state, *, grads=None, **extra) -> (params, state)``, once per step."""

  def __call__(
    self, params: PyTree, state: Any, *, grads: PyTree | None = None, **extra: Any
  ) -> tuple[PyTree, Any]: ...


class PackFn(Protocol):
  """``pack(params, state) -> packed_tree`` of compressed leaves; runs on concrete arrays."""

  def __call__(self, params: PyTree, state: Any) -> PyTree: ...


MasksFn = Callable[[Any], Any]
"""``masks(state) -> tree of bool | None``, mirroring the model's params."""

PenaltyFn = Callable[[PyTree, Any], Any]
"""``penalty(params, state) -> scalar | None``, added to the loss."""

RewriteFn = Callable[[Callable[..., Any], PyTree, Any], Callable[..., Any]]
"""``rewrite(fn, params, state) -> fn'``: ``fn(model_params, *args)`` transformed."""


RestartFn = Callable[[Any], Any]
"""``restart(state) -> bool scalar | None``: restart the optimizer after this update."""


def no_restart(state: Any) -> None:
  """The default ``restart``: the optimizer state carries on."""
  del state


FrozenFn = Callable[[Any], Any]
"""``frozen(state) -> tree of bool | None`` (True = held), mirroring the model's params."""


def no_frozen(state: Any) -> None:
  """The default ``frozen``: every coordinate trains."""
  del state


PullMasksFn = Callable[[PyTree, Any, PyTree], PyTree]
"""``pull_masks(params, state, masks) -> masks mirroring the trainable tree``."""


def carry_masks(params: PyTree, state: Any, masks: PyTree) -> PyTree:
  """The default ``pull_masks``: each mask goes to the trainable arrays of its shape.

  Args:
    params: the trainable tree (a :class:`Joint`'s ``extra`` is never masked).
    state: the compressor's state (unused).
    masks: ``bool`` masks mirroring the model's tree, ``None`` at unmasked leaves.

  Returns:
    A tree mirroring ``params`` leaf for leaf: the mask where a trainable array under the
    masked model leaf has the mask's shape (the weight itself, or LSQ's ``weight``),
    ``None`` elsewhere.
  """
  del state
  tree, extra = split(params)
  model_def = jax.tree.structure(masks, is_leaf=lambda x: x is None)
  nodes = model_def.flatten_up_to(tree)
  flat = model_def.flatten_up_to(masks)

  def one(x: Any, m: Any) -> Any:
    return m if m is not None and tuple(np.shape(x)) == tuple(np.shape(m)) else None

  carried = model_def.unflatten([jax.tree.map(lambda x, m=m: one(x, m), node) for node, m in zip(nodes, flat)])
  return carried if extra is None else Joint(carried, jax.tree.map(lambda _: None, extra))


def no_masks(state: Any) -> None:
  """The default ``masks``: this compressor prunes nothing."""
  del state


def no_penalty(params: PyTree, state: Any) -> None:
  """The default ``penalty``: no loss term."""
  del params, state


def no_rewrite(fn: Callable[..., Any], params: PyTree, state: Any) -> Callable[..., Any]:
  """The default ``rewrite``: the computation is left alone."""
  del params, state
  return fn


class Compressor(NamedTuple):
  """A compression technique as pure functions (see the module docstring).

  Attributes:
    init: ``(params, *, masks=None) -> (trainable_params, state)``.
    apply: ``(params, state) -> model_params``, differentiable.
    update: ``(params, state, *, grads=None, **extra) -> (params, state)``.
    pack: ``(params, state) -> packed_tree`` of compressed leaves.
    masks: ``(state) -> keep-masks | None``; default: none.
    penalty: ``(params, state) -> loss term | None``; default: none.
    rewrite: ``(fn, params, state) -> fn'``, model-side; default: identity.
    restart: ``(state) -> bool scalar | None``, restart the optimizer; default: never.
    frozen: ``(state) -> frozen coordinates | None``, kept off the optimizer; default: none.
    pull_masks: ``(params, state, masks) -> masks over the trainable tree``; default:
      :func:`carry_masks` (by shape).
  """

  init: InitFn
  apply: ApplyFn
  update: UpdateFn
  pack: PackFn
  masks: MasksFn = no_masks
  penalty: PenaltyFn = no_penalty
  rewrite: RewriteFn = no_rewrite
  restart: RestartFn = no_restart
  frozen: FrozenFn = no_frozen
  pull_masks: PullMasksFn = carry_masks


class Joint(NamedTuple):
  """A trainable tree with model-side learned parameters beside the params.

  Attributes:
    params: the trainable tree of the params (the model's tree, possibly restructured).
    extra: learned parameters of model-side techniques (for example
      ``{site_key: {'step': s}}`` for LSQ activations); a dict.
  """

  params: PyTree
  extra: dict[str, Any]


def split(tree: PyTree) -> tuple[PyTree, dict[str, Any] | None]:
  """``(params, extra)`` of a :class:`Joint` tree, ``(tree, None)`` of any other."""
  return (tree.params, tree.extra) if isinstance(tree, Joint) else (tree, None)


class EmptyState(NamedTuple):
  """The state of a compressor that keeps none."""


def identity() -> Compressor:
  """A compressor that changes nothing; the neutral element of :func:`~jaxcompress.chain`.

  Returns:
    A :class:`Compressor` whose ``apply`` and ``pack`` return the params unchanged.

  Example:
    >>> import jax.numpy as jnp
    >>> c = identity()
    >>> params, state = c.init({'w': jnp.ones(2)})
    >>> c.apply(params, state)['w'].tolist()
    [1.0, 1.0]
  """

  def init(params, *, masks=None):
    del masks
    return params, EmptyState()

  def apply(params, state):
    del state
    return params

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state

  def pack(params, state):
    del state
    return params

  return Compressor(init, apply, update, pack)
