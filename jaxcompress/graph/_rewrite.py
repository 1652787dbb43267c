"""Re-evaluating a model's jaxpr with a substitution at chosen sites.

The evaluator binds every equation's primitive again, so an identity rule reproduces the
original computation bit for bit, and the result is an ordinary JAX function: it works
under ``jit``, ``grad`` and ``vmap``. Nested calls that contain a selected site are
rebuilt with the matching high-level construct (``lax.scan``, ``lax.while_loop``,
``lax.switch``, ``jax.checkpoint``) around a re-evaluated body; ``jit`` calls are inlined.
A selected site inside a ``custom_jvp``/``custom_vjp`` function is evaluated through
the function's primal, so autodiff replaces that function's custom derivative rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from jaxcompress.core import select
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph._trace import CONTROL_FLOW, Location, Site, find_sites, make_jaxpr, sub_jaxprs

Rule = Callable[[Site, jax.Array, jax.Array], jax.Array]


def _read(env: dict[Any, Any], v: Any) -> Any:
  return v.val if isinstance(v, jex.Literal) else env[v]


def _bind(eqn: jex.JaxprEqn, invals: list[Any]) -> list[Any]:
  """Binds an equation's primitive again, as ``jax.core.eval_jaxpr`` does."""
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  subfuns: tuple[Any, ...] = ()
  if isinstance(bind_params, tuple):  # older JAX returns (subfuns, params)
    subfuns, bind_params = bind_params
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
  return out if eqn.primitive.multiple_results else [out]


def _checked(site: Site, out: Any, aval: Any) -> Any:
  shape, dtype = tuple(getattr(out, "shape", ())), getattr(out, "dtype", None)
  if shape != tuple(aval.shape) or dtype != aval.dtype:
    raise ValueError(
      f"the rule returned {dtype}{list(shape)} at site {site.path!r} ({site.op}), "
      f"which computes {aval.dtype}{list(aval.shape)}"
    )
  return out


