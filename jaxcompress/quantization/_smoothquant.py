"""SmoothQuant: migrate activation outliers into the weights, then W8A8 per tensor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from jaxcompress import graph
from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph._inputs import PathSet, TokenMask
from jaxcompress.quantization import _smoothing as smoothing
from jaxcompress.quantization._ptq import ptq
from jaxcompress.quantization._smoothing import Producers, SmoothedModel


def smoothquant_scales(act_absmax: Any, weight_absmax: Any, alpha: float = 0.5) -> np.ndarray:
  """SmoothQuant's per-input-channel scales ``s_j = max|X_j|^α / max|W_j|^(1-α)``.

  Args:
    act_absmax: ``float[in]``, each input channel's largest ``|x|`` over the calibration
      tokens.
    weight_absmax: ``float[in]``, the largest ``|W_jk|`` over the outputs ``k`` (of every
      consumer sharing the input).
    alpha: migration strength in [0, 1]: 0 leaves the activations' range alone (``s =
      1/max|W_j|``), 1 moves all of it into the weights.

  Returns:
    ``float32[in]``, positive and finite. A channel that is zero in the activations or
    in the weights gets ``s = 1`` (nothing to balance), and ``s`` is kept in
    ``[1e-5, 1e5]`` (the authors' code clamps at 1e-5).

  Raises:
    ValueError: if ``alpha`` is outside [0, 1].
  """
  alpha = validate.check_float("alpha", alpha, low=0.0, high=1.0)
  a = np.asarray(act_absmax, np.float64)
  w = np.asarray(weight_absmax, np.float64)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    s = a**alpha / w ** (1.0 - alpha)
  s = np.where((a > 0) & (w > 0) & np.isfinite(s), s, 1.0)
  return np.clip(s, 1e-5, 1e5).astype(np.float32)


def smooth(
  apply_fn: Callable[..., Any],
  params: PyTree,
  *,
  batches: Iterable[Any],
  alpha: float = 0.5,
  producers: Producers | None = None,
  where: select.Where = None,
  token_mask: TokenMask = None,
  verify: bool = True,
) -> tuple[PyTree, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """SmoothQuant's float step: the same model with activation outliers moved into weights.

  Returns:
    ``(params, input_scales, scales)``: smoothed params (consumers ``diag(s) W``,
    producers divided by ``s``), the explicit multipliers ``1/s`` of the consumers with no
    producer (run them with :func:`~jaxcompress.quantization.scaled_apply`), and each
    consumer's ``s``. See :func:`smoothquant` for the arguments and errors.
  """
  alpha = validate.check_float("alpha", alpha, low=0.0, high=1.0)
  batches = list(batches)
  pred = select.as_predicate(where)
  chosen = {p for p, leaf in leaves_with_paths(params) if pred(p, leaf)}
  if not chosen:
    raise ValueError(
      f"where={where!r} selects no leaf (the default takes floating leaves with ndim >= 2); the leaves are "
      f"{[path for path, _ in leaves_with_paths(params)][:20]}"
    )
  stats = graph.dense_inputs(apply_fn, params, batches, where=PathSet(chosen), token_mask=token_mask)
  groups, info = smoothing.plan(params, stats, producers)
  leaves = dict(leaves_with_paths(params))
  scales = {}
  for g in groups:
    act = np.max([info[c][1].absmax for c in g.consumers], axis=0)
    wmax = np.max([np.abs(smoothing.consumer_matrix(leaves[c], info[c][0])).max(1) for c in g.consumers], axis=0)
    scales[g.consumers[0]] = smoothquant_scales(act, wmax, alpha)
  smoothed, input_scales = smoothing.fold(params, groups, scales, info)
  if verify:
    smoothing.verify(apply_fn, params, smoothed, input_scales, batches[0], producers)
  per_consumer = {c: scales[g.consumers[0]] for g in groups for c in g.consumers}
  return smoothed, input_scales, per_consumer


def smoothquant(
  apply_fn: Callable[..., Any],
  params: PyTree,
  *,
  batches: Iterable[Any],
  alpha: float = 0.5,
  producers: Producers | None = None,
  where: select.Where = None,
  smooth_where: select.Where = None,
  token_mask: TokenMask = None,
  weight_bits: int = 8,
  act_bits: int = 8,
  per_channel: bool = False,
  act_symmetric: bool = True,
  verify: bool = True,
) -> SmoothedModel:
  """SmoothQuant W8A8: smooth each Dense layer's input channels, then quantize per tensor.

  Activations of large models have a few outlier channels, so one per-tensor activation
  scale wastes most levels on them; weights are easy to quantize. SmoothQuant divides
  each input channel ``j`` of a Dense layer by ``s_j = max|X_j|^α / max|W_j|^(1-α)``
  (:func:`smoothquant_scales`; ``max|X_j|`` over the calibration tokens, ``max|W_j|``
  over row ``j`` of the kernel ``(in, out)``) and multiplies row ``j`` of the kernel by
  it: ``(X diag(s)^-1)(diag(s) W) = X W``. The division is folded into the producer
  named in ``producers`` (so it costs nothing at inference) or, for consumers with
  none, kept as an explicit per-channel multiply on the input (``input_scales``).
  Consumers sharing a producer (q, k, v) share one ``s`` from their joint maxima.
  Then :func:`~jaxcompress.quantization.ptq` quantizes the smoothed model: weights
  symmetric per tensor, activations static per tensor from the same batches (the
  paper's O3 setting), servable in int8 by :func:`~jaxcompress.quantization.serve` as
  ``serve(scaled_apply(apply_fn, m.input_scales), m.packed, act_ranges=m.act_ranges,
  act_symmetric=True)``.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the float params.
    batches: calibration batches (tuples of inputs); the paper uses 512 sentences.
    alpha: migration strength in [0, 1] (0.5, the paper's default for OPT and BLOOM).
    producers: ``{consumer_kernel_path: producer}``: a producer is a param path or a
      tuple of paths whose trailing axes index the consumer's input (a pre-LN
      LayerNorm's ``('ln/scale', 'ln/bias')``; a Dense layer's ``('v/kernel',
      'v/bias')``, its output columns). Unlisted consumers get an explicit input scale.
    where: which Dense kernels to quantize (default: floating leaves with ``ndim >= 2``
      that feed a Dense site).
    smooth_where: which of them to smooth first (default: all). The paper smooths the
      layers fed by a LayerNorm (q, k, v and the first MLP layer), whose inputs hold the
      outlier channels; smoothing the input of a layer after GELU can hurt.
    token_mask: which calibration tokens count for ``max|X_j|``
      (:func:`~jaxcompress.graph.dense_inputs`; the activation ranges are taken over
      every token the model computes).
    weight_bits, act_bits: 8 and 8 (W8A8).
    per_channel: per-output-channel weight scales instead of the paper's per tensor.
    act_symmetric: symmetric activation codes (the paper's); ``False`` adds a zero point.
    verify: check on the first batch that the smoothed float model computes the
      original's function (relative error at most 1e-3), which catches a producer
      whose output also feeds something else (a residual; every LayerNorm of a
      post-LN BERT).

  Returns:
    A :class:`~jaxcompress.quantization.SmoothedModel` (``act_ranges`` and
    ``act_spec`` set; ``nbytes`` counts the explicit input scales).

  Raises:
    ValueError: naming the value: ``alpha`` outside [0, 1]; empty or padding-only
      batches; a selected site that is not a Dense ``(in, out)`` layer; a producer path
      that is not a param, a consumer that is not a selected kernel, a producer whose
      trailing axes do not match the consumer's input width; a failed ``verify``.

  References:
    Xiao, Lin, Seznec, Wu, Demouth & Han 2022, "SmoothQuant: Accurate and Efficient
    Post-Training Quantization for Large Language Models",
    https://arxiv.org/abs/2211.10438.

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p['w']
    >>> x = jnp.array([[100.0, 1.0], [-50.0, 0.5]])  # channel 0 is an outlier
    >>> m = smoothquant(f, {'w': jnp.array([[0.01, 0.02], [1.0, -1.0]])}, batches=[(x,)])
    >>> [round(float(v), 2) for v in m.scales['w']]  # sqrt(100 / 0.02), sqrt(1 / 1)
    [70.71, 1.0]
  """
  alpha = validate.check_float("alpha", alpha, low=0.0, high=1.0)
  batches = list(batches)
  if not batches:
    raise ValueError("smoothquant needs calibration batches: `batches` was empty")
  first = batches[0] if isinstance(batches[0], tuple) else (batches[0],)
  fed = {s.path for s in graph.trace(apply_fn, params, *first)}
  pred, smooth_pred = select.as_predicate(where), select.as_predicate(smooth_where)
  consumers = {p for p, leaf in leaves_with_paths(params) if p in fed and pred(p, leaf)}
  if not consumers:
    raise ValueError(f"where={where!r} selects no kernel that feeds a Dense site of this model")
  smoothed_set = {p for p, leaf in leaves_with_paths(params) if p in consumers and smooth_pred(p, leaf)}
  if not smoothed_set:
    raise ValueError(f"smooth_where={smooth_where!r} selects none of the quantized kernels {sorted(consumers)[:5]}")
  smoothed, input_scales, scales = smooth(
    apply_fn,
    params,
    batches=batches,
    alpha=alpha,
    producers=producers,
    where=lambda path, leaf: path in smoothed_set,
    token_mask=token_mask,
    verify=verify,
  )
  fn = smoothing.scaled_apply(apply_fn, input_scales)
  q = ptq(
    fn,
    smoothed,
    weight_bits=weight_bits,
    per_channel=per_channel,
    act_bits=act_bits,
    act_symmetric=act_symmetric,
    batches=batches,
    where=lambda path, leaf: path in consumers,
  )
  return SmoothedModel(
    apply=q.apply,
    packed=q.packed,
    input_scales=input_scales,
    scales=scales,
    act_ranges=q.act_ranges,
    act_spec=q.act_spec,
    alpha=dict.fromkeys(scales, alpha),
  )
