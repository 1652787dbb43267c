"""AWQ: activation-aware weight quantization (per-channel scales searched, int4 per group)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, leaves_with_paths, map_with_path
from jaxcompress.export._base import on_device
from jaxcompress.graph._dense import PathSet, TokenMask, selected
from jaxcompress.quantization import _smoothing as smoothing
from jaxcompress.quantization._fake_quant import weight_spec
from jaxcompress.quantization._smoothing import Producers, SmoothedModel
from jaxcompress.quantization._spec import QuantSpec


def awq_scales(x_absmean: Any, alpha: float) -> jax.Array:
  """AWQ's per-input-channel scales ``s = s_X^α``, normalized.

  ``s_X`` is the mean ``|x_j|`` over the calibration tokens, floored at 1e-4; as in the
  authors' code the scales are divided by ``sqrt(max(s) · min(s))`` so they straddle 1
  (the product ``(X/s)(sW)`` does not change; only the weights' dynamic range is
  centred).

  Args:
    x_absmean: ``float[in]``, mean ``|x_j|``.
    alpha: the exponent in [0, 1] (0: all ones, plain round-to-nearest).

  Returns:
    ``float32[in]``, positive and finite.
  """
  s = jnp.maximum(jnp.asarray(x_absmean, jnp.float32), 1e-4) ** alpha
  return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


def _fake(spec: QuantSpec, w: jax.Array) -> jax.Array:
  scale, zero_point = spec.params(w)
  return spec.fake_quant(w, scale, zero_point)


@functools.partial(jax.jit, static_argnums=0)
def _codes(spec: QuantSpec, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """``(codes, scale, zero_point)`` of ``w`` from its own ranges, as :meth:`QuantSpec.pack` stores them."""
  scale, zero_point = spec.params(w)
  return spec.quantize(w, scale, zero_point), scale, zero_point


@functools.partial(jax.jit, static_argnums=0)
def _scale_losses(spec: QuantSpec, x: jax.Array, ws: tuple[jax.Array, ...], absmean: jax.Array, alphas: jax.Array):
  """Output MSE of ``(x/s) @ Q(diag(s) W)`` against ``x @ W``, summed over ``ws``, per ``alpha``."""
  refs = [x @ w for w in ws]

  def loss(alpha):
    s = awq_scales(absmean, alpha)
    xs = x / s
    return sum(jnp.mean((xs @ _fake(spec, w * s[:, None]) - r) ** 2) for w, r in zip(ws, refs))

  return jax.lax.map(loss, alphas)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _clip(spec: QuantSpec, x: jax.Array, w: jax.Array, steps: int) -> jax.Array:
  """AWQ's clipping search: per group and output, the max ``|w|`` (shrunk by ``1 - i/20``,
  ``i < steps``) whose quantized group output ``x_g @ Q(clip(w_g))`` is closest to ``x_g @ w_g``."""
  gs = spec.granularity.group_size or w.shape[0]
  g = w.shape[0] // gs
  wg = w.reshape(g, gs, -1)
  xg = x.reshape(x.shape[0], g, gs)
  ref = jnp.einsum("tgk,gko->tgo", xg, wg)
  top = jnp.max(jnp.abs(wg), axis=1, keepdims=True)

  def err(i):
    m = top * (1.0 - i / 20.0)
    q = _fake(spec, jnp.clip(wg, -m, m).reshape(w.shape)).reshape(wg.shape)
    return jnp.mean((jnp.einsum("tgk,gko->tgo", xg, q) - ref) ** 2, axis=0)

  errs = jax.lax.map(err, jnp.arange(steps, dtype=jnp.float32))  # [steps, g, out]
  best = jnp.argmin(errs, axis=0)
  m = top * (1.0 - best[:, None, :] / 20.0)
  return jnp.clip(wg, -m, m).reshape(w.shape)


def awq(
  apply_fn: Callable[..., Any],
  params: PyTree,
  *,
  batches: Iterable[Any],
  bits: int = 4,
  group_size: int | None = 128,
  symmetric: bool = False,
  producers: Producers | None = None,
  grid: int = 20,
  clip: bool | select.Where = False,
  where: select.Where = None,
  token_mask: TokenMask = None,
  max_tokens: int = 4096,
  verify: bool = True,
) -> SmoothedModel:
  """AWQ: scale the salient input channels up before quantizing weights, int4 per group.

  The weights multiplying large activations matter most. For each Dense layer (or the
  consumers sharing a producer, jointly) AWQ takes ``s_X``, the mean ``|x_j|`` of each
  input channel over the calibration tokens, and searches ``α`` on the grid ``i /
  grid`` (``i = 0 .. grid - 1``: the authors' code's 20 points of [0, 1), α = 0 being
  round-to-nearest) for the scales ``s = s_X^α`` (:func:`awq_scales`) minimizing the
  output error ``mean((x diag(s)^-1 · Q(diag(s) W) - x W)^2)`` on the calibration tokens,
  summed over the group's consumers. ``Q`` is the quantizer that is then stored:
  ``bits`` per weight, one scale (and zero point: asymmetric, as the authors' code) per
  ``group_size`` consecutive inputs of each output. ``1/s`` is folded into the producer
  named in ``producers`` (the same mapping as :func:`smoothquant`) or kept as an explicit
  input scale, stored and counted. With ``clip``, the authors' weight clipping search
  follows: per group and output, the largest ``|w|`` is shrunk by ``1 - i/20`` (``i <
  10``) to the value minimizing that group's output error (their code skips q and k;
  pass a ``where`` to choose).

  Scales are searched on the float model's inputs (captured once: smoothing does not
  change the function, so every layer sees the float inputs), all from the original
  weights, then applied together, as the authors' code does per block.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the float params.
    batches: calibration batches (the paper: 128 sequences of 512 tokens of the Pile).
    bits: bits per weight (4).
    group_size: inputs per scale (128; must divide every kernel's input count), or
      ``None`` for per-output-channel scales.
    symmetric: symmetric codes instead of the paper's asymmetric ones.
    producers: ``{consumer_kernel_path: producer}``, as for :func:`smoothquant`.
    grid: grid points for ``α`` (20).
    clip: ``True`` to search the clipping of every consumer, a ``where`` over kernel
      paths to choose which, or ``False``.
    where: which Dense kernels (default: floating leaves with ``ndim >= 2`` that feed a
      Dense site); each must be a 2-D ``(in, out)`` kernel.
    token_mask: which calibration tokens count (:func:`~jaxcompress.graph.dense_inputs`).
    max_tokens: tokens per layer kept for the searches (the first ones).
    verify: check that the smoothed float model computes the original's function
      (catches a producer that also feeds a residual).

  Returns:
    A :class:`~jaxcompress.quantization.SmoothedModel`: ``packed`` holds
    :class:`~jaxcompress.export.QArray` kernels, ``alpha`` the searched exponents.

  Raises:
    ValueError: naming the value: ``bits``, ``grid`` or ``group_size`` out of range, a
      ``group_size`` that does not divide a kernel's inputs, a kernel that is not 2-D,
      empty or padding-only batches, and the producer errors of :func:`smoothquant`.

  References:
    Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan & Han 2023, "AWQ:
    Activation-aware Weight Quantization for LLM Compression and Acceleration",
    https://arxiv.org/abs/2306.00978.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 8)) * jnp.array([20.0] + [1.0] * 7)
    >>> w = jax.random.normal(jax.random.key(1), (8, 4))
    >>> m = awq(lambda p, x: x @ p['w'], {'w': w}, batches=[(x,)], bits=3, group_size=8)
    >>> type(m.packed['w']).__name__, m.alpha['w'] > 0  # the outlier channel is protected
    ('QArray', True)
  """
  spec = weight_spec(bits, symmetric=symmetric, group_size=group_size, per_channel=True)
  grid = validate.check_int("grid", grid, low=1)
  max_tokens = validate.check_int("max_tokens", max_tokens, low=1)
  batches = list(batches)
  chosen = selected(params, where)
  leaves = dict(leaves_with_paths(params))
  for p in sorted(chosen):
    if np.ndim(leaves[p]) == 2:
      spec.granularity.check(tuple(np.shape(leaves[p])), f"kernel {p!r}")
  stats = graph.dense_inputs(
    apply_fn, params, batches, where=PathSet(chosen), token_mask=token_mask, max_tokens=max_tokens
  )
  groups, info = smoothing.plan(params, stats, producers)
  for path in info:
    if np.ndim(leaves[path]) != 2:
      raise ValueError(f"awq quantizes 2-D (in, out) kernels; {path!r} has shape {np.shape(leaves[path])}")
  alphas = jnp.arange(grid, dtype=jnp.float32) / grid
  scales, chosen_alpha = {}, {}
  for g in groups:
    first = info[g.consumers[0]][1]
    x = jnp.asarray(first.tokens)
    ws = tuple(jnp.asarray(leaves[c], jnp.float32) for c in g.consumers)
    absmean = jnp.asarray(first.absmean)
    losses = np.asarray(_scale_losses(spec, x, ws, absmean, alphas))
    losses = np.where(np.isfinite(losses), losses, np.inf)
    best = float(alphas[int(np.argmin(losses))])
    scales[g.consumers[0]] = np.asarray(jax.jit(awq_scales)(absmean, best), np.float32)
    for c in g.consumers:
      chosen_alpha[c] = best
  smoothed, input_scales = smoothing.fold(params, groups, scales, info)
  if verify:
    smoothing.verify(apply_fn, params, smoothed, input_scales, batches[0], producers)
  per_consumer = {c: scales[g.consumers[0]] for g in groups for c in g.consumers}
  clip_pred = None if clip is False else (lambda path, leaf: True) if clip is True else select.as_predicate(clip)

  def quantize(path, leaf):
    if path not in per_consumer:
      return leaf
    w = jnp.asarray(leaf, jnp.float32)
    if clip_pred is not None and clip_pred(path, leaf):
      tokens = info[path][1].tokens
      stride = max(1, tokens.shape[0] // 512)  # the authors' code samples 512 tokens
      x = jnp.asarray(tokens[::stride][:512]) / jnp.asarray(per_consumer[path])
      w = _clip(spec, x, w, 10)
    codes, scale, zero_point = _codes(spec, w)
    return export.QArray(
      codes=export.store_codes(np.asarray(codes), spec.bits, signed=spec.symmetric),
      scale=np.asarray(scale),
      zero_point=None if zero_point is None else np.asarray(zero_point),
      bits=spec.bits,
      dtype=str(jnp.asarray(leaf).dtype),
      group_axis=spec.granularity.group_axis,
      group_size=spec.granularity.group_size,
    )

  packed = on_device(map_with_path(quantize, smoothed))  # to compute with: no copy per call
  return SmoothedModel(
    apply=smoothing.packed_apply(apply_fn, input_scales),
    packed=packed,
    input_scales=input_scales,
    scales=per_consumer,
    act_ranges=None,
    act_spec=None,
    alpha=chosen_alpha,
  )
