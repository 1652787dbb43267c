"""Finding the model's sites: matmuls and convolutions whose one operand is a param.

``trace`` turns ``apply_fn(params, *inputs)`` into a jaxpr and follows every param leaf
through shape-only operations (reshape, transpose, dtype conversion, broadcast, slicing,
...) into ``dot_general`` and ``conv_general_dilated``. Nested calls are searched too:
``jit``, ``remat``, ``custom_jvp``/``custom_vjp`` functions, ``scan`` (a param stacked
over layers and scanned over is found, with ``in_loop`` set), ``while`` and ``cond``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex

from jaxcompress.core.tree import PyTree, leaves_with_paths

SITE_PRIMITIVES = ("dot_general", "conv_general_dilated")

# The one table of the jaxpr primitives the graph layer models, by kind. What a kind means
# to each walk over a jaxpr (trace.py follows a param leaf to its sites, deps.py moves
# channel labels, rewrite.py re-evaluates):
#   kind           trace: a param leaf ...               deps: channel labels ...
#   "cast"         passes, every axis in place           kept, as elementwise
#   "reshard"      passes, every axis in place           pinned (not modelled)
#   "layout"       passes, axes rearranged or lost       moved by the op's own rule
#   "gather"       passes, axes lost                     pinned (not modelled)
#   "barrier"      passes (first operand only)           unioned, as elementwise
#   "elementwise"  stops                                 unioned position by position
#   "reduction"    stops                                 dropped on the reduced axes
#   "call"         followed into the inner jaxpr         run through the inner jaxpr
#   "control"      followed into the bodies              pinned (not analysed)
# A "call"'s inner jaxpr takes the equation's operands one to one; a "control" primitive
# maps them (scan's carry, while's consts, cond's index), and rewrite.py skips its sites.
PRIMITIVES_BY_KIND: dict[str, tuple[str, ...]] = {
  "cast": ("convert_element_type", "copy", "copy_p", "reduce_precision", "sharding_constraint", "device_put"),
  "reshard": ("mesh_cast",),
  "layout": ("reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev"),
  "gather": ("dynamic_slice",),
  "barrier": ("optimization_barrier",),
  "elementwise": (
    "add", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "select_n", "add_any", "nextafter",
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "abs", "sign",
    "integer_pow", "square", "sin", "cos", "erf", "erf_inv", "floor", "ceil", "round", "stop_gradient",
    "is_finite", "not", "and", "or", "gt", "ge", "lt", "le", "eq", "ne", "clamp",
  ),
  "reduction": ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and", "reduce_or"),
  "call": ("jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_jvp_call", "custom_vjp_call"),
  "control": ("scan", "while", "cond"),
}  # fmt: skip


def primitives_of(*kinds: str) -> frozenset[str]:
  """The names of the primitives of the given kinds in ``PRIMITIVES_BY_KIND``.

  Args:
    *kinds: kind names such as ``'cast'`` or ``'layout'``.

  Returns:
    A frozenset of primitive names.

  Raises:
    ValueError: for a kind the table does not have.

  Example:
    >>> sorted(primitives_of('control'))
    ['cond', 'scan', 'while']
  """
  unknown = set(kinds) - set(PRIMITIVES_BY_KIND)
  if unknown:
    raise ValueError(f"unknown primitive kind(s) {sorted(unknown)}; the kinds are {sorted(PRIMITIVES_BY_KIND)}")
  return frozenset(name for kind in kinds for name in PRIMITIVES_BY_KIND[kind])


CALLS = primitives_of("call")
"""Calls whose inner jaxpr takes the equation's operands one to one (``jit``, ``remat``, ...)."""
CONTROL_FLOW = primitives_of("control")
"""``scan``, ``while`` and ``cond``: nested jaxprs with their own operand mapping."""
# Operations that carry a weight through unchanged in value (first operand only).
_PASS_THROUGH = primitives_of("cast", "reshard", "layout", "gather", "barrier")
# Pass-through ops that keep every axis where it is (so the leaf's axes stay known).
_SAME_AXES = primitives_of("cast", "reshard")

Location = tuple[Any, ...]


