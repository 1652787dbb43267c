"""Post-training quantization: one call from a trained model to a quantized one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from jaxcompress import export
from jaxcompress.core import select
from jaxcompress.core._chain import chain
from jaxcompress.core.tree import PyTree
from jaxcompress.export._base import on_device
from jaxcompress.graph._dense import TokenMask
from jaxcompress.quantization._fake_quant import fake_quant
from jaxcompress.quantization._qat import quantize_activations
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization.calibration import Calibrator


class QuantizedModel(NamedTuple):
  """The result of :func:`ptq`.

  Attributes:
    apply: ``apply(packed, *inputs)``: the model with dequantized weights and, when
      activations are quantized, fake-quantized activations at their calibrated ranges.
    packed: the params with :class:`~jaxcompress.export.QArray` weights, every array on
      the default device (``jax.Array``; ``pack`` alone leaves NumPy arrays on the host), so
      a jitted ``apply`` that takes it as an argument copies nothing per call.
    act_ranges: ``{site.key: (xmin, xmax)}``, or ``None`` for weight-only (and per-token dynamic) activations.
    act_spec: the activation quantizer, or ``None``.
  """

  apply: Callable[..., Any]
  packed: PyTree
  act_ranges: dict[str, Any] | None
  act_spec: QuantSpec | None


def ptq(
  apply_fn: Callable[..., Any],
  params: PyTree,
  *,
  weight_bits: int = 8,
  per_channel: bool = True,
  group_size: int | None = None,
  symmetric: bool = True,
  act_bits: int | None = None,
  act_symmetric: bool = False,
  batches: Iterable[Any] | None = None,
  calibrator: Calibrator | None = None,
  convention: str = "narrow",
  where: select.Where = None,
  token_mask: TokenMask = None,
  act_per_token: bool = False,
) -> QuantizedModel:
  """Quantizes a trained model's weights and, optionally, its activations, in one call.

  The compressor ``chain(fake_quant(weight_bits, ...), quantize_activations(act_bits,
  apply_fn=apply_fn, batches=batches))`` is initialized on ``params`` and packed at
  once (no training): the selected weights become
  :class:`~jaxcompress.export.QArray`, and weights that are exactly zero (a pruned
  model's) stay absent in storage, so PTQ of a pruned model keeps its sparsity. The
  activation ranges are calibrated on ``batches`` with the quantized weights in place.
  Training with the same compressor and ``jaxcompress.train`` is QAT.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the trained params.
    weight_bits: bits per weight (2..16 symmetric, 1..16 affine).
    per_channel: per-output-channel weight scales (last axis).
    group_size: per-group weight scales along the contraction axis 0.
    symmetric: symmetric weights (else affine).
    act_bits: bits per activation, or ``None`` for weight-only quantization.
    act_symmetric: symmetric signed activation codes instead of asymmetric unsigned
      ones with a zero point (Jacob et al. 2018's default).
    batches: calibration batches (tuples of inputs), required with ``act_bits`` (unless
      ``act_per_token``).
    calibrator: default :func:`~jaxcompress.quantization.calibration.minmax`.
    convention: the weights' qparams, ``'narrow'`` or PyTorch's observer ``'pytorch'``
      (:func:`~jaxcompress.quantization.fake_quant`).
    where: which weight leaves (default: floating leaves with ``ndim >= 2``); with
      ``act_bits``, the sites those weights feed.
    token_mask: with ``act_bits``, which calibration tokens set the activation ranges:
      ``None`` (every position), the index of the batch input holding a ``[batch,
      tokens]`` mask (1 = real token; ``1`` for ``(input_ids, attention_mask)``), or a
      callable ``batch -> mask``, as for :func:`jaxcompress.graph.dense_inputs`. Padding
      positions otherwise widen the ranges.
    act_per_token: dynamic activation scales, each token's own range over the features
      its matmul contracts (SmoothQuant's O1, Xiao et al. 2022,
      https://arxiv.org/abs/2211.10438), instead of static per-tensor ranges: no
      calibration batches; ``act_ranges`` is then ``None``.

  Returns:
    A :class:`QuantizedModel`.

  Raises:
    ValueError: on bad bit-widths, a ``where`` that selects nothing, non-finite weights,
      or ``act_bits`` without calibration batches.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'w': jnp.array([[0.5, -1.0], [0.25, 2.0]])}
    >>> q = ptq(lambda p, x: x @ p['w'], params, weight_bits=8)
    >>> [round(v, 3) for v in q.apply(q.packed, jnp.ones((1, 2)))[0].tolist()]  # 0.75, 1.0 on an 8-bit grid
    [0.752, 0.992]
  """
  weights = fake_quant(
    weight_bits,
    symmetric=symmetric,
    per_channel=per_channel,
    group_size=group_size,
    convention=convention,
    where=where,
  )
  if act_bits is None and (token_mask is not None or act_per_token):
    raise ValueError(
      f"token_mask={token_mask!r} and act_per_token={act_per_token!r} concern activations: pass act_bits too"
    )
  if act_per_token and batches is not None:
    raise ValueError("act_per_token=True scales are dynamic: pass no calibration batches")
  if act_bits is None:
    compressor = weights
  else:
    if batches is None and not act_per_token:
      raise ValueError(f"act_bits={act_bits} needs calibration batches: pass batches=[...]")
    chosen = {path for path, _, selected in select.explain(where, params) if selected}
    acts = quantize_activations(
      act_bits,
      apply_fn=apply_fn,
      batches=batches,
      calibrator=calibrator,
      symmetric=act_symmetric,
      where=lambda path, site: path in chosen,
      token_mask=token_mask,
      per_token=act_per_token,
    )
    compressor = chain(weights, acts)
  trainable, state = compressor.init(params)
  packed = on_device(compressor.pack(trainable, state))  # to compute with: no copy per call
  forward = compressor.rewrite(apply_fn, trainable, state)
  ranges = None if act_bits is None or act_per_token else state.stages[1].data
  spec = None if act_bits is None else QuantSpec(act_bits, symmetric=act_symmetric)
  return QuantizedModel(lambda p, *x: forward(export.materialize_tree(p), *x), packed, ranges, spec)
