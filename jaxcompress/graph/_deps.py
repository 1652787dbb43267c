"""Channel dependency groups: which parameter axes must be pruned together.

Removing output channel ``c`` of a conv also removes entry ``c`` of its bias, of the
following BatchNorm's scale, bias and statistics, and input channel ``c`` of the next
layer; a residual addition ties the channels of both branches; a concatenation shifts
them by an offset; a flatten into a Dense maps each channel to its block of inputs; a
depthwise conv passes them through; grouped convs, equal channel splits and channel
shuffles tie the channels at one offset of every group or piece. This module finds those couplings by abstract
interpretation of the jaxpr.

Every value's axes carry channel labels: integer ids per position, minted where a site
produces output features. Elementwise operations union the ids of their operands
position by position, shape operations move them, and a param leaf that meets labelled
activations becomes a member of their group. Channels that reach the model's output, or
mix with the model's input, cannot be pruned: their group is marked ``prunable=False``
with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.extend.core as jex
import numpy as np

from jaxcompress.core.tree import PyTree
from jaxcompress.graph._trace import CALLS, SITE_PRIMITIVES, aval_shape, make_jaxpr, primitives_of, sub_jaxprs

WILD = "wild"  # an axis created by broadcasting: compatible with any labels
Labels = Any  # per axis: None (data, no channels), WILD, or an int array of ids (-1 = none)

# How channel labels move through each primitive: see trace.PRIMITIVES_BY_KIND.
_ELEMENTWISE = primitives_of("elementwise", "cast", "barrier")
_SHAPE_OPS = primitives_of("layout")
_REDUCTIONS = primitives_of("reduction")


@dataclasses.dataclass(frozen=True)
class Member:
  """One parameter axis in a dependency group.

  Attributes:
    path: the leaf's path string.
    axis: the leaf axis that the group's channels index.
    index_map: ``int[size, k]``: row ``c`` lists the positions along ``axis`` that
      belong to the group's channel ``c`` (``k`` is 1 except after a flatten, where a
      channel owns a block of inputs).
  """

  path: str
  axis: int
  index_map: np.ndarray

  def __repr__(self) -> str:
    return f"Member({self.path!r}, axis={self.axis}, index_map={self.index_map.shape})"


@dataclasses.dataclass(frozen=True)
class Group:
  """Parameter axes whose channels are removed together.

  Attributes:
    size: the number of channels.
    members: the coupled axes; ``members[i].index_map[c]`` are channel ``c``'s
      positions.
    prunable: False when the channels reach the model's output, mix with its input,
      or pass through something this analysis does not model.
    reasons: why a group is not prunable.
  """

  size: int
  members: tuple[Member, ...]
  prunable: bool
  reasons: tuple[str, ...]

  def paths(self) -> list[tuple[str, int]]:
    """``[(path, axis), ...]`` of the members, for reading and tests."""
    return [(m.path, m.axis) for m in self.members]


@dataclasses.dataclass(frozen=True)
class _Param:
  """A value derived from param leaves: per value axis, the leaf axis (or None)."""

  sources: tuple[tuple[str, tuple[int | None, ...]], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class _Joint:
  """The label of one axis of several that together index channels (a channel axis split by a
  reshape, as in a channel shuffle): ``ids`` has one dimension per such axis, and this axis
  is dimension ``dim`` of it. A reshape that merges them back recovers per-position ids;
  any other operation pins them."""

  ids: np.ndarray
  dim: int


class _Analysis:
  def __init__(self) -> None:
    self.parent: list[int] = []
    self.pinned: dict[int, str] = {}
    self.members: list[tuple[str, int, np.ndarray]] = []

  # --- channel ids -------------------------------------------------------------------------
  def mint(self, n: int) -> np.ndarray:
    start = len(self.parent)
    self.parent.extend(range(start, start + n))
    return np.arange(start, start + n)

  def find(self, i: int) -> int:
    while self.parent[i] != i:
      self.parent[i] = self.parent[self.parent[i]]
      i = self.parent[i]
    return i

  def union(self, a: np.ndarray, b: np.ndarray) -> None:
    for x, y in zip(a.tolist(), b.tolist()):
      if x >= 0 and y >= 0:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
          self.parent[max(rx, ry)] = min(rx, ry)

  def pin(self, labels: Labels, reason: str) -> None:
    for lab in labels or ():
      if isinstance(lab, _Joint):
        lab = lab.ids.reshape(-1)
      if isinstance(lab, np.ndarray):
        for i in lab.tolist():
          if i >= 0:
            self.pinned.setdefault(i, reason)

  def member(self, param: _Param, axis: int, ids: np.ndarray) -> None:
    for path, axes in param.sources:
      leaf_axis = axes[axis] if axis < len(axes) else None
      if leaf_axis is not None:
        self.members.append((path, leaf_axis, ids))

  # --- groups ---------------------------------------------------------------------------------
  def groups(self) -> list[Group]:
    roots_of = lambda ids: [self.find(i) if i >= 0 else -1 for i in ids.tolist()]
    # Channels are grouped by the members they share: build components over channel roots.
    by_root: dict[int, dict[tuple[str, int], list[int]]] = {}
    for path, axis, ids in self.members:
      for pos, r in enumerate(roots_of(ids)):
        if r >= 0:
          by_root.setdefault(r, {}).setdefault((path, axis), []).append(pos)
    pinned_roots: dict[int, str] = {}
    for i, why in self.pinned.items():
      pinned_roots.setdefault(self.find(i), why)
    # Two channels are in one group when they have the same member set.
    buckets: dict[tuple[tuple[str, int], ...], list[int]] = {}
    for r in sorted(by_root):
      buckets.setdefault(tuple(sorted(by_root[r])), []).append(r)
    out = []
    for keys, roots in buckets.items():
      members, reasons = [], sorted({pinned_roots[r] for r in roots if r in pinned_roots})
      for key in keys:
        rows = [sorted(set(by_root[r][key])) for r in roots]
        if len({len(row) for row in rows}) != 1:
          reasons.append(f"{key[0]} axis {key[1]} has channels of unequal width")
          rows = [row[:1] for row in rows]
        members.append(Member(key[0], key[1], np.asarray(rows, np.int64)))
      out.append(Group(len(roots), tuple(members), not reasons, tuple(reasons)))
    return out


def _broadcast_labels(labels: Labels, shape: tuple[int, ...], dims: tuple[int, ...]) -> Labels:
  out: list[Any] = [WILD] * len(shape)
  for src, dst in enumerate(dims):
    lab = labels[src] if labels is not None else None
    if isinstance(lab, np.ndarray) and lab.size != shape[dst]:
      lab = WILD  # a size-1 axis stretched: the same value for every channel
    out[dst] = lab
  return out


def _reshape_blocks(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
  """Pairs ``(old axes, new axes)`` that a row-major reshape maps onto each other, each pair
  as small as the sizes allow (size-1 axes join a neighbouring pair)."""
  blocks: list[tuple[list[int], list[int]]] = []
  i = j = 0
  while i < len(old) or j < len(new):
    a: list[int] = []
    b: list[int] = []
    po = pn = 1
    while True:  # at least one axis of each side, until both sides cover the same size
      if i < len(old) and po <= pn and (po < pn or not a):
        po, i = po * old[i], i + 1
        a.append(i - 1)
      elif j < len(new) and (pn < po or not b):
        pn, j = pn * new[j], j + 1
        b.append(j - 1)
      else:
        break
    while i < len(old) and old[i] == 1:
      a.append(i)
      i += 1
    while j < len(new) and new[j] == 1:
      b.append(j)
      j += 1
    blocks.append((a, b))
  return blocks


def _reshape_labels(an: _Analysis, labels: Labels, old: tuple[int, ...], new: tuple[int, ...]) -> Labels:
  out: list[Any] = [None] * len(new)
  if labels is None:
    return out
  for a_axes, b_axes in _reshape_blocks(old, new):
    a_big = [a for a in a_axes if old[a] != 1]
    b_big = [b for b in b_axes if new[b] != 1]
    for b in b_axes:
      out[b] = WILD if new[b] == 1 else None
    labs = [labels[a] for a in a_big]
    arrays = [k for k, lab in enumerate(labs) if isinstance(lab, np.ndarray)]
    joints = [lab for lab in labs if isinstance(lab, _Joint)]
    if not arrays and not joints:
      continue
    shape = tuple(old[a] for a in a_big)
    if (
      joints
      and not arrays
      and len(joints) == len(labs) == joints[0].ids.ndim
      and all(lab.ids is joints[0].ids for lab in joints)
    ):  # the axes of one split channel axis, merged back
      ids = np.transpose(joints[0].ids, [lab.dim for lab in joints])
    elif len(arrays) == 1 and not joints:  # one channel axis, the others data (a flatten, a split)
      k = arrays[0]
      ids = np.broadcast_to(labs[k].reshape([-1 if q == k else 1 for q in range(len(shape))]), shape)
    else:  # channels of different axes mixed, or part of a split axis: not modelled
      an.pin(labs, "a reshape mixes channel axes in a way this analysis does not model")
      continue
    full = ids.reshape(tuple(new[b] for b in b_big))
    constant = []
    for q in range(len(b_big)):
      moved = np.moveaxis(full, q, 0).reshape(full.shape[q], -1)
      constant.append(moved[:, 0].copy() if (moved == moved[:, :1]).all() else None)
    if all(c is not None for c in constant) or len(b_big) == 1:
      for b, c in zip(b_big, constant):
        out[b] = c
    else:  # a channel axis split over several axes (a channel shuffle's first reshape)
      token = np.ascontiguousarray(full)
      rows = token.reshape(-1, token.shape[-1])
      for row in rows[1:]:  # only the minor axis may shrink: the major sizes (the groups) stay
        an.union(rows[0], row)
      for q, b in enumerate(b_big):
        out[b] = _Joint(token, q)
  return out


def _slice_piece(an: _Analysis, lab: Any, lo: int, hi: int, stride: int) -> Any:
  """The labels of ``[lo:hi:stride]`` of one axis.

  A slice that takes one of ``P`` equal contiguous pieces of a channel axis is read as a
  split by fraction (``jnp.split``, ``x[..., : c // 2]``): the channels at the same offset in
  every piece are removed together, so the narrowed model's split, at the same fraction,
  takes the same channels. Any other partial slice of channels pins them (a slice at a
  fixed count would not follow the narrowing).
  """
  if not isinstance(lab, np.ndarray):
    return lab
  size, piece = lab.shape[0], hi - lo
  if piece == size:
    return lab
  if stride == 1 and piece > 0 and size % piece == 0 and lo % piece == 0:
    for k in range(1, size // piece):
      an.union(lab[:piece], lab[k * piece : (k + 1) * piece])
  else:
    an.pin([lab], f"a slice [{lo}:{hi}:{stride}] of {size} channels that is not an equal piece")
  return lab[lo:hi:stride]


def _param_after(prim: str, param: _Param, eqn: jex.JaxprEqn) -> _Param | None:
  """How the leaf-axis map of a param-derived value changes through a shape operation."""
  in_shape = tuple(aval_shape(eqn.invars[0]))
  out_shape = tuple(aval_shape(eqn.outvars[0]))

  def remap(axes: tuple[int | None, ...]) -> tuple[int | None, ...]:
    if prim == "transpose":
      return tuple(axes[p] for p in eqn.params["permutation"])
    if prim == "broadcast_in_dim":
      new: list[int | None] = [None] * len(out_shape)
      for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
        new[dst] = axes[src] if in_shape[src] == out_shape[dst] else None
      return tuple(new)
    if prim in ("reshape", "squeeze", "expand_dims"):
      kept = [a for a, d in zip(axes, in_shape) if d != 1]
      if [d for d in in_shape if d != 1] != [d for d in out_shape if d != 1]:
        return (None,) * len(out_shape)
      it = iter(kept)
      return tuple(next(it) if d != 1 else None for d in out_shape)
    return axes if len(axes) == len(out_shape) else (None,) * len(out_shape)

  return _Param(tuple((path, remap(axes)) for path, axes in param.sources))


def _run(
  an: _Analysis, jaxpr: jex.Jaxpr, in_labels: list[Labels], in_params: list[_Param | None]
) -> tuple[list[Labels], list[_Param | None]]:
  labels: dict[Any, Labels] = {}
  params: dict[Any, _Param] = {}
  for v, lab, par in zip(jaxpr.invars, in_labels, in_params):
    labels[v] = lab
    if par is not None:
      params[v] = par

  def lab_of(v: Any) -> Labels:
    if isinstance(v, jex.Literal):
      return [WILD] * np.ndim(v.val)
    return labels.get(v, [None] * len(aval_shape(v)))

  def par_of(v: Any) -> _Param | None:
    return None if isinstance(v, jex.Literal) else params.get(v)

  for eqn in jaxpr.eqns:
    prim = eqn.primitive.name
    ins = [lab_of(v) for v in eqn.invars]
    pars = [par_of(v) for v in eqn.invars]
    outs: list[Labels] = [[None] * len(aval_shape(v)) for v in eqn.outvars]
    out_pars: list[_Param | None] = [None] * len(eqn.outvars)
    out_shape = tuple(aval_shape(eqn.outvars[0])) if eqn.outvars else ()

    if prim not in ("reshape", "squeeze", "expand_dims", "transpose") and any(
      isinstance(lab, _Joint) for labs in ins for lab in labs
    ):
      for k, labs in enumerate(ins):
        an.pin(labs, f"channels split over several axes pass through {prim}, which this analysis does not model")
        ins[k] = [None if isinstance(lab, _Joint) else lab for lab in labs]
    if prim in SITE_PRIMITIVES and (pars[0] is not None or pars[1] is not None):
      outs[0] = _site(an, eqn, ins, pars)
    elif prim in _ELEMENTWISE:
      outs[0], consumed = _elementwise(an, eqn, ins, pars, out_shape)
      live = [p for p in pars if p is not None]
      if live and not consumed:  # still a param value (BatchNorm's scale * rsqrt(var + eps))
        out_pars[0] = _Param(tuple(src for p in live for src in p.sources))
    elif prim == "broadcast_in_dim":
      outs[0] = _broadcast_labels(ins[0], out_shape, eqn.params["broadcast_dimensions"])
    elif prim in ("reshape", "squeeze", "expand_dims"):
      outs[0] = _reshape_labels(an, ins[0], tuple(aval_shape(eqn.invars[0])), out_shape)
    elif prim == "slice" and pars[0] is None:
      strides = eqn.params["strides"] or (1,) * len(out_shape)
      bounds = zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides)
      outs[0] = [_slice_piece(an, lab, lo, hi, st) for lab, (lo, hi, st) in zip(ins[0], bounds)]
    elif prim == "split" and all(p is None for p in pars):
      axis, start = eqn.params["axis"], 0
      for k, size in enumerate(eqn.params["sizes"]):
        outs[k] = list(ins[0])
        outs[k][axis] = _slice_piece(an, ins[0][axis], start, start + int(size), 1)
        start += int(size)
    elif prim == "transpose":
      outs[0] = [ins[0][p] for p in eqn.params["permutation"]]
    elif prim in _REDUCTIONS or prim == "reduce_window_sum" or prim.startswith("reduce_window"):
      axes = set(eqn.params.get("axes", ()))
      if prim.startswith("reduce_window"):
        axes = {a for a, w in enumerate(eqn.params["window_dimensions"]) if w != 1}
        outs[0] = [lab if a not in axes or lab is WILD else None for a, lab in enumerate(ins[0])]
      else:
        outs[0] = [lab for a, lab in enumerate(ins[0]) if a not in axes]
    elif prim == "concatenate":
      outs[0] = _concatenate(an, eqn, ins, out_shape)
    elif prim in ("dot_general",):  # activation x activation (attention)
      outs[0] = _dot_activations(an, eqn, ins)
    elif prim in CALLS:
      (_, sub), *_ = sub_jaxprs(eqn)
      inner = sub.jaxpr if isinstance(sub, jex.ClosedJaxpr) else sub
      outs, out_pars = _run(an, inner, ins, pars)
    else:
      for lab in ins:
        an.pin(lab, f"channels pass through {prim}, which this analysis does not model")
    if prim in _SHAPE_OPS and pars and pars[0] is not None:
      out_pars[0] = _param_after(prim, pars[0], eqn)
    for v, lab, par in zip(eqn.outvars, outs, out_pars):
      labels[v] = lab
      if par is not None:
        params[v] = par
  return [lab_of(v) for v in jaxpr.outvars], [par_of(v) for v in jaxpr.outvars]


def _site(an: _Analysis, eqn: jex.JaxprEqn, ins: list[Labels], pars: list[_Param | None]) -> Labels:
  operand = 1 if pars[1] is not None else 0
  weight, act = pars[operand], ins[1 - operand]
  assert weight is not None
  out_rank = len(aval_shape(eqn.outvars[0]))
  out: list[Any] = [None] * out_rank
  if eqn.primitive.name == "dot_general":
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    wc, ac = (lc, rc) if operand == 0 else (rc, lc)
    _wb, ab = (lb, rb) if operand == 0 else (rb, lb)
    for w_axis, a_axis in zip(wc, ac):
      if isinstance(act[a_axis], np.ndarray):
        an.member(weight, w_axis, act[a_axis])
    # Output axes: batch dims, then lhs free dims, then rhs free dims.
    lhs_rank, rhs_rank = len(aval_shape(eqn.invars[0])), len(aval_shape(eqn.invars[1]))
    lhs_free = [a for a in range(lhs_rank) if a not in lc and a not in lb]
    rhs_free = [a for a in range(rhs_rank) if a not in rc and a not in rb]
    pos = len(lb)
    for side, free in ((0, lhs_free), (1, rhs_free)):
      for a in free:
        if side == operand:
          ids = an.mint(aval_shape(eqn.outvars[0])[pos])
          an.member(weight, a, ids)
          out[pos] = ids
        else:
          out[pos] = act[a]
        pos += 1
    for k, a in enumerate(ab):
      out[k] = act[a]
    return out
  dn = eqn.params["dimension_numbers"]
  groups = eqn.params["feature_group_count"]
  if operand != 1:
    an.pin(act, "a param used as a convolution's image")
    return out
  k_out, k_in = dn.rhs_spec[0], dn.rhs_spec[1]
  a_feat, o_feat = dn.lhs_spec[1], dn.out_spec[1]
  cin, cout = aval_shape(eqn.invars[0])[a_feat], aval_shape(eqn.outvars[0])[o_feat]
  for b, a in zip(dn.out_spec[:1], dn.lhs_spec[:1]):
    out[b] = act[a]
  if groups == 1:
    if isinstance(act[a_feat], np.ndarray):
      an.member(weight, k_in, act[a_feat])
    ids = an.mint(cout)
    an.member(weight, k_out, ids)
  elif groups == cin:  # depthwise: output channel o reads input channel o // multiplier
    src = act[a_feat] if isinstance(act[a_feat], np.ndarray) else an.mint(cin)
    ids = np.repeat(src, cout // cin)
    if cout != cin:
      an.pin([ids], "a depthwise convolution with a channel multiplier")
    an.member(weight, k_out, ids)
  else:  # grouped: every group keeps the same channels, so one channel is an offset in every group
    ids = an.mint(cout)
    per_out, per_in = cout // groups, cin // groups
    for g in range(1, groups):
      an.union(ids[:per_out], ids[g * per_out : (g + 1) * per_out])
    an.member(weight, k_out, ids)
    if isinstance(act[a_feat], np.ndarray):
      src = act[a_feat]
      for g in range(1, groups):
        an.union(src[:per_in], src[g * per_in : (g + 1) * per_in])
      an.member(weight, k_in, src[:per_in])
  out[o_feat] = ids
  return out


def _elementwise(
  an: _Analysis, eqn: jex.JaxprEqn, ins: list[Labels], pars: list[_Param | None], shape: tuple[int, ...]
) -> tuple[Labels, bool]:
  """Output labels, and whether a param operand met labelled channels (became a member)."""
  out: list[Any] = [WILD] * len(shape)
  consumed = False
  for axis in range(len(shape)):
    arrays = [lab[axis] for lab in ins if len(lab) == len(shape) and isinstance(lab[axis], np.ndarray)]
    data = [k for k, lab in enumerate(ins) if len(lab) == len(shape) and lab[axis] is None and pars[k] is None]
    if arrays:
      for other in arrays[1:]:
        an.union(arrays[0], other)
      out[axis] = arrays[0]
      for par in pars:
        if par is not None:
          an.member(par, axis, arrays[0])
          consumed = True
      if data and eqn.primitive.name not in ("select_n",):
        an.pin([arrays[0]], f"channels mix with the model's input data in {eqn.primitive.name}")
    elif data:
      out[axis] = None
  return out, consumed


def _concatenate(an: _Analysis, eqn: jex.JaxprEqn, ins: list[Labels], shape: tuple[int, ...]) -> Labels:
  dim = eqn.params["dimension"]
  out: list[Any] = [WILD] * len(shape)
  for axis in range(len(shape)):
    if axis == dim:
      parts = []
      for v, lab in zip(eqn.invars, ins):
        n = aval_shape(v)[dim]
        parts.append(lab[dim] if isinstance(lab[dim], np.ndarray) else np.full(n, -1))
      out[axis] = np.concatenate(parts)
    else:
      arrays = [lab[axis] for lab in ins if isinstance(lab[axis], np.ndarray)]
      for other in arrays[1:]:
        an.union(arrays[0], other)
      out[axis] = arrays[0] if arrays else None
  return out


def _dot_activations(an: _Analysis, eqn: jex.JaxprEqn, ins: list[Labels]) -> Labels:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  for a, b in (*zip(lc, rc), *zip(lb, rb)):
    x, y = ins[0][a], ins[1][b]
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
      an.union(x, y)
  lhs_free = [a for a in range(len(ins[0])) if a not in lc and a not in lb]
  rhs_free = [a for a in range(len(ins[1])) if a not in rc and a not in rb]
  return [ins[0][a] for a in lb] + [ins[0][a] for a in lhs_free] + [ins[1][a] for a in rhs_free]


def dependency_groups(apply_fn: Callable[..., Any], variables: PyTree, *inputs: Any) -> list[Group]:
  """Finds the groups of parameter axes that structured pruning must remove together.

  Args:
    apply_fn: ``apply_fn(variables, *inputs) -> outputs`` in inference mode (BatchNorm
      using its running statistics), so that statistics leaves are found too.
    variables: every leaf to consider: params and BatchNorm statistics (for Flax NNX,
      the whole ``nnx.split(model)`` state; for Linen, the variables dict).
    *inputs: example inputs, used for shapes only.

  Returns:
    The groups, each with its channel count, members ``(path, axis, index_map)``, and
    whether it may be pruned.

  Raises:
    ValueError: if ``apply_fn`` cannot be traced or a leaf of ``variables`` is unused.

  A grouped convolution ties each channel offset across its groups (every group keeps
  the same channels); a slice taking one of several equal pieces of a channel axis is a
  split by fraction (the same offset in every piece goes together); a channel shuffle
  (reshape to ``(groups, c / groups)``, transpose, flatten) keeps the group count and
  ties the channels at one offset of every group.

  Limits: layers inside ``scan``, ``while`` and ``cond`` are not analysed (channels
  entering them are marked not prunable), and depthwise convolutions with a channel
  multiplier pin their channels.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> v = {'a': {'kernel': jnp.ones((4, 8)), 'bias': jnp.ones(8)}, 'b': {'kernel': jnp.ones((8, 2))}}
    >>> f = lambda v, x: jax.nn.relu(x @ v['a']['kernel'] + v['a']['bias']) @ v['b']['kernel']
    >>> [(g.size, g.paths(), g.prunable) for g in dependency_groups(f, v, jnp.ones((1, 4)))]
    [(8, [('a/bias', 0), ('a/kernel', 1), ('b/kernel', 0)], True), (2, [('b/kernel', 1)], False)]
  """
  closed, paths, _ = make_jaxpr(apply_fn, variables, *inputs, allow_unused=False)
  an = _Analysis()
  n_in = len(closed.jaxpr.invars)
  in_params: list[_Param | None] = [None] * n_in
  for k, path in enumerate(paths):
    rank = len(aval_shape(closed.jaxpr.invars[k]))
    in_params[k] = _Param(((path, tuple(range(rank))),))
  in_labels: list[Labels] = [[None] * len(aval_shape(v)) for v in closed.jaxpr.invars]
  out_labels, _ = _run(an, closed.jaxpr, in_labels, in_params)
  for lab in out_labels:
    an.pin(lab, "the channels are model outputs")
  return an.groups()