def aval_shape(v: Any) -> tuple[int, ...]:
  """The shape of a jaxpr variable (``()`` for tokens and other shapeless values)."""
  return tuple(getattr(v.aval, "shape", ()))


def aval_dtype(v: Any) -> Any:
  """The dtype of a jaxpr variable, or ``None``."""
  return getattr(v.aval, "dtype", None)


@dataclasses.dataclass(frozen=True)
class Site:
  """One matmul or convolution fed by a param leaf.

  Attributes:
    path: the param leaf's path string (``'fc1/kernel'``).
    op: ``'dot_general'`` or ``'conv_general_dilated'``.
    weight_operand: 0 or 1, which operand of the op is the weight.
    contracted_axes: axes of the weight operand summed over (for a conv, its input
      feature axis and spatial axes).
    feature_axes: axes of the weight operand that index output features.
    weight_shape: the weight operand's shape (after any reshape of the leaf).
    activation_shape: the other operand's shape.
    activation_dtype: the other operand's dtype.
    output_shape: the op's output shape.
    in_loop: whether the site is inside a ``scan`` or ``while`` body.
    scopes: the primitives of the nested calls around the site, outermost first
      (``('jit', 'scan')``); empty at the top level.
    trip_count: times it runs per call: the product of enclosing ``scan`` lengths
      (``None`` inside a ``while``, whose trip count is unknown).
    params: the op's parameters (dimension numbers, strides, padding, ...).
    location: where the equation sits in the (nested) jaxpr; identifies the site.
    occurrence: how many earlier sites (in execution order) use the same leaf; a
      leaf applied twice (weight tying, a block called twice) has sites 0 and 1.
    leaf_axes: for each axis of the weight operand, the axis of the param leaf it is,
      when only transposes, dtype conversions and flips of non-feature axes lie between
      them (``x @ w.T`` gives ``(1, 0)``; ``nn.ConvTranspose(transpose_kernel=True)``'s
      spatially flipped, transposed kernel gives ``(0, 1, 3, 2)``); ``None`` after a
      reshape, broadcast or slice.

  The property ``key`` (the path, with ``#k`` from the second use on) names the site in
  calibration ranges and captures.
  """

  path: str
  op: str
  weight_operand: int
  contracted_axes: tuple[int, ...]
  feature_axes: tuple[int, ...]
  weight_shape: tuple[int, ...]
  activation_shape: tuple[int, ...]
  activation_dtype: Any
  output_shape: tuple[int, ...]
  in_loop: bool
  scopes: tuple[str, ...]
  trip_count: int | None
  params: dict[str, Any] = dataclasses.field(repr=False, compare=False)
  location: Location = dataclasses.field(repr=False)
  occurrence: int = 0
  leaf_axes: tuple[int, ...] | None = None

  @property
  def key(self) -> str:
    """A name unique among the sites: the path, with ``#k`` from the second use on."""
    return self.path if self.occurrence == 0 else f"{self.path}#{self.occurrence}"

  def compute(self, activation: jax.Array, weight: jax.Array, **overrides: Any) -> jax.Array:
    """Runs the original op on ``activation`` and ``weight`` (its parameters overridable,
    for example ``preferred_element_type``)."""
    operands = (activation, weight) if self.weight_operand == 1 else (weight, activation)
    prim = jax.lax.dot_general_p if self.op == "dot_general" else jax.lax.conv_general_dilated_p
    return prim.bind(*operands, **{**self.params, **overrides})


