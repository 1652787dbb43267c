"""``chain``: compressors composed into a pipeline, read left to right like ``optax.chain``.

``chain(c1, c2, ..., cn)`` runs the stages in order over the model's leaves: ``c1`` sees
the params, ``c2`` sees what ``c1`` made of them, and the model sees what ``cn`` makes
of it. So ``chain(prune, kmeans)`` prunes, then clusters the survivors (Deep
Compression), and ``chain(prune, fake_quant)`` quantizes the pruned weights.

Ownership. A stage that *restructures* a leaf (its trainable form is no longer an array
of the leaf's shape: a k-means codebook, LSQ's ``(weight, step)``, channel pruning's
smaller array) owns that leaf from then on: the chain's trainable tree holds the owner's
form there, the owner's ``apply`` turns it back into the leaf, and later stages see that
view. A pruner before the owner keeps pruning: ``masks=`` tells the owner its masks at
``init`` (k-means clusters the survivors), the chain zeroes the pruned coordinates of the
owner's view, and on each ``update`` the pruner sees the owner's view there, so a pruning
schedule before k-means goes on pruning the clustered weights; as that leaf's gradient it
sees the gradient of the owner's trainable array of the leaf's shape (LSQ's ``weight``),
or zeros where there is none (a codebook, low-rank factors). A stage before the owner
that changed the leaf in any other way is an error, because its effect would be silently
lost. Two stages cannot both restructure one leaf.

Per step, ``update`` runs the stages in order; each sees the trainable params at the
leaves it may project (every leaf nobody restructured, and the leaves it owns), and the
owner's view elsewhere (its projection there is dropped; the chain applies the masks to
the owner's trainable arrays itself, through the owner's ``pull_masks``). ``pack`` packs each leaf with the last
stage that stores it as a compressed leaf (a ``QArray``, ``CodebookArray``, ...), then
prunes that leaf with the chain's keep-masks through :func:`jaxcompress.export.prune`,
so a pruned and quantized weight keeps its codes, scales or codebook and stores only the
survivors. ``masks``, ``penalty``, ``rewrite``, ``restart`` and ``frozen`` combine the
stages' (AND, sum, composition in order, OR, and OR). ``pull_masks`` carries masks over
the model's tree onto the chain's trainable tree: by shape at leaves nobody restructured,
through the owner's ``pull_masks`` at owned ones, so ``update`` zeroes what a later pruner
prunes in the owner's trainable arrays (``chain(channel_prune, magnitude)``: the pruned
weights inside the kept channels) and ``train.make_step`` keeps the optimizer off them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import _provenance as provenance
from jaxcompress.core._base import Compressor, Joint, split
from jaxcompress.core.tree import PyTree, is_packed_leaf, leaves_with_paths


@dataclasses.dataclass(frozen=True)
class ChainPlan:
  """What ``init`` learned about the chain, static under ``jit``.

  Attributes:
    model_def: the model's tree structure (up to its leaves).
    paths: the model's leaf paths.
    shapes: ``(shape, dtype)`` of every model leaf.
    owners: for every model leaf, the index of the stage that restructured it, or ``None``.
    extra_keys: for every stage, the keys of the model-side parameters it added to the
      trainable tree's ``extra``, or ``None``.
  """

  model_def: Any
  paths: tuple[str, ...]
  shapes: tuple[tuple[tuple[int, ...], str], ...]
  owners: tuple[int | None, ...]
  extra_keys: tuple[tuple[str, ...] | None, ...]


@dataclasses.dataclass(frozen=True)
class ChainState:
  """State of :func:`chain`.

  Attributes:
    stages: the stages' states, in order.
    plan: the :class:`ChainPlan` (static).
  """

  stages: tuple[Any, ...]
  plan: ChainPlan


jax.tree_util.register_dataclass(ChainState, data_fields=["stages"], meta_fields=["plan"])


def _name(c: Compressor, i: int) -> str:
  qual = getattr(c.init, "__qualname__", "")
  name = qual.split(".<locals>")[0].split(".")[-1] if ".<locals>" in qual else ""
  return f"stage {i} ({name})" if name and name != "build" else f"stage {i}"


def _restructured(node: Any, leaf: Any) -> bool:
  """Whether a stage's trainable form of a leaf is something other than an array like it."""
  if node is leaf:
    return False
  if isinstance(node, export.CompressedLeaf) or not (hasattr(node, "shape") and hasattr(node, "dtype")):
    return type(node) is not type(leaf) or np.shape(node) != np.shape(leaf)  # a Python scalar passes
  return tuple(node.shape) != tuple(np.shape(leaf)) or np.dtype(node.dtype) != np.dtype(
    getattr(leaf, "dtype", node.dtype)
  )