class _Evaluator:
  """Evaluates a jaxpr, replacing the selected sites' results by ``rule``'s."""

  def __init__(self, sites: dict[Location, Site], rule: Rule, *, keep_remat: bool = True):
    self.sites = sites
    self.rule = rule
    self.keep_remat = keep_remat

  def _has_site_under(self, prefix: Location) -> bool:
    n = len(prefix)
    return any(loc[:n] == prefix for loc in self.sites)

  def run(self, jaxpr: jex.Jaxpr, consts: list[Any], args: list[Any], where: Location) -> list[Any]:
    env: dict[Any, Any] = {}
    for v, x in zip(jaxpr.constvars, consts):
      env[v] = x
    for v, x in zip(jaxpr.invars, args):
      env[v] = x
    for i, eqn in enumerate(jaxpr.eqns):
      invals = [_read(env, v) for v in eqn.invars]
      loc = (*where, i)
      if loc in self.sites:
        site = self.sites[loc]
        weight, activation = invals[site.weight_operand], invals[1 - site.weight_operand]
        outs = [_checked(site, self.rule(site, activation, weight), eqn.outvars[0].aval)]
      elif self._has_site_under(loc):
        outs = self._nested(eqn, invals, loc)
      else:
        outs = _bind(eqn, invals)
      for v, x in zip(eqn.outvars, outs):
        env[v] = x
    return [_read(env, v) for v in jaxpr.outvars]

  def _closed(self, closed: Any, where: Location) -> Callable[..., list[Any]]:
    jaxpr = closed.jaxpr if isinstance(closed, jex.ClosedJaxpr) else closed
    consts = list(closed.consts) if isinstance(closed, jex.ClosedJaxpr) else []
    return lambda *args: self.run(jaxpr, consts, list(args), where)

  def _nested(self, eqn: jex.JaxprEqn, invals: list[Any], loc: Location) -> list[Any]:
    name, p = eqn.primitive.name, eqn.params
    if name == "scan":
      body = self._closed(p["jaxpr"], (*loc, "jaxpr"))
      nc, ncarry = p["num_consts"], p["num_carry"]
      consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

      def step(carry, x):
        outs = body(*consts, *carry, *x)
        return outs[:ncarry], outs[ncarry:]

      carry, ys = jax.lax.scan(step, init, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
      return [*carry, *ys]
    if name == "while":
      cn, bn = p["cond_nconsts"], p["body_nconsts"]
      cond = self._closed(p["cond_jaxpr"], (*loc, "cond_jaxpr"))
      body = self._closed(p["body_jaxpr"], (*loc, "body_jaxpr"))
      cconsts, bconsts, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
      return list(jax.lax.while_loop(lambda c: cond(*cconsts, *c)[0], lambda c: tuple(body(*bconsts, *c)), tuple(init)))
    if name == "cond":
      branches = [self._closed(b, (*loc, f"branches/{k}")) for k, b in enumerate(p["branches"])]
      return list(jax.lax.switch(invals[0], [lambda *a, f=f: tuple(f(*a)) for f in branches], *invals[1:]))
    (sub_name, sub), *_ = sub_jaxprs(eqn)
    fn = self._closed(sub, (*loc, sub_name))
    if name in ("remat2", "checkpoint") and self.keep_remat:
      fn = jax.checkpoint(fn, prevent_cse=p.get("prevent_cse", True), policy=p.get("policy"))
    return list(fn(*invals))


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def split_static(tree: PyTree) -> tuple[list[Any], Callable[[list[Any]], PyTree]]:
  """Separates the array leaves of ``tree`` from its other leaves (Python bools, strings, ints).

  Returns:
    ``(arrays, fill)``: the array leaves in order, and ``fill(arrays) -> tree`` that puts
    arrays (or tracers of them) back beside the other leaves, which are kept as they are
    (so ``train=True`` stays a Python ``bool`` while the function is traced).
  """
  leaves, treedef = jax.tree.flatten(tree)
  where = [i for i, x in enumerate(leaves) if _is_array(x)]

  def fill(arrays: list[Any]) -> PyTree:
    out = list(leaves)
    for i, a in zip(where, arrays):
      out[i] = a
    return jax.tree.unflatten(treedef, out)

  return [leaves[i] for i in where], fill


def _select_sites(sites: list[Site], where: select.Where) -> dict[Location, Site]:
  pred = (lambda path, site: True) if where is None else select.as_predicate(where)
  return {s.location: s for s in sites if pred(s.path, s)}


def rewrite(apply_fn: Callable[..., Any], rule: Rule, *, where: select.Where = None) -> Callable[..., Any]:
  """Returns ``apply_fn`` with each selected site's result computed by ``rule``.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``, as for :func:`~jaxcompress.graph.trace`.
    rule: ``rule(site, activation, weight) -> output``; ``site.compute(activation,
      weight)`` is the original op. The output must have the op's shape and dtype.
    where: which sites, by the weight's path: a regex, a predicate ``(path, site)``
      or ``None`` for all.

  Returns:
    A function with ``apply_fn``'s signature and outputs, keyword arguments included. It
    traces ``apply_fn`` on each call (once per shape under ``jit``); arguments that are not
    arrays (``train=False``, ``mutable=['batch_stats']``) are passed through as Python
    values, not traced, so one rewritten function honours a model's train/eval flag.

  Raises:
    ValueError: at call time, if ``where`` selects no site.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'w': jnp.ones((3, 2))}
    >>> double = rewrite(lambda p, x: x @ p['w'], lambda site, a, w: 2 * site.compute(a, w))
    >>> double(params, jnp.ones((1, 3))).tolist()
    [[6.0, 6.0]]
  """

  def rewritten(params: PyTree, *inputs: Any, **kwargs: Any) -> Any:
    # Non-array arguments (a ``train`` flag, ``mutable=['batch_stats']``) stay Python values,
    # so one rewritten function serves a model's training and evaluation modes.
    arrays, fill = split_static((inputs, kwargs))

    def fn(p, a):
      i, k = fill(a)
      return apply_fn(p, *i, **k)

    closed, paths, out_tree = make_jaxpr(fn, params, arrays)
    sites = _select_sites(find_sites(closed, paths), where)
    if not sites:
      raise ValueError(f"where={where!r} selects no site of this model (param leaves: {paths[:20]})")
    args = jax.tree.leaves((params, arrays))
    outs = _Evaluator(sites, rule).run(closed.jaxpr, list(closed.consts), args, ())
    return jax.tree.unflatten(out_tree, outs)

  return rewritten


def capture(apply_fn: Callable[..., Any], *, where: select.Where = None) -> Callable[..., tuple[Any, dict[str, Any]]]:
  """Returns a function that also outputs the inputs and outputs of the selected sites.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    where: which sites, as for :func:`rewrite`.

  Returns:
    ``fn(params, *inputs) -> (outputs, captured)`` where ``captured[site.key]`` is
    ``{'input': activation, 'output': result}`` (the key is the weight's path, with
    ``#k`` for its second and later uses). Pure: it works under ``jit``. Sites
    inside ``scan``, ``while`` and ``cond`` bodies are not captured (their values live
    inside the loop or branch); sites inside ``jit``, ``remat`` and custom-derivative
    functions are.

  Raises:
    ValueError: if ``where`` selects no site outside loop bodies.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'w': jnp.ones((3, 2))}
    >>> out, cap = capture(lambda p, x: x @ p['w'])(params, jnp.ones((1, 3)))
    >>> cap['w']['output'].tolist()
    [[3.0, 3.0]]
  """

  def captured_fn(params: PyTree, *inputs: Any) -> tuple[Any, dict[str, Any]]:
    closed, paths, out_tree = make_jaxpr(apply_fn, params, *inputs)
    sites = {
      k: s for k, s in _select_sites(find_sites(closed, paths), where).items() if not CONTROL_FLOW & set(s.scopes)
    }
    if not sites:
      raise ValueError(f"where={where!r} selects no site outside loops and branches (param leaves: {paths[:20]})")
    records: dict[str, dict[str, Any]] = {}

    def record(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      out = site.compute(activation, weight)
      records[site.key] = {"input": activation, "output": out}
      return out

    args = jax.tree.leaves((params, *inputs))
    outs = _Evaluator(sites, record, keep_remat=False).run(closed.jaxpr, list(closed.consts), args, ())
    return jax.tree.unflatten(out_tree, outs), records

  return captured_fn


def sown(collection: PyTree) -> dict[str, Any]:
  """Flattens a framework's collection of sown intermediates into ``{path: value}``.

  Flax Linen returns them from ``module.apply(..., mutable=['intermediates'])`` and
  Flax NNX from ``nnx.capture(model, nnx.Intermediate)(x)``; ``sow`` stores a tuple
  per name, whose entries get paths ``'.../name/0'``, ``'.../name/1'``.

  Args:
    collection: the sown collection (any pytree).

  Returns:
    A dict from path string to array, in flattening order.

  Example:
    >>> import jax.numpy as jnp
    >>> sown({'block': {'features': (jnp.ones(2),)}})
    {'block/features/0': Array([1., 1.], dtype=float32)}
  """
  return dict(leaves_with_paths(collection))