@dataclasses.dataclass(frozen=True)
class _Prov:
  """Where a value comes from: a param leaf, seen through shape-only ops.

  ``axes[i]`` is the leaf axis that the value's axis ``i`` is, while only transposes and
  dtype conversions lie between them; ``None`` after a reshape, broadcast or slice.
  """

  path: str
  axes: tuple[int, ...] | None = None
  flipped: frozenset[int] = frozenset()  # leaf axes a ``rev`` reversed (ConvTranspose's spatial flip)

  def through(self, eqn: Any) -> _Prov:
    name = eqn.primitive.name
    if self.axes is not None and name == "transpose":
      return _Prov(self.path, tuple(self.axes[p] for p in eqn.params["permutation"]), self.flipped)
    if self.axes is not None and name == "rev":
      return _Prov(self.path, self.axes, self.flipped | {self.axes[d] for d in eqn.params["dimensions"]})
    if self.axes is not None and name in _SAME_AXES:
      return self
    return _Prov(self.path, None)

  def site_axes(self, features: tuple[int, ...]) -> tuple[int, ...] | None:
    """``axes`` for a site whose output features are the operand's ``features``: known unless
    a flip reversed a feature axis (then per-feature scales would be reversed too)."""
    if self.axes is None or any(self.axes[f] in self.flipped for f in features):
      return None
    return self.axes