def _same(a: Any, b: Any) -> bool | None:
  """Whether two concrete arrays are equal; ``None`` when traced."""
  try:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
    return None


def _and(a: Any, b: Any) -> Any:
  if a is None:
    return b
  return a if b is None else jnp.logical_and(a, b)


def _view_grad(owner_grads: Any, view: Any) -> Any:
  """The gradient a stage around a leaf's owner sees for that leaf: the gradient of the owner's
  one trainable float array of the leaf's shape (LSQ's ``weight``: the straight-through
  gradient of the view), or zeros where the owner has none (a codebook, factors, a narrower
  array), so a gradient-driven pruner there (RigL) reads the gradient wherever one exists."""
  shape = jnp.shape(view)
  same = [
    a
    for a in jax.tree.leaves(owner_grads)
    if jnp.shape(a) == shape and jnp.issubdtype(jnp.result_type(a), jnp.floating)
  ]
  return same[0].astype(jnp.result_type(view)) if len(same) == 1 else jnp.zeros_like(view)


def _carried(x: Any, m: Any) -> Any:
  """``m`` where the trainable array ``x`` has its shape, else ``None``."""
  return m if m is not None and jnp.shape(x) == jnp.shape(m) else None


def _masked(x: Any, m: Any) -> Any:
  if m is None:
    return x
  out = jnp.where(m, x, jnp.zeros_like(x))
  provenance.derive(out, x, m)  # a record of how ``x`` was made holds for ``out`` with these zeros
  return out


def _flat(plan_def: Any, tree: Any, n: int) -> list[Any]:
  return [None] * n if tree is None else plan_def.flatten_up_to(tree)


