"""Cross-layer parameter sharing (ALBERT, Lan et al. 2020): one weight used by several layers.

Numerics: :func:`shared_init` (the one weight of a group, from its members); the
compressor :func:`cross_layer` ties the leaves of each group in the trainable tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import leaves_with_paths
from jaxcompress.export import TiedArray

SHARED_INITS = ("first", "mean")


def shared_init(members: Sequence[jax.Array], method: str = "first") -> jax.Array:
  """The one weight a group of same-shaped weights starts from.

  Args:
    members: the group's weights, all of one shape and dtype.
    method: ``'first'``: the first member's (ALBERT trains the shared layer from
      scratch, from one layer's initialization); ``'mean'``: their mean, the weight
      nearest to all of them in least squares (from trained layers).

  Returns:
    An array of the members' shape and dtype.

  Raises:
    ValueError: for an unknown method or no members.
  """
  validate.check_choice("method", method, SHARED_INITS)
  if not members:
    raise ValueError("a group needs at least one member")
  if method == "first":
    return members[0]
  return (sum(members[1:], members[0]) / len(members)).astype(members[0].dtype)


class Shared(NamedTuple):
  """The trainable node of a group's first member: the one weight of the group."""

  weight: jax.Array


class Tied(NamedTuple):
  """The trainable node of a group's other members: nothing (they read the group's weight)."""


@dataclasses.dataclass(frozen=True)
class TiedLeaf:
  """Per-leaf state of :func:`cross_layer` (static; no arrays).

  Attributes:
    group: the group's number.
    source: the path of the group's first member, which holds the weight.
  """

  group: int
  source: str


jax.tree_util.register_dataclass(TiedLeaf, data_fields=[], meta_fields=["group", "source"])


def _groups_of(params: Any, groups: Sequence[select.Where] | None, where: select.Where) -> list[list[str]]:
  flat = leaves_with_paths(params)
  shapes = {path: (tuple(np.shape(x)), str(getattr(x, "dtype", ""))) for path, x in flat}
  if groups is None:
    pred = select.as_predicate(where)
    chosen = [path for path, x in flat if pred(path, x)]
    if not chosen:
      select.explain(where, params)
    by_shape: dict[Any, list[str]] = {}
    for path in chosen:
      by_shape.setdefault(shapes[path], []).append(path)
    out = [members for members in by_shape.values() if len(members) > 1]
    if not out:
      raise ValueError(f"no two selected leaves have the same shape: {[(p, shapes[p][0]) for p in chosen]}")
    return out
  out, seen = [], set()
  for i, group in enumerate(groups):
    pred = select.as_predicate(group)
    members = [path for path, x in flat if pred(path, x)]
    if len(members) < 2:
      raise ValueError(f"groups[{i}]={group!r} selects {len(members)} leaves ({members}); a group needs at least 2")
    if len({shapes[p] for p in members}) > 1:
      raise ValueError(f"groups[{i}] mixes shapes: {[(p, shapes[p][0]) for p in members]}")
    if seen & set(members):
      raise ValueError(f"groups[{i}] shares leaves with an earlier group: {sorted(seen & set(members))}")
    seen |= set(members)
    out.append(members)
  return out


def cross_layer(
  groups: Sequence[select.Where] | None = None, *, init: str = "first", where: select.Where = None
) -> Compressor:
  """Cross-layer parameter sharing: one weight used by every layer of a group.

  ``init`` ties each group's leaves: the first member (in tree order) becomes
  :class:`Shared` ``(weight)`` in the *trainable tree*, the others :class:`Tied` ``()``
  (no arrays), and ``apply`` gives every member the group's weight. The weight is used
  at several places of the model, so its gradient is the sum of the members' gradients
  (ALBERT's all-shared layers; Lan et al., §3.1). ``pack`` stores the weight once
  (:class:`~jaxcompress.export.TiedArray`: the first member holds it, the others 0 bytes).

  ALBERT shares whole Transformer layers from scratch; this shares any leaves of equal
  shape (a group per leaf kind: all layers' query kernels, all FFN kernels, ...), and
  starts from the given weights (``'first'`` or ``'mean'``, :func:`shared_init`).

  Args:
    groups: one selection (:mod:`jaxcompress.core.select`) per group, each of >= 2
      leaves of one shape and dtype; ``None``: every set of >= 2 leaves of equal shape
      and dtype among ``where``'s.
    init: ``'first'`` or ``'mean'`` (:func:`shared_init`).
    where: with ``groups=None``, which leaves (default: floating leaves with
      ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`TiedLeaf`.

  Raises:
    ValueError: if ``init`` is unknown; at ``init``, if a group selects fewer than 2
      leaves, mixes shapes or overlaps another, or (``groups=None``) no two selected
      leaves have the same shape.

  References:
    Lan, Chen, Goodman, Gimpel, Sharma & Soricut 2020, "ALBERT: A Lite BERT for
    Self-supervised Learning of Language Representations", https://arxiv.org/abs/1909.11942.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = cross_layer(init='mean')
    >>> params, state = c.init({'a': jnp.ones((2, 2)), 'b': jnp.zeros((2, 2))})
    >>> c.apply(params, state)['b'].tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    >>> g = jax.grad(lambda p: c.apply(p, state)['a'].sum() + c.apply(p, state)['b'].sum())(params)
    >>> g['a'].weight.tolist()  # summed over the two layers
    [[2.0, 2.0], [2.0, 2.0]]
  """
  validate.check_choice("init", init, SHARED_INITS)

  def init_fn(params, *, masks=None):
    del masks
    plan = _groups_of(params, groups, where)
    member = {path: (g, members[0]) for g, members in enumerate(plan) for path in members}
    values = dict(leaves_with_paths(params))
    for members in plan:
      for path in members:
        validate.check_weight_leaf(path, values[path])
    weights = {g: shared_init([values[p] for p in members], init) for g, members in enumerate(plan)}

    def node(path, x):
      if path not in member:
        return x, None
      g, source = member[path]
      return (Shared(weights[g]) if path == source else Tied()), TiedLeaf(g, source)

    pairs = [node(path, x) for path, x in leaves_with_paths(params)]
    treedef = jax.tree.structure(params)
    trainable = treedef.unflatten([n for n, _ in pairs])
    leaves = treedef.unflatten([s for _, s in pairs])
    return trainable, leafwise.LeafwiseState.start(leaves)

  def flat(params, state):
    is_state = lambda x: x is None or isinstance(x, TiedLeaf)
    states, treedef = jax.tree.flatten(state.leaves, is_leaf=is_state)
    try:
      nodes = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
      raise ValueError(f"the trainable tree does not match the compressor's state ({e})") from None
    shared = {s.group: n.weight for s, n in zip(states, nodes) if isinstance(n, Shared) and s is not None}
    return states, nodes, treedef, shared

  def apply(params, state):
    states, nodes, treedef, shared = flat(params, state)
    for s, n in zip(states, nodes):
      if s is not None and not isinstance(n, (Shared, Tied)):
        raise ValueError(
          f"the trainable tree holds a {type(n).__name__} where init put a shared weight: "
          "pass the tree that init returned, not the model's params"
        )
    return treedef.unflatten([n if s is None else shared[s.group] for s, n in zip(states, nodes)])

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack(params, state):
    states, nodes, treedef, shared = flat(params, state)
    stored = {g: np.asarray(w) for g, w in shared.items()}
    return treedef.unflatten(
      [
        n if s is None else TiedArray(values=stored[s.group], source=s.source, primary=isinstance(n, Shared))
        for s, n in zip(states, nodes)
      ]
    )

  return Compressor(init_fn, apply, update, pack)