def _weight_axes(op: str, params: dict[str, Any], operand: int, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  if op == "dot_general":
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    contract, batch = (lc, lb) if operand == 0 else (rc, rb)
    free = tuple(a for a in range(ndim) if a not in contract and a not in batch)
    return tuple(contract), free
  dn = params["dimension_numbers"]
  if operand == 1:  # the kernel: (out, in, *spatial) in rhs_spec order
    out_axis, in_axis, *spatial = dn.rhs_spec
    return (in_axis, *spatial), (out_axis,)
  batch_axis, feat_axis, *spatial = dn.lhs_spec  # a param as the image: unusual
  return (feat_axis, *spatial), (batch_axis,)


def sub_jaxprs(eqn: jex.JaxprEqn) -> list[tuple[str, Any]]:
  """The named nested jaxprs of an equation, ``[(param_name_or_index, jaxpr), ...]``."""
  found = []
  for name, value in eqn.params.items():
    if isinstance(value, (jex.ClosedJaxpr, jex.Jaxpr)):
      found.append((name, value))
    elif isinstance(value, tuple) and value and all(isinstance(v, jex.ClosedJaxpr) for v in value):
      found.extend((f"{name}/{i}", v) for i, v in enumerate(value))
  return found


def _open(j: Any) -> jex.Jaxpr:
  return j.jaxpr if isinstance(j, jex.ClosedJaxpr) else j


def _inner_provs(eqn: jex.JaxprEqn, name: str, provs: list[Any]) -> tuple[list[Any], float | None]:
  """Maps operand provenance into a nested jaxpr: (inner provenance, trip factor)."""
  prim = eqn.primitive.name
  if prim == "scan":
    nc, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    inner = provs[:nc] + [None] * ncarry + provs[nc + ncarry :]
    return inner, eqn.params["length"]
  if prim == "while":
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    if name == "cond_jaxpr":
      return provs[:cn] + [None] * (len(provs) - cn - bn), None
    return provs[cn : cn + bn] + [None] * (len(provs) - cn - bn), None
  if prim == "cond":
    return provs[1:], 1
  return provs, 1


def find_sites(closed: jex.ClosedJaxpr, leaf_paths: list[str], *, include_activations: bool = False) -> list[Site]:
  """Finds the sites of a jaxpr whose first ``len(leaf_paths)`` inputs are param leaves.

  With ``include_activations``, matmuls and convolutions of two activations (attention's
  ``q k^T``) are listed too, with ``path == ''``.
  """
  provs: list[Any] = [_Prov(p, tuple(range(len(aval_shape(v))))) for p, v in zip(leaf_paths, closed.jaxpr.invars)]
  provs += [None] * (len(closed.jaxpr.invars) - len(provs))
  sites: list[Site] = []
  _walk(closed.jaxpr, provs, (), (), 1, sites, include_activations)
  seen: dict[str, int] = {}
  numbered = []
  for s in sites:
    numbered.append(dataclasses.replace(s, occurrence=seen.get(s.path, 0)))
    seen[s.path] = seen.get(s.path, 0) + 1
  return numbered


def _walk(
  jaxpr: jex.Jaxpr,
  in_provs: list[Any],
  where: Location,
  scopes: tuple[str, ...],
  trips: float | None,
  sites: list[Site],
  include_activations: bool,
) -> list[Any]:
  env: dict[Any, Any] = {v: p for v, p in zip(jaxpr.invars, in_provs) if p is not None}
  get = lambda v: None if isinstance(v, jex.Literal) else env.get(v)
  for i, eqn in enumerate(jaxpr.eqns):
    provs = [get(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in SITE_PRIMITIVES:
      operand = 1 if provs[1] is not None else 0 if provs[0] is not None else None
      if operand is not None or include_activations:
        k = 1 if operand is None else operand  # two activations: call the rhs the "weight"
        w, a = eqn.invars[k], eqn.invars[1 - k]
        contracted, features = _weight_axes(name, eqn.params, k, len(aval_shape(w)))
        prov = provs[k]
        sites.append(
          Site(
            path=prov.path if prov is not None else "",
            op=name,
            weight_operand=k,
            contracted_axes=contracted,
            feature_axes=features,
            weight_shape=tuple(aval_shape(w)),
            activation_shape=tuple(aval_shape(a)),
            activation_dtype=aval_dtype(a),
            output_shape=tuple(aval_shape(eqn.outvars[0])),
            in_loop=any(s in ("scan", "while") for s in scopes),
            scopes=scopes,
            trip_count=None if trips is None else int(trips),
            params=dict(eqn.params),
            location=(*where, i),
            leaf_axes=prov.site_axes(features) if prov is not None else None,
          )
        )
    elif name in _PASS_THROUGH and provs and provs[0] is not None:
      env[eqn.outvars[0]] = provs[0].through(eqn)
    else:
      for sub_name, sub in sub_jaxprs(eqn):
        inner, factor = _inner_provs(eqn, sub_name, provs)
        sub_trips = None if trips is None or factor is None else trips * factor
        outs = _walk(_open(sub), inner, (*where, i, sub_name), (*scopes, name), sub_trips, sites, include_activations)
        if name in CALLS:
          env.update({v: p for v, p in zip(eqn.outvars, outs) if p is not None})
  return [get(v) for v in jaxpr.outvars]


def make_jaxpr(
  apply_fn: Callable[..., Any], params: PyTree, *inputs: Any, allow_unused: bool = True
) -> tuple[jex.ClosedJaxpr, list[str], Any]:
  """Traces ``apply_fn(params, *inputs)``; returns the jaxpr, the leaf paths, and the output tree.

  Raises:
    ValueError: if ``apply_fn`` cannot be traced (Python control flow on traced values,
      inputs of the wrong shape, ...), naming the input shapes and the cause; or, unless
      ``allow_unused``, if some param leaves are never used, naming them.
  """
  paths = [p for p, _ in leaves_with_paths(params)]
  try:
    closed, out_shape = jax.make_jaxpr(apply_fn, return_shape=True)(params, *inputs)
  except Exception as e:  # any tracing failure: re-raise with what was being traced
    shapes = [tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(inputs)]
    raise ValueError(
      f"could not trace apply_fn(params, *inputs) with input shapes {shapes}: {type(e).__name__}: {e}"
    ) from e
  if not allow_unused:
    used = {v for eqn in closed.jaxpr.eqns for v in eqn.invars if not isinstance(v, jex.Literal)}
    used |= {v for v in closed.jaxpr.outvars if not isinstance(v, jex.Literal)}
    unused = [p for p, v in zip(paths, closed.jaxpr.invars) if v not in used]
    if unused:
      raise ValueError(f"apply_fn never uses these param leaves: {unused[:20]} (pass only the leaves it reads)")
  return closed, paths, jax.tree.structure(out_shape)


def trace(apply_fn: Callable[..., Any], params: PyTree, *inputs: Any) -> list[Site]:
  """Lists the sites of a model: every matmul/conv fed by a param leaf.

  Args:
    apply_fn: ``apply_fn(params, *inputs) -> outputs``, any JAX function (a Flax NNX
      ``merge``-and-call, a Linen ``module.apply`` with ``{'params': params}``, plain JAX).
    params: the param tree whose leaves are looked for.
    *inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``), used for shapes only.

  Returns:
    The :class:`Site` list in execution order.

  Raises:
    ValueError: if ``apply_fn`` cannot be traced with these inputs, if a param leaf is
      never used, or if no site is found.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'fc': {'kernel': jnp.ones((4, 3)), 'bias': jnp.zeros(3)}}
    >>> sites = trace(lambda p, x: x @ p['fc']['kernel'] + p['fc']['bias'], params, jnp.ones((2, 4)))
    >>> [(s.path, s.op, s.contracted_axes, s.feature_axes) for s in sites]
    [('fc/kernel', 'dot_general', (0,), (1,))]
  """
  closed, paths, _ = make_jaxpr(apply_fn, params, *inputs, allow_unused=False)
  sites = find_sites(closed, paths)
  if not sites:
    raise ValueError(f"no matmul or convolution fed by a param leaf was found; the leaves are {paths[:20]}")
  return sites


def macs(site: Site) -> int:
  """Multiply-accumulates of one execution of a site (padding taps excluded).

  dot_general: output size times the size of the contracted axes. Convolution: output
  size times ``kernel input features x`` the kernel taps that fall inside the input,
  averaged as XLA counts them.
  """
  w = site.weight_shape
  if site.op == "dot_general":
    return math.prod(site.output_shape) * math.prod(w[a] for a in site.contracted_axes)
  return _conv_macs(site)


def _conv_macs(site: Site) -> int:
  p = site.params
  dn = p["dimension_numbers"]
  lhs_shape, rhs_shape = (
    (site.activation_shape, site.weight_shape)
    if site.weight_operand == 1
    else (site.weight_shape, site.activation_shape)
  )
  batch, cin_total = lhs_shape[dn.lhs_spec[0]], lhs_shape[dn.lhs_spec[1]]
  del cin_total
  kernel_in = rhs_shape[dn.rhs_spec[1]]
  cout = rhs_shape[dn.rhs_spec[0]]
  taps = 1
  for k, (lo, _hi) in enumerate(p["padding"]):
    size = lhs_shape[dn.lhs_spec[2 + k]]
    ksize = rhs_shape[dn.rhs_spec[2 + k]]
    out = site.output_shape[dn.out_spec[2 + k]]
    stride = p["window_strides"][k]
    lhs_dil = p["lhs_dilation"][k]
    rhs_dil = p["rhs_dilation"][k]
    dilated = (size - 1) * lhs_dil + 1
    count = 0
    for o in range(out):
      start = o * stride - lo
      for t in range(ksize):
        pos = start + t * rhs_dil
        if 0 <= pos < dilated and pos % lhs_dil == 0:
          count += 1
    taps *= count
  batch_group = p.get("batch_group_count", 1)
  return batch // batch_group * cout * kernel_in * taps


def flops(apply_fn: Callable[..., Any], params: PyTree, *inputs: Any) -> dict[str, Any]:
  """FLOPs of one forward pass on the given inputs (the whole batch), per site and in
  total (2 per multiply-accumulate).

  Sites inside a ``scan`` count once per iteration; inside a ``while`` (unknown trip
  count) they count once and ``'while_sites'`` names them. Matmuls of two activations
  (attention) are counted in the totals under the path ``''``. Elementwise operations
  (bias, activations, normalization) are not counted.

  Args:
    apply_fn, params, inputs: as for :func:`trace` (``inputs`` are its positional ``*inputs``).

  Returns:
    A dict with the keys ``'sites'`` (a list of ``(path, op, macs, flops)``), ``'macs'``
    and ``'flops'`` (the totals) and ``'while_sites'`` (a list of paths).

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'w': jnp.ones((64, 10))}
    >>> flops(lambda p, x: x @ p['w'], params, jnp.ones((8, 64)))['flops']
    10240
  """
  closed, paths, _ = make_jaxpr(apply_fn, params, *inputs, allow_unused=False)
  rows, unknown = [], []
  for s in find_sites(closed, paths, include_activations=True):
    m = macs(s) * (s.trip_count or 1)
    if s.trip_count is None:
      unknown.append(s.path)
    rows.append((s.path, s.op, m, 2 * m))
  total = sum(r[2] for r in rows)
  return {"sites": rows, "macs": total, "flops": 2 * total, "while_sites": unknown}