def chain(*compressors: Compressor) -> Compressor:
  """Composes compressors into one pipeline, applied left to right (see the module docstring).

  Args:
    *compressors: the stages, in the order they act on the params.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`ChainState`. Its trainable tree is the
    model's tree with each restructured leaf in its owner's form (a :class:`Joint` when a
    stage learns model-side parameters).

  Raises:
    TypeError: if a stage is not a :class:`~jaxcompress.Compressor`.
    ValueError: at ``init``, if two stages restructure the same leaf, a stage changes a
      leaf that a later stage restructures (the message names the order that works), or
      two stages add model-side parameters under the same key.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import pruning, quantization
    >>> c = chain(pruning.magnitude(0.5), quantization.fake_quant(2))  # prune, then quantize
    >>> params, state = c.init({'w': jnp.array([[0.1, -3.0], [0.3, 4.0]])})
    >>> c.apply(params, state)['w'].tolist()  # the grid is [-4, 0, 4] over the survivors
    [[0.0, -4.0], [0.0, 4.0]]
  """
  for i, c in enumerate(compressors):
    if not isinstance(c, Compressor):
      raise TypeError(f"chain argument {i} is not a Compressor: {c!r}")
  stages = tuple(compressors)

  def stage_masks(i: int, s: Any, plan: ChainPlan) -> list[Any]:
    return _flat(plan.model_def, stages[i].masks(s), len(plan.paths))

  def dummy(plan: ChainPlan, k: int) -> jax.Array:
    shape, dtype = plan.shapes[k]
    return jnp.zeros(shape, dtype)

  def stage_arg(plan: ChainPlan, i: int, leaves: list[Any], side: dict | None) -> Any:
    tree = plan.model_def.unflatten(leaves)
    keys = plan.extra_keys[i]
    return tree if keys is None else Joint(tree, {k: (side or {})[k] for k in keys})

  def inputs(plan: ChainPlan, i: int, view: list[Any], nodes: list[Any], raw: list[Any]) -> list[Any]:
    """Stage ``i``'s leaves: ``raw`` where nobody owns the leaf, the node where it owns it,
    the view after an earlier owner, a placeholder before a later one."""
    out = []
    for k, own in enumerate(plan.owners):
      if own is None:
        out.append(raw[k])
      elif own == i:
        out.append(nodes[k])
      elif own < i:
        out.append(view[k])
      else:
        out.append(dummy(plan, k))
    return out

  def check_state(state: Any) -> ChainState:
    if not isinstance(state, ChainState) or len(state.stages) != len(stages):
      got = f"{len(state.stages)} stages" if isinstance(state, ChainState) else type(state).__name__
      raise ValueError(f"chain of {len(stages)} compressors expects the ChainState its init returned, got {got}")
    return state

  def nodes_of(params: PyTree, plan: ChainPlan) -> tuple[list[Any], dict | None]:
    """The trainable tree's nodes at the model's leaves, checked against the plan."""
    tree, side = split(params)
    if any(keys is not None for keys in plan.extra_keys) and side is None:
      raise ValueError("this chain's trainable tree is a jc.Joint (params, extra): pass the tree init returned")
    try:
      nodes = plan.model_def.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
      raise ValueError(f"the params do not have the structure the chain was initialized with ({e})") from None
    for k, (node, own) in enumerate(zip(nodes, plan.owners)):
      if own is None and tuple(np.shape(node)) != plan.shapes[k][0]:
        raise ValueError(f"leaf {plan.paths[k]!r} has shape {tuple(np.shape(node))}, init saw {plan.shapes[k][0]}")
    return nodes, side

  def walk(params: PyTree, state: ChainState):
    """The forward pipeline: ``(stage args, final view, each owned leaf's view after its
    owner)``; the views are masked by the masks of the stages before them."""
    plan = state.plan
    nodes, side = nodes_of(params, plan)
    n = len(nodes)
    view = list(nodes)
    all_masks = [stage_masks(i, s, plan) for i, s in enumerate(state.stages)]
    earlier = []  # for an owned leaf: the masks of the stages before its owner
    for k, own in enumerate(plan.owners):
      earlier.append(None if own is None else functools.reduce(_and, (all_masks[i][k] for i in range(own)), None))
    owned_view: list[Any] = [None] * n
    args = []
    for i, (c, s) in enumerate(zip(stages, state.stages)):
      arg = stage_arg(plan, i, inputs(plan, i, view, nodes, view), side)
      args.append(arg)
      out = plan.model_def.flatten_up_to(c.apply(arg, s))
      for k, own in enumerate(plan.owners):
        if own is None or own <= i:
          view[k] = _masked(out[k], earlier[k])  # a later stage may not keep zeros zero
          earlier[k] = _and(earlier[k], all_masks[i][k])
          if own == i:
            owned_view[k] = view[k]
    return args, view, owned_view

  def init(params, *, masks=None):
    if isinstance(params, Joint):
      raise TypeError("chain.init takes the model's params, not a Joint trainable tree")
    model_def = jax.tree.structure(params, is_leaf=is_packed_leaf)
    leaves = model_def.flatten_up_to(params)
    n = len(leaves)
    paths = tuple(p for p, _ in leaves_with_paths(params))
    shapes = tuple((tuple(np.shape(x)), str(np.dtype(getattr(x, "dtype", np.float32)))) for x in leaves)
    owners: list[int | None] = [None] * n
    nodes, view = list(leaves), list(leaves)
    comb = _flat(model_def, masks, n)  # masks known so far, for stages that use them
    touched = [[False] * n for _ in stages]
    states, extra_keys, side = [], [], {}
    for i, c in enumerate(stages):
      kw = {"masks": model_def.unflatten(comb)} if any(m is not None for m in comb) else {}
      trainable, s = c.init(model_def.unflatten(view), **kw)
      tree, extra = split(trainable)
      try:
        flat = model_def.flatten_up_to(tree)
      except (ValueError, TypeError) as e:
        raise ValueError(f"{_name(c, i)} changed the param tree above its leaves ({e})") from None
      for k in range(n):
        if _restructured(flat[k], view[k]):
          prev = owners[k]
          if prev is not None:
            raise ValueError(
              f"{_name(stages[prev], prev)} and {_name(c, i)} both restructure {paths[k]!r}: "
              "only one stage can own a leaf's trainable form"
            )
          owners[k] = i
          nodes[k] = flat[k]
      keys = None
      if extra is not None:
        clash = sorted(set(extra) & set(side))
        if clash:
          raise ValueError(f"{_name(c, i)} adds model-side parameters {clash} that an earlier stage already has")
        side.update(extra)
        keys = tuple(extra)
      extra_keys.append(keys)
      states.append(s)
      out = model_def.flatten_up_to(c.apply(trainable, s))
      mine = _flat(model_def, c.masks(s), n)
      for k in range(n):
        if mine[k] is None and _same(out[k], view[k]) is False:
          touched[i][k] = True
        view[k] = _masked(out[k], comb[k])
        comb[k] = _and(comb[k], mine[k])
    for k, own in enumerate(owners):
      if own is None:
        continue
      for i in range(own):
        if touched[i][k]:
          a, b = _name(stages[i], i), _name(stages[own], own)
          raise ValueError(
            f"{a} changes {paths[k]!r}, which {b} then restructures: {a}'s effect would be frozen into "
            f"{b}'s initial values and lost in training; put {a} after {b} in the chain"
          )
    plan = ChainPlan(model_def, paths, shapes, tuple(owners), tuple(extra_keys))
    tree = model_def.unflatten(nodes)
    state = ChainState(tuple(states), plan)
    return (Joint(tree, side) if side else tree), state

  def apply(params, state):
    state = check_state(state)
    _, view, _ = walk(params, state)
    return state.plan.model_def.unflatten(view)

  def masks(state):
    state = check_state(state)
    plan = state.plan
    n = len(plan.paths)
    comb: list[Any] = [None] * n
    for i, s in enumerate(state.stages):
      for k, m in enumerate(stage_masks(i, s, plan)):
        comb[k] = _and(comb[k], m)
    return None if all(m is None for m in comb) else plan.model_def.unflatten(comb)

  def update(params, state, *, grads=None, **extra):
    state = check_state(state)
    plan = state.plan
    nodes, side = nodes_of(params, plan)
    side = dict(side) if side is not None else None
    gtree, gside = split(grads) if grads is not None else (None, None)
    gnodes = plan.model_def.flatten_up_to(gtree) if gtree is not None else None
    views, owned_view = None, []
    if any(own is not None for own in plan.owners):  # stages around an owner see its view
      args, _, owned_view = walk(params, state)
      views = [plan.model_def.flatten_up_to(split(a)[0]) for a in args]
    new_states = []
    for i, (c, s) in enumerate(zip(stages, state.stages)):
      x = list(nodes)
      if views is not None:
        for k, own in enumerate(plan.owners):
          if own is not None and own != i:  # after the owner: its view; before it: its view too
            x[k] = views[i][k] if own < i else owned_view[k]
      g = None
      if gnodes is not None:
        g = [gnodes[k] if own is None or own == i else _view_grad(gnodes[k], x[k]) for k, own in enumerate(plan.owners)]
        g = stage_arg(plan, i, g, gside)
      out, s = c.update(stage_arg(plan, i, x, side), s, grads=g, **extra)
      out_tree, out_side = split(out)
      flat = plan.model_def.flatten_up_to(out_tree)
      for k, own in enumerate(plan.owners):
        if own is None or own == i:
          nodes[k] = flat[k]
      if out_side is not None and side is not None:
        side.update(out_side)
      new_states.append(s)
    state = ChainState(tuple(new_states), plan)
    comb = masks(state)
    if comb is not None:  # stages around an owner could not project its leaf: its pull-back does
      pulled = pulled_nodes(nodes, side, state, comb)
      for k, own in enumerate(plan.owners):
        if own is not None:
          nodes[k] = jax.tree.map(
            lambda a, m: a if m is None else _masked(a, m), nodes[k], pulled[k], is_leaf=lambda x: x is None
          )
    tree = plan.model_def.unflatten(nodes)
    return (Joint(tree, side) if side is not None else tree), state

  def pulled_nodes(nodes: list[Any], side: dict | None, state: ChainState, model_masks: PyTree) -> list[Any]:
    """Per model leaf, masks mirroring its trainable node: by shape where nobody owns the
    leaf, through the owner's ``pull_masks`` where one does."""
    plan = state.plan
    flat = plan.model_def.flatten_up_to(model_masks)
    out = [jax.tree.map(lambda x, m=m: _carried(x, m), node) for node, m in zip(nodes, flat)]
    for i, (c, s) in enumerate(zip(stages, state.stages)):
      mine = [k for k, own in enumerate(plan.owners) if own == i]
      if not mine or all(flat[k] is None for k in mine):
        continue
      only = plan.model_def.unflatten([flat[k] if own == i else None for k, own in enumerate(plan.owners)])
      back, _ = split(c.pull_masks(stage_arg(plan, i, nodes, side), s, only))
      back_nodes = plan.model_def.flatten_up_to(back)
      for k in mine:
        out[k] = back_nodes[k]
    return out

  def pull_masks(params, state, model_masks):
    state = check_state(state)
    plan = state.plan
    nodes, side = nodes_of(params, plan)
    tree = plan.model_def.unflatten(pulled_nodes(nodes, side, state, model_masks))
    return tree if side is None else Joint(tree, jax.tree.map(lambda _: None, side))

  def pack(params, state):
    state = check_state(state)
    plan = state.plan
    args, view, _ = walk(params, state)
    n = len(plan.paths)
    chosen: list[Any] = [None] * n
    owners_packed: list[Any] = [None] * n
    for i, (c, s, arg) in enumerate(zip(stages, state.stages, args)):
      out = plan.model_def.flatten_up_to(c.pack(arg, s))
      mine = stage_masks(i, s, plan)
      for k, own in enumerate(plan.owners):
        if (own is None or own <= i) and mine[k] is None and isinstance(out[k], export.CompressedLeaf):
          chosen[k] = out[k]
          if own == i:
            owners_packed[k] = out[k]
    for k, mine in enumerate(owners_packed):  # a later stage's leaf, kept in the owner's structure
      if mine is not None and chosen[k] is not mine:
        chosen[k] = mine.recompose(chosen[k])
    comb = masks(state)
    flat_masks = plan.model_def.flatten_up_to(comb) if comb is not None else [None] * n
    leaves = []
    for k in range(n):
      leaf = chosen[k] if chosen[k] is not None else np.asarray(view[k])
      leaves.append(export.prune(leaf, None if flat_masks[k] is None else np.asarray(flat_masks[k])))
    return plan.model_def.unflatten(leaves)

  def penalty(params, state):
    state = check_state(state)
    args, _, _ = walk(params, state)
    terms = [t for c, s, a in zip(stages, state.stages, args) if (t := c.penalty(a, s)) is not None]
    return sum(terms[1:], terms[0]) if terms else None

  def rewrite(fn, params, state):
    state = check_state(state)
    args, _, _ = walk(params, state)
    for c, s, a in zip(stages, state.stages, args):
      fn = c.rewrite(fn, a, s)
    return fn

  def restart(state):
    state = check_state(state)
    flags = [f for c, s in zip(stages, state.stages) if (f := c.restart(s)) is not None]
    return functools.reduce(jnp.logical_or, flags) if flags else None

  def frozen(state):
    state = check_state(state)
    plan = state.plan
    comb: list[Any] = [None] * len(plan.paths)
    for c, s in zip(stages, state.stages):
      for k, f in enumerate(_flat(plan.model_def, c.frozen(s), len(plan.paths))):
        comb[k] = f if comb[k] is None else (comb[k] if f is None else jnp.logical_or(comb[k], f))
    return None if all(f is None for f in comb) else plan.model_def.unflatten(comb)

  return Compressor(init, apply, update, pack, masks, penalty, rewrite, restart, frozen, pull_masks)
