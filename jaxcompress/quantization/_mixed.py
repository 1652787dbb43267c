"""Mixed precision chosen automatically: HAWQ-v2's Hessian-trace sensitivity, a measured-loss
sensitivity, and the exact bit allocation under a byte budget (a multiple-choice knapsack).

Dong et al. 2020, "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
https://arxiv.org/abs/1911.03852.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, leaves_with_paths, map_with_path
from jaxcompress.quantization import uniform
from jaxcompress.quantization._fake_quant import weight_spec


def _selected_paths(params: PyTree, where: select.Where) -> list[str]:
  rows = select.explain(where, params)  # raises when nothing is selected
  return [path for path, _, chosen in rows if chosen]


def _check_batch(who: str, batch: Any) -> tuple[Any, ...]:
  """``batch`` as the tuple of arguments after ``params``; an array is refused (it would be
  unpacked row by row)."""
  if not isinstance(batch, (tuple, list)):
    shape = getattr(batch, "shape", None)
    raise TypeError(
      f"{who}: batch must be a tuple (or list) of the arguments after params, such as (x, labels), got "
      f"{type(batch).__name__}" + (f" of shape {tuple(shape)}: pass (x,)" if shape is not None else "")
    )
  return tuple(batch)


def _scalar_loss(who: str, value: Any) -> float:
  shape = tuple(np.shape(value))
  if shape not in ((), (1,)):
    raise ValueError(f"{who}: loss_fn must return a scalar, got an array of shape {shape}")
  return float(np.reshape(np.asarray(value), ()))


def hessian_trace(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  batch: Sequence[Any],
  key: jax.Array,
  samples: int = 64,
  *,
  where: select.Where = None,
) -> dict[str, float]:
  """The average Hessian trace of each selected leaf, by Hutchinson's estimator.

  For Rademacher vectors ``v`` (independent ±1 entries over all selected leaves at once),
  ``Hv`` is one Hessian-vector product, forward-over-reverse (``jax.jvp`` of
  ``jax.grad``; the Hessian is never formed), and ``v_l · (Hv)_l`` is an unbiased
  estimate of the trace of leaf ``l``'s diagonal Hessian block (the cross terms have
  zero mean because the leaves' ``v`` are independent). The estimate is averaged over
  ``samples`` vectors and divided by the leaf's number of parameters: HAWQ-v2's
  ``Tr(H_l) / n_l``.

  *Negative estimates* (the Hessian is not positive semi-definite away from a minimum,
  or the estimate is noisy) are clamped at 0 with a warning naming the leaves: in the
  second-order model ``ΔL ≈ Tr(H_l)/n_l · ‖Q(W_l) - W_l‖² / 2`` a layer of non-positive
  curvature cannot lose loss to quantization noise, so its sensitivity is 0 (the
  allocation then gives it the fewest bits); ``|trace|`` would instead rank negative
  curvature as sensitive, which the model does not say.

  Args:
    loss_fn: ``loss_fn(params, *batch) -> scalar``.
    params: the trained params (a pytree of float arrays).
    batch: the arguments after ``params`` (for example ``(x, labels)``).
    key: a ``jax.random`` key.
    samples: Rademacher vectors to average (HAWQ-v2 iterates until the estimate settles;
      its curves settle within a few hundred).
    where: which leaves (default: floating leaves with ``ndim >= 2``); the others get
      ``v = 0``.

  Returns:
    ``{path: Tr(H_l) / n_l}`` as Python floats, each ``>= 0``.

  Raises:
    ValueError: on ``samples < 1``, a ``where`` that selects nothing, or a loss that is
      not a finite scalar at ``params``.
    TypeError: if ``batch`` is not a tuple or list (an array would be unpacked by rows).
  """
  samples = validate.check_int("samples", samples, low=1)
  batch = _check_batch("hessian_trace", batch)
  paths = set(_selected_paths(params, where))

  def mask_of(path, leaf):
    return path in paths

  selected = map_with_path(mask_of, params)
  grad = jax.grad(lambda p: loss_fn(p, *batch))

  @jax.jit
  def estimate(params, key):
    def one(total, k):
      flat, treedef = jax.tree.flatten(params)
      keys = jax.random.split(k, len(flat))
      chosen = treedef.flatten_up_to(selected)
      vs = [
        jax.random.rademacher(kk, x.shape, dtype=x.dtype) if c else jnp.zeros_like(x)
        for kk, x, c in zip(keys, flat, chosen)
      ]
      v = treedef.unflatten(vs)
      _, hv = jax.jvp(grad, (params,), (v,))
      dots = [jnp.vdot(a, b).astype(jnp.float32) for a, b in zip(vs, treedef.flatten_up_to(hv))]
      return [t + d for t, d in zip(total, dots)], None

    n = len(jax.tree.leaves(params))
    total, _ = jax.lax.scan(one, [jnp.zeros((), jnp.float32)] * n, jax.random.split(key, samples))
    return total

  loss = _scalar_loss("hessian_trace", loss_fn(params, *batch))
  if not np.isfinite(loss):
    raise ValueError(f"hessian_trace: the loss at params is {loss}, not finite")
  totals = [float(t) for t in estimate(params, key)]
  out, negative = {}, []
  for (path, leaf), total in zip(leaves_with_paths(params), totals):
    if path not in paths:
      continue
    value = total / samples / max(1, int(np.size(leaf)))
    if not np.isfinite(value):
      raise ValueError(f"hessian_trace: the estimate for {path!r} is {value} (overflow in the Hessian-vector product)")
    if value < 0:
      negative.append(f"{path} ({value:.3g})")
      value = 0.0
    out[path] = value
  if negative:
    warnings.warn(
      "hessian_trace: negative trace estimates clamped at 0 (the Hessian is not PSD there, or more samples are "
      f"needed): {', '.join(negative)}",
      stacklevel=2,
    )
  return out


def _specs(candidates, per_channel, symmetric, axis, group_size, group_axis):
  """``{bits: QuantSpec}`` of each candidate bit-width, as ``fake_quant`` would build it."""
  kw = dict(symmetric=symmetric, per_channel=per_channel, axis=axis, group_size=group_size, group_axis=group_axis)
  specs = {b: weight_spec(b, **kw) for b in candidates}
  if not specs:
    raise ValueError("candidates must hold at least one bit-width, got an empty sequence")
  return specs


@functools.partial(jax.jit, static_argnums=0)
def _quantized(spec, w):
  x = uniform.upcast(w)
  scale, zero_point = spec.params(x)
  return spec.fake_quant(x, scale, zero_point)


@functools.partial(jax.jit, static_argnums=0)
def _error(spec, w):
  x = uniform.upcast(w)
  return jnp.sum(jnp.square(_quantized(spec, x) - x))


@functools.partial(jax.jit, static_argnums=0)
def _codes(spec, w):
  x = uniform.upcast(w)
  scale, zero_point = spec.params(x)
  return x, scale, zero_point


def quantization_perturbation(
  params: PyTree,
  candidates: Sequence[int],
  *,
  where: select.Where = None,
  per_channel: bool = True,
  symmetric: bool = True,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
) -> dict[str, dict[int, float]]:
  """``‖Q_b(W_l) - W_l‖²`` of each selected leaf at each candidate bit-width.

  ``Q_b`` is :func:`~jaxcompress.quantization.fake_quant`'s quantizer with the same
  arguments, so the perturbation is the one that compressor applies.

  Returns:
    ``{path: {bits: squared L2 error}}`` (Python floats, computed in float32).

  Raises:
    ValueError: on bad bits or granularity, or a ``where`` that selects nothing.
  """
  specs = _specs(candidates, per_channel, symmetric, axis, group_size, group_axis)
  paths = set(_selected_paths(params, where))
  out = {}
  for path, w in leaves_with_paths(params):
    if path in paths:
      out[path] = {b: float(_error(s, jnp.asarray(w))) for b, s in specs.items()}
  return out


def hawq_sensitivity(traces: Mapping[str, float], perturbations: Mapping[str, Mapping[int, float]]) -> dict:
  """HAWQ-v2's sensitivity ``Ω_l(b) = Tr(H_l)/n_l · ‖Q_b(W_l) - W_l‖²``.

  Args:
    traces: :func:`hessian_trace`'s ``{path: Tr(H_l)/n_l}``.
    perturbations: :func:`quantization_perturbation`'s ``{path: {bits: ‖Q_b(W) - W‖²}}``.

  Returns:
    ``{path: {bits: Ω}}``, the cost :func:`allocate_bits` minimizes.

  Raises:
    ValueError: if the two name different leaves, or a trace is negative or not finite.
  """
  if set(traces) != set(perturbations):
    raise ValueError(f"traces name {sorted(traces)} but perturbations name {sorted(perturbations)}")
  for path, t in traces.items():
    if not (np.isfinite(t) and t >= 0):
      raise ValueError(f"traces[{path!r}] must be finite and >= 0 (hessian_trace clamps), got {t}")
  return {
    path: {b: float(traces[path]) * float(e) for b, e in per_bits.items()} for path, per_bits in perturbations.items()
  }


def loss_sensitivity(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  batch: Sequence[Any],
  candidates: Sequence[int],
  *,
  where: select.Where = None,
  per_channel: bool = True,
  symmetric: bool = True,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
) -> dict[str, dict[int, float]]:
  """The measured-loss criterion: the loss increase on ``batch`` when only leaf ``l`` is
  quantized to ``b`` bits (the others float), ``L(W with Q_b(W_l)) - L(W)``.

  It is the quantity the Hessian criterion approximates to second order, measured
  directly (one forward pass per leaf and bit-width). A negative increase (quantization
  noise that happens to lower the loss on this batch) is kept as measured: the allocation
  minimizes the sum, so such a layer is simply cheap.

  Returns:
    ``{path: {bits: loss increase}}`` as Python floats.

  Raises:
    ValueError: on bad bits or granularity, a ``where`` that selects nothing, or a loss that
      is not a finite scalar.
    TypeError: if ``batch`` is not a tuple or list.
  """
  specs = _specs(candidates, per_channel, symmetric, axis, group_size, group_axis)
  paths = _selected_paths(params, where)
  batch = _check_batch("loss_sensitivity", batch)
  loss = jax.jit(lambda p: loss_fn(p, *batch))
  base = _scalar_loss("loss_sensitivity", loss(params))
  if not np.isfinite(base):
    raise ValueError(f"loss_sensitivity: the loss at params is {base}, not finite")
  out: dict[str, dict[int, float]] = {}
  for target in paths:
    out[target] = {}
    for b, spec in specs.items():
      moved = map_with_path(
        lambda path, w, spec=spec, target=target: _quantized(spec, w).astype(w.dtype) if path == target else w,
        params,
      )
      value = float(loss(moved)) - base
      if not np.isfinite(value):
        raise ValueError(f"loss_sensitivity: the loss with {target!r} at {b} bits is not finite")
      out[target][b] = value
  return out


def leaf_bytes(
  params: PyTree,
  candidates: Sequence[int],
  *,
  where: select.Where = None,
  per_channel: bool = True,
  symmetric: bool = True,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
) -> dict[str, dict[int, int]]:
  """The exact packed bytes of each selected leaf at each candidate bit-width: the
  ``nbytes`` of the :class:`~jaxcompress.export.QArray` that ``fake_quant`` packs (codes
  and scales), computed by packing.

  Returns:
    ``{path: {bits: bytes}}``.
  """
  specs = _specs(candidates, per_channel, symmetric, axis, group_size, group_axis)
  paths = set(_selected_paths(params, where))
  out = {}
  for path, w in leaves_with_paths(params):
    if path in paths:
      out[path] = {}
      for b, spec in specs.items():
        spec.granularity.check(tuple(np.shape(w)), f"leaf {path!r}")
        x, scale, zero_point = _codes(spec, jnp.asarray(w))
        out[path][b] = int(spec.pack(x, scale, zero_point, dtype=jnp.asarray(w).dtype).nbytes)
  return out


def allocate_bits(
  sensitivity: Mapping[str, Mapping[int, float]],
  sizes: Mapping[str, Mapping[int, int]],
  budget_bytes: int,
  *,
  granularity: int = 1,
) -> dict[str, int]:
  """The bit-width of each layer that minimizes the total sensitivity under a byte budget,
  solved exactly.

  This is a multiple-choice knapsack: choose one bit-width ``b_l`` per layer to minimize
  ``Σ_l sensitivity[l][b_l]`` subject to ``Σ_l sizes[l][b_l] <= budget_bytes``. It is
  solved by dynamic programming over the bytes used, in units of ``granularity`` bytes:
  each size is rounded *up* to whole units and the budget down, so the chosen allocation
  never exceeds the budget; with ``granularity=1`` (the default) the units are bytes and
  the solution is the exact optimum. A larger ``granularity`` trades exactness near the
  budget for time ``O(layers · candidates · budget / granularity)`` (the optimum among
  allocations whose rounded sizes fit). Ties go to the allocation with fewer bytes, then
  to the earlier candidate in each layer's order.

  Args:
    sensitivity: ``{path: {bits: cost}}`` (:func:`hawq_sensitivity` or
      :func:`loss_sensitivity`); costs must be finite.
    sizes: ``{path: {bits: bytes}}`` for the same paths and bits (:func:`leaf_bytes`).
    budget_bytes: the total bytes the chosen layers may take.
    granularity: the byte unit of the dynamic program (>= 1).

  Returns:
    ``{path: bits}``, ready for ``fake_quant(bits=...)``.

  Raises:
    ValueError: if the two mappings name different layers or bits, a bit-width is not an
      integer, a cost is not finite, a size is negative, ``granularity < 1``,
      ``budget_bytes`` is not an integer, or it is below the smallest possible total (the
      message gives both). A budget above the largest total costs no more than that total.
  """
  granularity = validate.check_int("granularity", granularity, low=1)
  budget_bytes = validate.check_int("budget_bytes", budget_bytes)
  if set(sensitivity) != set(sizes):
    raise ValueError(f"sensitivity names {sorted(sensitivity)} but sizes names {sorted(sizes)}")
  if not sensitivity:
    raise ValueError("sensitivity is empty: there is no layer to allocate bits to")
  paths = list(sensitivity)
  options = []
  for path in paths:
    bits = list(sensitivity[path])
    if set(bits) != set(sizes[path]) or not bits:
      raise ValueError(f"layer {path!r}: sensitivity has bits {bits} but sizes has {list(sizes[path])}")
    if not all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in bits):
      raise ValueError(f"layer {path!r}: the bit-widths must be integers, got {bits}")
    costs = np.array([float(sensitivity[path][b]) for b in bits])
    if not np.all(np.isfinite(costs)):
      raise ValueError(f"layer {path!r}: the sensitivities {costs.tolist()} are not all finite")
    nbytes = np.array([int(sizes[path][b]) for b in bits])
    if np.any(nbytes < 0):
      raise ValueError(f"layer {path!r}: negative sizes {nbytes.tolist()}")
    options.append((bits, costs, nbytes))
  smallest = sum(int(n.min()) for _, _, n in options)
  if budget_bytes < smallest:
    raise ValueError(
      f"budget_bytes={budget_bytes} is below the smallest possible total, {smallest} bytes (every layer at its "
      "smallest candidate)"
    )
  # A budget past the largest total allows every allocation: cap it there, so the table is
  # no larger than the layers can fill (a budget of 10**12 bytes would not fit in memory).
  units = [-(-n // granularity) for _, _, n in options]
  capacity = min(budget_bytes // granularity, sum(int(u.max()) for u in units))
  # best[c] = the least total cost of the layers so far using exactly c units (inf: unreachable)
  best = np.full(capacity + 1, np.inf)
  best[0] = 0.0
  choices = []
  for (_, costs, _), u in zip(options, units):
    new = np.full(capacity + 1, np.inf)
    pick = np.full(capacity + 1, -1, np.int64)
    for j in range(len(costs)):
      if u[j] > capacity:
        continue
      shifted = np.full(capacity + 1, np.inf)
      shifted[u[j] :] = best[: capacity + 1 - u[j]] + costs[j]
      better = shifted < new
      new = np.where(better, shifted, new)
      pick = np.where(better, j, pick)
    best = new
    choices.append(pick)
  if not np.isfinite(best).any():  # only when rounding up to units overflows the budget
    raise ValueError(
      f"budget_bytes={budget_bytes} holds no allocation at granularity={granularity} (sizes rounded up to units); "
      f"the smallest total is {smallest} bytes: use granularity=1"
    )
  c = int(np.argmin(best))  # the first minimum: the fewest bytes among the cheapest
  out = {}
  for path, (bits, _, _), u, pick in reversed(list(zip(paths, options, units, choices))):
    j = int(pick[c])
    out[path] = int(bits[j])
    c -= int(u[j])
  return {path: out[path] for path in paths}


def choose_bits(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  batch: Sequence[Any],
  budget_bytes: int,
  *,
  candidates: Sequence[int] = (2, 3, 4, 8),
  criterion: str = "hessian",
  key: jax.Array | None = None,
  samples: int = 64,
  where: select.Where = None,
  per_channel: bool = True,
  symmetric: bool = True,
  granularity: int = 1,
) -> dict[str, int]:
  """Per-layer bit-widths under a byte budget, in one call: the sensitivity (HAWQ-v2's
  ``criterion='hessian'``, :func:`hessian_trace` × :func:`quantization_perturbation`, or
  the measured ``criterion='loss'``, :func:`loss_sensitivity`), the exact packed sizes
  (:func:`leaf_bytes`) and :func:`allocate_bits`. ``fake_quant(choose_bits(...),
  per_channel=per_channel, symmetric=symmetric)`` is the compressor of the allocation
  (fine-tune under it as QAT).

  Args:
    loss_fn, params, batch: as :func:`hessian_trace`.
    budget_bytes: the total packed bytes of the selected leaves.
    candidates: the bit-widths each layer may take.
    criterion: ``'hessian'`` or ``'loss'``.
    key: the Hutchinson key (``'hessian'``; default ``PRNGKey(0)``).
    samples: Hutchinson samples.
    where, per_channel, symmetric: the quantizer, as ``fake_quant``.
    granularity: :func:`allocate_bits`'s byte unit.

  Returns:
    ``{path: bits}``.

  Raises:
    ValueError: as the functions it calls, or an unknown ``criterion``.
  """
  validate.check_choice("criterion", criterion, ("hessian", "loss"))
  spec = dict(where=where, per_channel=per_channel, symmetric=symmetric)
  if criterion == "hessian":
    key = jax.random.PRNGKey(0) if key is None else key
    traces = hessian_trace(loss_fn, params, batch, key, samples, where=where)
    cost = hawq_sensitivity(traces, quantization_perturbation(params, candidates, **spec))
  else:
    cost = loss_sensitivity(loss_fn, params, batch, candidates, **spec)
  return allocate_bits(cost, leaf_bytes(params, candidates, **spec), budget_bytes, granularity=granularity)
