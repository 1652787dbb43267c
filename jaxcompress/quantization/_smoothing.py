"""Per-input-channel smoothing shared by SmoothQuant and AWQ: plan, fold, explicit scales.

Both methods replace a Dense layer ``y = x @ W`` by ``y = (x / s) @ (diag(s) W)``, the same
function, with a per-input-channel ``s`` chosen so that the scaled pair quantizes better.
The division of ``x`` by ``s`` is *folded* into the op that produces ``x`` when there is
one that feeds only these consumers (the LayerNorm before q, k, v in a pre-LN transformer:
its scale and bias; a Dense layer: its output columns and bias), or else done by an
explicit per-channel multiply on the input, inserted with :func:`~jaxcompress.graph.rewrite`
(:func:`scaled_apply`), whose multipliers are stored with the model.

The library cannot see which op produces an input from the params alone, so the caller
names it: ``producers = {consumer_kernel_path: producer}``, where ``producer`` is a param
path or a tuple of paths (``('ln/scale', 'ln/bias')``, ``('v/kernel', 'v/bias')``) of
leaves whose trailing axes index the consumer's input features; each is divided by ``s``
along them. Consumers that name the same producer (q, k and v after one LayerNorm) share
one ``s``, computed from their joint statistics. A producer's output must feed nothing
but its consumers: in a post-LN BERT every LayerNorm's output is also the residual stream,
so folding into it changes the model (``verify`` catches that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core.tree import PyTree, leaves_with_paths, map_with_path
from jaxcompress.graph._dense import dense_layout
from jaxcompress.graph._inputs import DenseInputs
from jaxcompress.quantization._spec import QuantSpec

Producers = Mapping[str, "str | tuple[str, ...] | None"]


class SmoothedModel(NamedTuple):
  """The result of :func:`~jaxcompress.quantization.smoothquant` and :func:`~jaxcompress.quantization.awq`.

  Attributes:
    apply: ``apply(packed, *inputs)``: the quantized model (dequantized weights, the
      explicit input scales, and with SmoothQuant the calibrated activation quantization).
    packed: the params with :class:`~jaxcompress.export.QArray` weights, on the device
      (``jax.Array`` leaves); the scales folded into producers are already in their params.
    input_scales: ``{kernel_path: float32[in]}``, the multipliers ``1/s`` applied to the
      inputs of the consumers that have no producer to fold into (stored and counted in
      :attr:`nbytes`); run a packed tree with them through :func:`scaled_apply`.
    scales: ``{kernel_path: float32[in]}``, every consumer's ``s``, for inspection.
    act_ranges: SmoothQuant's calibrated activation ranges ``{site.key: (xmin, xmax)}``
      (serve with :func:`~jaxcompress.quantization.serve` on ``scaled_apply(apply_fn,
      input_scales)``), or ``None``.
    act_spec: the activation quantizer, or ``None``.
    alpha: the migration strength per consumer (AWQ: the searched one).
  """

  apply: Callable[..., Any]
  packed: PyTree
  input_scales: dict[str, np.ndarray]
  scales: dict[str, np.ndarray]
  act_ranges: dict[str, Any] | None
  act_spec: QuantSpec | None
  alpha: dict[str, float]

  @property
  def nbytes(self) -> int:
    """Bytes as stored: the packed params plus the explicit input scales."""
    from jaxcompress.core import accounting

    return accounting.report(self.packed).bytes + sum(np.asarray(v).nbytes for v in self.input_scales.values())


@dataclasses.dataclass(frozen=True)
class Group:
  """Consumers smoothed with one ``s``: those sharing a producer, or one without."""

  consumers: tuple[str, ...]
  producer: tuple[str, ...] | None
  width: int


def consumer_matrix(w: Any, k: int) -> np.ndarray:
  """A kernel ``(in..., out...)`` with ``k`` input axes as a float32 ``(in, out)`` matrix."""
  w = np.asarray(w, np.float32)
  return w.reshape(int(np.prod(w.shape[:k])), -1)


def plan(params: PyTree, stats: dict[str, DenseInputs], producers: Producers | None) -> tuple[list[Group], dict]:
  """Groups the calibrated consumers by producer and validates the mapping.

  Args:
    params: the model's params.
    stats: :func:`~jaxcompress.graph.dense_inputs` of the consumers.
    producers: ``{consumer_kernel_path: producer}`` (see the module docstring).

  Returns:
    ``(groups, info)``: the groups in the params' order, and ``{kernel_path: (k,
    DenseInputs)}`` with each consumer's number of input axes.

  Raises:
    ValueError: naming the value, if a consumer path is not a calibrated Dense kernel,
      is used at several sites, or a producer path does not exist or its trailing axes
      do not match the consumer's input width.
  """
  leaves = dict(leaves_with_paths(params))
  by_path: dict[str, list[DenseInputs]] = {}
  for s in stats.values():
    by_path.setdefault(s.site.path, []).append(s)
  info = {}
  for path, uses in by_path.items():
    if len(uses) > 1:
      raise ValueError(
        f"kernel {path!r} is used at {len(uses)} sites ({[u.site.key for u in uses]}): one input scale cannot "
        "serve them all; exclude it with where="
      )
    info[path] = (dense_layout(uses[0].site, tuple(np.shape(leaves[path]))), uses[0])
  producers = dict(producers or {})
  for consumer, producer in producers.items():
    if consumer not in info:
      known = [p for p in leaves if p in info][:8]
      raise ValueError(
        f"producers names the consumer {consumer!r}, which is not a selected Dense kernel of this model "
        f"(selected kernels include {known})"
      )
    for p in _paths(producer):
      if p not in leaves:
        raise ValueError(f"producer {p!r} of consumer {consumer!r} is not a param path of this model")
      width = int(np.prod(np.shape(leaves[consumer])[: info[consumer][0]]))
      _trailing(np.shape(leaves[p]), width, p, consumer)
  groups: dict[Any, list[str]] = {}
  order = [p for p in leaves if p in info]
  for path in order:
    prod = _paths(producers.get(path))
    groups.setdefault(prod if prod else ("", path), []).append(path)
  out = []
  for key, members in groups.items():
    width = int(np.prod(np.shape(leaves[members[0]])[: info[members[0]][0]]))
    for m in members[1:]:
      w = int(np.prod(np.shape(leaves[m])[: info[m][0]]))
      if w != width:
        raise ValueError(f"consumers {members[0]!r} and {m!r} share a producer but have {width} and {w} inputs")
    out.append(Group(tuple(members), None if key[0] == "" else key, width))
  return out, info


def _paths(producer: Any) -> tuple[str, ...]:
  if producer is None:
    return ()
  if isinstance(producer, str):
    return (producer,)
  if isinstance(producer, (tuple, list)) and all(isinstance(p, str) for p in producer) and producer:
    return tuple(producer)
  raise ValueError(f"a producer must be a param path or a tuple of paths, got {producer!r}")


def _trailing(shape: tuple[int, ...], width: int, path: str, consumer: str) -> int:
  """How many trailing axes of ``shape`` index ``width`` features; raises naming ``path``."""
  size = 1
  for t in range(1, len(shape) + 1):
    size *= shape[-t]
    if size == width:
      return t
    if size > width:
      break
  raise ValueError(
    f"producer {path!r} of shape {tuple(shape)} has no trailing axes of {width} features, the input width of "
    f"consumer {consumer!r}"
  )


def fold(
  params: PyTree, groups: list[Group], scales: dict[str, np.ndarray], info: dict
) -> tuple[PyTree, dict[str, np.ndarray]]:
  """Applies ``W ← diag(s) W`` to every consumer and ``x ← x / s`` to its input.

  Args:
    params: the model's params.
    groups: from :func:`plan`.
    scales: ``s`` per group, ``{group.consumers[0]: float32[width]}``.
    info: from :func:`plan`.

  Returns:
    ``(params, input_scales)``: the smoothed params (producers divided by ``s``), and the
    multipliers ``1/s`` of the consumers without a producer (``{kernel_path:
    float32[in]}``; a group whose ``s`` is all ones needs none).

  Raises:
    ValueError: if a scaled leaf no longer fits its dtype (a float16 kernel near
      ±65504 multiplied by ``s > 1``), naming the leaf.
  """
  row: dict[str, np.ndarray] = {}
  col: dict[str, np.ndarray] = {}
  input_scales: dict[str, np.ndarray] = {}
  for g in groups:
    s = np.asarray(scales[g.consumers[0]], np.float64)
    for c in g.consumers:
      row[c] = s
    if g.producer is not None:
      for p in g.producer:
        col[p] = col.get(p, 1.0) * s
    elif not np.all(s == 1.0):
      for c in g.consumers:
        input_scales[c] = (1.0 / s).astype(np.float32)

  def one(path, leaf):
    if path not in row and path not in col:
      return leaf
    x = np.asarray(leaf, np.float64)
    if path in row:
      k = info[path][0]
      x = x * row[path].reshape(x.shape[:k] + (1,) * (x.ndim - k))
    if path in col:
      width = col[path].size
      t = _trailing(x.shape, width, path, "")
      x = x / col[path].reshape(x.shape[x.ndim - t :])
    dtype = np.asarray(leaf).dtype
    if np.issubdtype(dtype, np.floating):
      big = float(np.finfo(dtype).max)
      worst = float(np.max(np.abs(x), initial=0.0))
      if worst > big:
        raise ValueError(
          f"smoothing overflows leaf {path!r} ({dtype}): a scaled value reaches {worst:.3g} > {big:.6g}, its "
          "dtype's largest; smooth it in a wider dtype (float32), lower alpha, or leave it out of `where`"
        )
    return jnp.asarray(x, dtype)

  return map_with_path(one, params), input_scales


def scaled_apply(apply_fn: Callable[..., Any], input_scales: Mapping[str, Any]) -> Callable[..., Any]:
  """``apply_fn`` with each listed Dense kernel's input multiplied by its per-channel scale.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    input_scales: ``{kernel_path: float[in]}``, e.g. :attr:`SmoothedModel.input_scales`.

  Returns:
    ``fn(params, *inputs)``: at each site of a listed kernel the op runs on ``x * m``
    (``m`` laid over the input's trailing, contracted axes); elsewhere ``apply_fn``
    unchanged. ``apply_fn`` itself when ``input_scales`` is empty.

  Example:
    >>> import jax.numpy as jnp
    >>> f = scaled_apply(lambda p, x: x @ p['w'], {'w': jnp.array([2.0, 0.5])})
    >>> f({'w': jnp.ones((2, 1))}, jnp.array([[1.0, 4.0]])).tolist()
    [[4.0]]
  """
  if not input_scales:
    return apply_fn
  multipliers = {k: jnp.asarray(v) for k, v in input_scales.items()}

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    k = dense_layout(site, tuple(site.weight_shape))
    m = multipliers[site.path].astype(activation.dtype).reshape(activation.shape[activation.ndim - k :])
    return site.compute(activation * m, weight)

  return graph.rewrite(apply_fn, rule, where=lambda path, site: path in multipliers)


def verify(
  apply_fn: Callable[..., Any],
  params: PyTree,
  smoothed: PyTree,
  input_scales: Mapping[str, Any],
  batch: Any,
  producers: Producers | None,
  *,
  rtol: float = 1e-3,
) -> None:
  """Raises ``ValueError`` unless the smoothed float model computes the original's function.

  Compared on one calibration batch: ``‖f_smoothed - f‖ / ‖f‖ <= rtol``. A producer whose
  output also feeds something else (a residual connection, a post-LN BERT's LayerNorm)
  fails this. An original output that is not finite on the batch is refused first (the
  comparison would be NaN and blame the producers).
  """
  inputs = batch if isinstance(batch, tuple) else (batch,)
  ref = jax.tree.leaves(jax.jit(apply_fn)(params, *inputs))
  if not all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in ref):
    raise ValueError(
      "the original model's output on the first calibration batch is not finite (NaN or inf: non-finite "
      "inputs, or values that overflow their dtype), so smoothing cannot be checked; calibrate on batches the "
      "float model computes finitely"
    )
  new = jax.tree.leaves(jax.jit(scaled_apply(apply_fn, input_scales))(smoothed, *inputs))
  num = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)) for a, b in zip(ref, new))
  den = sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in ref)
  err = np.sqrt(num / den) if den > 0 else np.sqrt(num)
  if not err <= rtol:
    raise ValueError(
      f"the smoothed model does not compute the original function (relative error {err:.3g} > {rtol}): a producer "
      f"in producers={dict(producers or {})!r} feeds something besides its consumers (a residual connection, a "
      "post-LN LayerNorm) or is not the op before them; give those consumers no producer (an explicit input scale)"
    )


def packed_apply(apply_fn: Callable[..., Any], input_scales: Mapping[str, Any]) -> Callable[..., Any]:
  """``apply(packed, *inputs)``: :func:`scaled_apply` on the dequantized tree."""
  fn = scaled_apply(apply_fn, input_scales)
  return lambda packed, *x: fn(export.materialize_tree(packed), *x)
