"""BatchNorm folding for quantized conv nets (Jacob et al. 2018, §3.2 and Appendix C).

A BatchNorm that follows a conv or Dense, ``γ (conv(x, w) + b - μ) / σ + β`` with
``σ = sqrt(var + ε)``, is the same affine map as ``conv(x, w_fold) + b_fold`` with
``w_fold = w · γ/σ`` (per output channel) and ``b_fold = β + γ (b - μ)/σ``. Folding it is
what lets the served integer net run without a separate BatchNorm, and it is the folded
weights that must be quantized.

*Which BatchNorm follows which conv* comes from the model's computation, not from names:
:func:`find_batchnorms` traces ``apply_fn`` (any JAX function of a nested dict; Flax NNX
and Linen BatchNorm in inference mode) and matches, right after a conv/matmul site, the
inference-mode BatchNorm's equations ``((z [+ b]) - μ) · (rsqrt(var + ε) [· γ]) [+ β]``,
reading the leaves and ``ε`` off the jaxpr. It returns an explicit
``{kernel_path: BatchNormFold}`` mapping, which every other function here takes (write one
by hand for a model the matcher does not recognize).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph import _rewrite
from jaxcompress.graph._trace import SITE_PRIMITIVES, aval_shape, find_sites, make_jaxpr


class BatchNormFold(NamedTuple):
  """One BatchNorm that follows one conv/Dense, by the paths of their leaves.

  Attributes:
    kernel: the conv/Dense kernel's path (output features on its last axis).
    mean: the BatchNorm's running mean ``μ``.
    var: its running variance.
    epsilon: its ``ε`` (``σ = sqrt(var + ε)``), > 0.
    scale: its ``γ`` leaf, or ``None`` (``γ = 1``).
    bias: its ``β`` leaf, or ``None`` (``β = 0``).
    conv_bias: the conv's own bias ``b``, or ``None``.
  """

  kernel: str
  mean: str
  var: str
  epsilon: float
  scale: str | None = None
  bias: str | None = None
  conv_bias: str | None = None


_SHAPE_OPS = frozenset({"reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims", "copy"})


def find_batchnorms(apply_fn: Callable[..., Any], params: PyTree, *inputs: Any) -> dict[str, BatchNormFold]:
  """Finds each inference-mode BatchNorm applied right after a conv/Dense output.

  The jaxpr of ``apply_fn(params, *inputs)`` is walked at its top level (BatchNorms inside
  ``jit``/``scan``/``cond`` bodies are not matched). A per-channel vector is a 1-D leaf of
  the output's channel count seen through shape ops (reshape, broadcast, dtype
  conversion). Starting at a site's output, the chain ``[+ b] - μ``, ``· rsqrt(var + ε)``
  (times ``γ``, either side) and ``[+ β]`` is followed only while each intermediate value
  has exactly one use, so a conv output that also feeds something else (a residual, a
  second branch) is never folded. The channel axis must be the output's last axis
  (Flax's NHWC convs and Dense layers) and the kernel's last axis its output features.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` with BatchNorm in inference mode
      (``use_running_average=True``).
    params: every leaf it reads, running statistics included (NNX: the pure dict of
      ``nnx.split(model)``'s state; Linen: ``{'params': ..., 'batch_stats': ...}``).
    *inputs: example inputs.

  Returns:
    ``{kernel_path: BatchNormFold}``; empty when there is none.

  Raises:
    ValueError: if ``apply_fn`` cannot be traced on ``inputs``.
  """
  closed, paths, _ = make_jaxpr(apply_fn, params, *inputs)
  jaxpr = closed.jaxpr
  leaf_of: dict[Any, str] = dict(zip(jaxpr.invars, paths))
  uses: dict[Any, int] = {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if not isinstance(v, jex.Literal):
        uses[v] = uses.get(v, 0) + 1
  for v in jaxpr.outvars:
    if not isinstance(v, jex.Literal):
      uses[v] = uses.get(v, 0) + 1
  consumer: dict[Any, Any] = {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if not isinstance(v, jex.Literal):
        consumer.setdefault(v, eqn)
  # param-derived expressions: ('leaf', path) through shape ops; ('eps', path, eps);
  # ('inv', path, eps); ('mul', var_path, eps, scale_path)
  expr: dict[Any, Any] = {v: ("leaf", p) for v, p in leaf_of.items()}
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    ins: list[Any] = [None if isinstance(v, jex.Literal) else expr.get(v) for v in eqn.invars]
    out = eqn.outvars[0] if eqn.outvars else None
    if name in _SHAPE_OPS and ins and ins[0] is not None:
      expr[out] = ins[0]
    elif name == "add" and len(ins) == 2:
      for a, b in ((0, 1), (1, 0)):
        lit = eqn.invars[b]
        if ins[a] is not None and ins[a][0] == "leaf" and isinstance(lit, jex.Literal):
          expr[out] = ("eps", ins[a][1], float(np.asarray(lit.val)))
    elif name == "rsqrt" and ins[0] is not None and ins[0][0] == "eps":
      expr[out] = ("inv", ins[0][1], ins[0][2])
    elif name == "mul" and len(ins) == 2:
      for a, b in ((0, 1), (1, 0)):
        if ins[a] is not None and ins[b] is not None and ins[a][0] == "inv" and ins[b][0] == "leaf":
          expr[out] = ("mul", ins[a][1], ins[a][2], ins[b][1])
  found: dict[str, BatchNormFold] = {}
  sites = {s.location: s for s in find_sites(closed, paths) if not s.scopes}

  def vector(v, channels):
    e = None if isinstance(v, jex.Literal) else expr.get(v)
    shape = aval_shape(v)
    if e is None or (shape and (shape[-1] != channels or int(np.prod(shape)) != channels)):
      return None
    return e

  def next_op(v, prim):
    eqn = consumer.get(v)
    if eqn is None or uses.get(v, 0) != 1 or eqn.primitive.name != prim:
      return None, None
    other = [u for u in eqn.invars if u is not v]
    return eqn, (other[0] if other else None)

  def leaf_vector(v, channels):
    e = vector(v, channels)
    return e[1] if e is not None and e[0] == "leaf" and np.shape(leaf_value[e[1]]) == (channels,) else None

  leaf_value = dict(leaves_with_paths(params))
  for i, eqn in enumerate(jaxpr.eqns):
    site = sites.get((i,))
    if site is None or eqn.primitive.name not in SITE_PRIMITIVES:
      continue
    channels = site.output_shape[-1] if site.output_shape else 0
    kernel = leaf_value[site.path]
    if site.leaf_axes is None or np.ndim(kernel) < 1 or np.shape(kernel)[-1] != channels:
      continue
    if len(site.feature_axes) != 1 or site.leaf_axes[site.feature_axes[0]] != np.ndim(kernel) - 1:
      continue
    v = eqn.outvars[0]
    conv_bias = None
    add, other = next_op(v, "add")
    if add is not None and (found_bias := leaf_vector(other, channels)) is not None:
      conv_bias, v = found_bias, add.outvars[0]
    sub, other = next_op(v, "sub")
    if sub is None or sub.invars[0] is not v or (mean := leaf_vector(other, channels)) is None:
      continue
    v = sub.outvars[0]
    mul, other = next_op(v, "mul")
    e = None if mul is None else vector(other, channels)
    if mul is None or e is None or e[0] not in ("inv", "mul"):
      continue
    var, eps, scale = e[1], e[2], (e[3] if e[0] == "mul" else None)
    if np.shape(leaf_value[var]) != (channels,) or not eps > 0:
      continue
    v = mul.outvars[0]
    bias = None
    add, other = next_op(v, "add")
    if add is not None and (beta := leaf_vector(other, channels)) is not None:
      bias = beta
    found[site.path] = BatchNormFold(site.path, mean, var, eps, scale, bias, conv_bias)
  return found


def _get(tree: Mapping, path: str) -> Any:
  node: Any = tree
  for k in path.split("/"):
    node = node[k]
  return node


def _set(tree: dict, path: str, value: Any) -> None:
  *head, last = path.split("/")
  node = tree
  for k in head:
    node = node[k]
  node[last] = value


def _drop(tree: dict, path: str) -> None:
  *head, last = path.split("/")
  nodes = [tree]
  for k in head:
    nodes.append(nodes[-1][k])
  del nodes[-1][last]
  for parent, k, node in zip(reversed(nodes[:-1]), reversed(head), reversed(nodes[1:])):
    if not node:
      del parent[k]


def _copy(tree: Any) -> Any:
  return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def identity_variance(epsilon: float, dtype: Any = jnp.float32) -> np.ndarray:
  """The variance ``v`` with ``v + ε == 1`` exactly in ``dtype``, so ``rsqrt(v + ε) == 1``:
  a BatchNorm with ``γ = 1, μ = 0``, this variance and ``β = 0`` is exactly the identity."""
  dtype = np.dtype(jnp.dtype(dtype))
  eps = dtype.type(epsilon)
  v = dtype.type(1) - eps
  for _ in range(8):
    total = v + eps
    if total == 1:
      return np.asarray(v, dtype)
    v = np.nextafter(v, dtype.type(-np.inf) if total > 1 else dtype.type(np.inf))
  raise ValueError(f"no variance makes var + epsilon == 1 exactly in {dtype} for epsilon={epsilon}")


def _check(params: Mapping, folds: Mapping[str, BatchNormFold]) -> None:
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a nested dict (NNX: state.to_pure_dict()), got {type(params).__name__}")
  if not folds:
    raise ValueError("folds is empty: there is no BatchNorm to fold (find_batchnorms found none?)")
  for key, f in folds.items():
    if not isinstance(f, BatchNormFold) or f.kernel != key:
      raise ValueError(f"folds[{key!r}] must be a BatchNormFold whose kernel is {key!r}, got {f!r}")
    if not (isinstance(f.epsilon, numbers.Real) and np.isfinite(f.epsilon) and f.epsilon > 0):
      raise ValueError(f"folds[{key!r}].epsilon must be finite and > 0, got {f.epsilon!r}")
    try:
      channels = np.shape(_get(params, f.kernel))[-1]
      for path in (f.mean, f.var, f.scale, f.bias, f.conv_bias):
        if path is not None and np.shape(_get(params, path)) != (channels,):
          raise ValueError(f"folds[{key!r}]: {path!r} has shape {np.shape(_get(params, path))}, not ({channels},)")
    except (KeyError, TypeError, IndexError) as e:
      raise ValueError(f"folds[{key!r}] names a path that params does not have: {e}") from None
    if f.bias is None and f.conv_bias is None:
      raise ValueError(f"folds[{key!r}]: neither the conv nor the BatchNorm has a bias leaf to hold the folded bias")


def _check_values(params: Mapping, folds: Mapping[str, BatchNormFold]) -> None:
  """The leaves a post-training fold reads: a floating kernel, finite values, ``var >= 0``."""
  for key, f in folds.items():
    dtype = jnp.result_type(_get(params, f.kernel))
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"folds[{key!r}]: the kernel {f.kernel!r} is {dtype}; BatchNorm folds into floating kernels")
    for path in (f.kernel, f.mean, f.var, f.scale, f.bias, f.conv_bias):
      if path is not None and not np.all(np.isfinite(np.asarray(_get(params, path), np.float64))):
        raise ValueError(f"folds[{key!r}]: {path!r} is not finite (NaN or inf)")
    low = float(np.min(np.asarray(_get(params, f.var), np.float64)))
    if low < 0:
      raise ValueError(f"folds[{key!r}]: the running variance {f.var!r} is negative (min {low:g})")


def _check_folded(out: Mapping, folds: Mapping[str, BatchNormFold]) -> None:
  """Every folded kernel and bias fits its dtype (``γ/σ`` can take a weight past it)."""
  for key, f in folds.items():
    for path in (f.kernel, f.conv_bias if f.conv_bias is not None else f.bias):
      if path is None:  # _check: one of the two biases exists
        continue
      value = np.asarray(_get(out, path))
      if not np.all(np.isfinite(value)):
        raise ValueError(
          f"folds[{key!r}]: folding overflows {value.dtype} at {path!r} (γ/σ or the folded bias exceeds the "
          "dtype's range; a near-zero running variance?): fold in a wider dtype"
        )


def _folded(params: Mapping, f: BatchNormFold, stop: bool) -> tuple[Any, Any]:
  """``(w · γ/σ, β + γ (b - μ)/σ)`` in the kernel's dtype (computed in float32 for half)."""
  sg: Callable[[Any], Any] = jax.lax.stop_gradient if stop else (lambda x: x)
  w = _get(params, f.kernel)
  dt = jnp.promote_types(jnp.result_type(w), jnp.float32)
  get = lambda p, default: jnp.asarray(default, dt) if p is None else jnp.asarray(_get(params, p)).astype(dt)
  gamma, beta, b = get(f.scale, 1.0), get(f.bias, 0.0), get(f.conv_bias, 0.0)
  mean, var = sg(get(f.mean, 0.0)), sg(get(f.var, 1.0))
  m = gamma * jax.lax.rsqrt(var + jnp.asarray(f.epsilon, dt))
  return (jnp.asarray(w).astype(dt) * m).astype(jnp.result_type(w)), (beta + (b - mean) * m)


def _fold_tree(params: Mapping, folds: Mapping[str, BatchNormFold], *, drop: bool, stop: bool) -> dict:
  out = _copy(params)
  for f in folds.values():
    w, bias = _folded(params, f, stop)
    _set(out, f.kernel, w)
    target = f.conv_bias if f.conv_bias is not None else f.bias
    assert target is not None  # _check: one of the two exists
    _set(out, target, bias.astype(jnp.result_type(_get(params, target))))
    bn = [(f.scale, 1.0), (f.mean, 0.0), (f.var, None), (f.bias, 0.0)]
    for path, value in bn:
      if path is None or path == target:
        continue
      old = _get(params, path)
      if drop:
        _drop(out, path)
      else:
        dt = jnp.result_type(old)
        fill = identity_variance(f.epsilon, dt) if value is None else value
        _set(out, path, jnp.full(np.shape(old), fill, dt))
  return out


def fold_batchnorm(params: Mapping, folds: Mapping[str, BatchNormFold], *, drop: bool = False) -> dict:
  """Folds each BatchNorm into the conv/Dense before it (post-training; Jacob et al. 2018, §3.2).

  The kernel becomes ``w · γ/σ`` (per output channel, the last axis) and the bias
  ``β + γ (b - μ)/σ``, computed from the running statistics (``σ = sqrt(var + ε)``), in
  float32 for half-precision leaves. The bias goes to the conv's own bias leaf, or to the
  BatchNorm's ``β`` leaf when the conv has none. Then, with ``drop=False``, the BatchNorm's
  other leaves are set to the exact identity (``γ = 1``, ``μ = 0``, ``β = 0``,
  ``var = identity_variance(ε)``), so the *same* ``apply_fn`` computes the folded model;
  with ``drop=True`` they are removed, for a model of the same layout without the
  BatchNorms (the served net then has no BatchNorm at all; this needs a conv bias).

  Then quantize the folded tree (``ptq``, ``fake_quant``): the folded weights are the
  ones quantized. With per-channel scales on the output axis the result equals quantizing
  ``w`` and applying the BatchNorm after (``Q(w·m) = Q(w)·m`` channel by channel, up to
  float rounding of the scale); with per-tensor scales it does not, as the channels'
  ``γ/σ`` then share one grid.

  Args:
    params: a nested dict holding the kernels, biases and BatchNorm leaves (NNX:
      ``state.to_pure_dict()`` with the ``BatchStat`` leaves; Linen: the whole variables
      dict).
    folds: :func:`find_batchnorms`'s mapping (or one written by hand).
    drop: remove the BatchNorm leaves instead of setting them to the identity.

  Returns:
    A new nested dict (``params`` is not modified).

  Raises:
    TypeError: if ``params`` is not a nested dict, or a kernel is not floating point.
    ValueError: on an empty ``folds``, a path ``params`` does not have, a leaf of the
      wrong shape, ``ε <= 0``, no bias leaf to hold the folded bias, ``drop=True``
      without a conv bias, a leaf that is not finite, a negative running variance, or a
      folded kernel or bias that overflows its dtype (each naming the leaf).

  References:
    Jacob et al. 2018, https://arxiv.org/abs/1712.05877.
  """
  _check(params, folds)
  if drop:
    missing = [k for k, f in folds.items() if f.conv_bias is None]
    if missing:
      raise ValueError(f"drop=True needs a conv bias to hold the folded bias; these kernels have none: {missing}")
  _check_values(params, folds)
  out = _fold_tree(params, folds, drop=drop, stop=False)
  _check_folded(out, folds)
  return out


def batchnorm_statistics(
  apply_fn: Callable[..., Any], params: Mapping, folds: Mapping[str, BatchNormFold], batches: Iterable[Any]
) -> dict:
  """Re-estimates each BatchNorm's running mean and variance as the population statistics of
  its input over ``batches`` (the conv output plus its bias), with the weights in ``params``.

  The mean and the biased variance are accumulated in float64 over every example and
  spatial position of every batch (a "precise" estimate instead of an exponential moving
  average; Jacob et al.'s training graph keeps an EMA of the batch moments, which a
  compressor's ``update`` cannot see, so the running statistics are set by this call).

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: as :func:`fold_batchnorm`.
    folds: the BatchNorms.
    batches: input batches (a batch is an array or a tuple of the inputs).

  Returns:
    A new nested dict with the ``mean`` and ``var`` leaves replaced.

  Raises:
    ValueError: as :func:`fold_batchnorm`, or if ``batches`` is empty.
  """
  _check(params, folds)
  paths = set(folds)
  captured = jax.jit(_rewrite.capture(apply_fn, where=lambda path, site: path in paths))
  sums: dict[str, list[Any]] = {}
  for batch in batches:
    inputs = batch if isinstance(batch, tuple) else (batch,)
    _, records = captured(params, *inputs)
    for key in folds:
      z = np.asarray(records[key]["output"], np.float64)
      z = z.reshape(-1, z.shape[-1])
      acc = sums.setdefault(key, [0, 0.0, 0.0])
      acc[0] += z.shape[0]
      acc[1] = acc[1] + z.sum(0)
      acc[2] = acc[2] + np.square(z).sum(0)
  if not sums:
    raise ValueError("batchnorm_statistics: batches is empty")
  out = _copy(params)
  for key, f in folds.items():
    n, s1, s2 = sums[key]
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    b = 0.0 if f.conv_bias is None else np.asarray(_get(params, f.conv_bias), np.float64)
    _set(out, f.mean, jnp.asarray(mean + b, jnp.result_type(_get(params, f.mean))))
    _set(out, f.var, jnp.asarray(var, jnp.result_type(_get(params, f.var))))
  return out


class FoldState(NamedTuple):
  """State of :func:`batchnorm_fold`: the step count (``update`` advances it)."""

  count: jax.Array


def _batch_moments(apply_fn, params, folds, batches):
  """``{kernel: (mean, var)}`` of each folded BatchNorm's input over ``batches`` (jittable):
  per-batch moments combined exactly (the pooled variance), in float32."""
  paths = set(folds)
  captured = _rewrite.capture(apply_fn, where=lambda path, site: path in paths)
  parts: dict[str, list[tuple[Any, Any, int]]] = {k: [] for k in folds}
  for batch in batches:
    inputs = batch if isinstance(batch, tuple) else (batch,)
    _, records = captured(params, *inputs)
    for key in folds:
      z = records[key]["output"].astype(jnp.float32)
      z = z.reshape(-1, z.shape[-1])
      parts[key].append((z.mean(0), jnp.square(z - z.mean(0)).mean(0), z.shape[0]))
  out = {}
  for key, f in folds.items():
    total = sum(n for _, _, n in parts[key])
    mean = sum(m * n for m, _, n in parts[key]) / total
    var = sum((v + jnp.square(m - mean)) * n for m, v, n in parts[key]) / total
    b = 0.0 if f.conv_bias is None else jnp.asarray(_get(params, f.conv_bias)).astype(jnp.float32)
    out[key] = (mean + b, var)
  return out


def batchnorm_fold(
  folds: Mapping[str, BatchNormFold],
  *,
  freeze_step: int | None = None,
  apply_fn: Callable[..., Any] | None = None,
  batches: Iterable[Any] | None = None,
) -> Compressor:
  """Quantization-aware training of a conv net with its BatchNorms folded (Jacob et al. 2018,
  Appendix C, Figure C.8), as a compressor; put a weight quantizer after it,
  ``chain(batchnorm_fold(folds), fake_quant(8, per_channel=True))``, and the *folded*
  weights are the ones quantized.

  ``apply`` gives the model the folded weights ``w · γ/σ`` (running ``σ``) and bias, with the
  BatchNorm set to the exact identity (as :func:`fold_batchnorm`), so the model's own
  inference-mode graph is the folded net. ``rewrite`` puts the training graph at each
  folded conv: the conv is also run with the float weights ``w`` to get the batch moments
  ``μ_B, σ_B`` of its output (over every axis but the channel), and the output is the conv
  with the (quantized) folded weights times the correction ``c = σ/σ_B``, plus
  ``β - γ μ_B/σ_B``: before quantization this is exactly training-mode BatchNorm,
  ``γ (conv(x, w) - μ_B)/σ_B + β``, while the quantizer sees the weights the served net
  will use (the batch-to-running correction of the paper's folded training graph, as in
  its TensorFlow implementation and Krishnamoorthi 2018, arXiv:1806.08342, §3.2). From
  ``freeze_step`` on (the "freeze BN statistics" switch) the correction is off and the
  running statistics are used: the training graph is then the inference graph. The
  gradient flows through ``μ_B, σ_B`` as in BatchNorm training; the running statistics
  get none (``stop_gradient``).

  Deviation, documented: the running statistics are not updated by an exponential moving
  average of the training batches (``update`` never sees a batch). They are the ones in
  the params (re-estimate them with :func:`batchnorm_statistics` before training) until the
  freeze; given ``apply_fn`` and ``batches``, the ``update`` that reaches ``freeze_step``
  replaces them by the population moments of the float conv outputs over those batches
  with the weights of that step (under a ``lax.cond``, so only that step pays), which is
  what the paper's moving average tracks: statistics of the current weights. ``pack`` stores the folded weights and bias and the
  identity BatchNorm leaves; :func:`fold_batchnorm`-style dropping of those leaves is left
  to the caller (``serve`` a model without the BatchNorms).

  Args:
    folds: :func:`find_batchnorms`'s mapping.
    freeze_step: the step from which the running statistics are used (``None``: never, the
      correction stays on; 0: always, the inference graph).
    apply_fn: ``apply_fn(params, *inputs)``, the model in inference mode, to re-estimate
      the running statistics at the freeze (with ``batches``).
    batches: the input batches of that re-estimate (kept as constants of the step).

  Returns:
    A :class:`~jaxcompress.Compressor` with a :class:`FoldState`.

  Raises:
    ValueError: on a negative ``freeze_step``, ``apply_fn`` without ``batches`` (or the
      reverse), or a re-estimate without a positive ``freeze_step``; at ``init``, as
      :func:`fold_batchnorm`.
  """
  if freeze_step is not None:
    freeze_step = validate.check_int("freeze_step", freeze_step, low=0)
  folds = dict(folds)
  batches = None if batches is None else [b if isinstance(b, tuple) else (b,) for b in batches]
  if (apply_fn is None) != (batches is None):
    raise ValueError("apply_fn and batches go together: pass both to re-estimate the statistics at the freeze")
  if batches is not None and (not batches or not freeze_step):
    raise ValueError(f"a re-estimate needs batches and a freeze_step >= 1, got {len(batches)} batches, {freeze_step=}")

  def init(params, *, masks=None):
    del masks
    _check(params, folds)
    return params, FoldState(jnp.asarray(0, jnp.int32))

  def apply(params, state):
    del state
    return _fold_tree(params, folds, drop=False, stop=True)

  def reestimate(params):
    moments = _batch_moments(apply_fn, params, folds, batches)
    out = _copy(params)
    for key, f in folds.items():
      mean, var = moments[key]
      _set(out, f.mean, jnp.asarray(mean).astype(jnp.result_type(_get(params, f.mean))))
      _set(out, f.var, jnp.asarray(var).astype(jnp.result_type(_get(params, f.var))))
    return out

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    count = state.count + 1
    if batches is not None:
      params = jax.lax.cond(count == freeze_step, reestimate, lambda p: _copy(p), params)
    return params, state._replace(count=count)

  def pack(params, state):
    return jax.tree.map(np.asarray, apply(params, state))

  def rewrite(fn, params, state):
    correcting = jnp.asarray(True) if freeze_step is None else state.count < freeze_step

    def rule(site, activation, weight):
      f = folds[site.path]
      y = site.compute(activation, weight)
      w = jnp.asarray(_get(params, f.kernel))
      dt = jnp.promote_types(y.dtype, jnp.float32)
      get = lambda p, default: jnp.asarray(default, dt) if p is None else jnp.asarray(_get(params, p)).astype(dt)
      gamma, beta, b = get(f.scale, 1.0), get(f.bias, 0.0), get(f.conv_bias, 0.0)
      mean, var = jax.lax.stop_gradient(get(f.mean, 0.0)), jax.lax.stop_gradient(get(f.var, 1.0))
      eps = jnp.asarray(f.epsilon, dt)
      z = site.compute(activation, w.astype(weight.dtype)).astype(dt)
      axes = tuple(range(z.ndim - 1))
      mean_b = jnp.mean(z, axis=axes)
      var_b = jnp.mean(jnp.square(z - mean_b), axis=axes)
      sigma_b, sigma = jnp.sqrt(var_b + eps), jnp.sqrt(var + eps)
      folded_bias = beta + (b - mean) * gamma / sigma  # what the model adds after this op
      trained = y.astype(dt) * (sigma / sigma_b) + (beta - gamma * mean_b / sigma_b) - folded_bias
      return jnp.where(correcting, trained, y.astype(dt)).astype(y.dtype)

    return _rewrite.rewrite(fn, rule, where=lambda path, site: path in folds and not site.scopes)

  return Compressor(init, apply, update, pack, rewrite=rewrite)


def strip_batchnorm(tree: Mapping, folds: Mapping[str, BatchNormFold]) -> dict:
  """Removes the BatchNorm leaves of a folded tree (:func:`fold_batchnorm`'s with
  ``drop=False``, or a packed ``batchnorm_fold`` chain's), keeping the conv bias that holds
  the folded bias, for a model of the same layout without the BatchNorms: the served net
  then has no BatchNorm at all.

  Args:
    tree: a nested dict (compressed leaves allowed).
    folds: the BatchNorms that were folded.

  Returns:
    A new nested dict without the BatchNorm leaves.

  Raises:
    ValueError: if a BatchNorm's ``β`` holds the folded bias (its conv has no bias leaf).
  """
  missing = [k for k, f in folds.items() if f.conv_bias is None]
  if missing:
    raise ValueError(f"these kernels have no conv bias, so their BatchNorm bias holds the folded bias: {missing}")
  out = _copy(tree)
  for f in folds.values():
    for path in (f.scale, f.mean, f.var, f.bias):
      if path is not None:
        _drop(out, path)
  return out
