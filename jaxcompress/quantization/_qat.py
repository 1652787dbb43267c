"""Quantized activations at every matmul and conv, and quantization-aware training.

:func:`quantize_activations` is the model-side compressor of uniform activation
quantization (through the protocol's ``rewrite`` seam): each selected site's input is
quantized (symmetric per tensor, at ranges calibrated at ``init`` or each batch's own)
and then either

- ``integer=True``: the op runs on the codes, ``int8 × int8 → int32``, and is rescaled
  once; the weight, which an earlier :func:`~jaxcompress.quantization.fake_quant` stage
  put on a per-output-channel grid, is read back as int8 codes (2..8-bit weights in int8
  containers, so W4A8 and W2A8 also run as int8 dots); or
- ``integer=False``: the fake-quantized activation meets the weight in a float op.

Both have the same straight-through gradients: the backward pass differentiates the op
at the dequantized activation and the weight as given (on its grid, that is its
dequantized codes, so no float copy of the codes is made) and zeroes the activation's
gradient where it was clipped.
The forward outputs agree up to float summation order. With ``backward='int8'`` (opt-in,
``integer`` only) the matmuls' backward products are int8 dots too: the whole step is int8.

:func:`qat` is the one way to do QAT: ``chain(fake_quant(weight_bits, per_channel),
quantize_activations(act_bits, integer=...))``, so what is trained is what is packed:
``pack`` stores the weight exactly as the model saw it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor, split
from jaxcompress.core._chain import chain
from jaxcompress.core.tree import leaves_with_paths
from jaxcompress.graph._dense import TokenMask
from jaxcompress.quantization import _provenance as provenance
from jaxcompress.quantization import calibration, uniform
from jaxcompress.quantization._activation_quant import activation_scale
from jaxcompress.quantization._activations import site_compressor, site_predicate
from jaxcompress.quantization._fake_quant import fake_quant, weight_spec
from jaxcompress.quantization._int8_backward import int8_matmul_grads
from jaxcompress.quantization._observer import observe, warn_if_outlier, warn_if_outliers
from jaxcompress.quantization._serve import activation_codes, integer_op, output_scale
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization.granularity import Granularity


def _on_channel_grid(site: graph.Site, per_channel: bool) -> bool:
  """Whether the weight's per-channel scales (along the leaf's last axis) are per output
  feature of this op, so the op factors as ``scale_a · scale_w · (codes_a · codes_w)``."""
  if not per_channel:
    return True
  axes = site.leaf_axes
  return axes is not None and tuple(axes[a] for a in site.feature_axes) == (len(axes) - 1,)


def _plain_matmul(site: graph.Site) -> bool:
  """Whether the site is ``x @ w``: a 2-D weight's first axis contracted with the activation's last."""
  if site.op != "dot_general" or site.weight_operand != 1 or len(site.weight_shape) != 2:
    return False
  (lc, rc), (lb, rb) = site.params["dimension_numbers"]
  return tuple(lc) == (len(site.activation_shape) - 1,) and tuple(rc) == (0,) and not lb and not rb


def site_rule(
  act_spec: QuantSpec,
  *,
  integer: bool = False,
  weight_bits: int = 8,
  per_channel: bool = True,
  act_ranges: dict | None = None,
  axis_name: str | None = None,
  per_token: bool = False,
  outlier_ratio: float | None = None,
  warned: set[str] | None = None,
  backward: str = "float",
  key: jax.Array | None = None,
  backward_operands: str = "quantized",
  outlier_when: Any = None,
  outlier_sink: list | None = None,
) -> graph.Rule:
  """The rewrite rule of :func:`quantize_activations` (see the module docstring).

  An integer site that receives exactly the array a :func:`fake_quant` stage returned, with
  this rule's bits and granularity (the leaf reached the model unchanged, see
  :mod:`~jaxcompress.quantization._provenance`), takes that stage's scale and its codes from one
  rounding of the float weight, the codes ``pack`` stores; any other site takes the grid from
  the weight's own per-channel (or per-tensor) ``max |w|`` and rounds the weight as received
  (a second pass over it, and under ``jit`` the fake quantization recomputed inside it).

  ``backward_operands`` (integer sites with the float backward): ``'quantized'`` differentiates
  the op at the dequantized activation and the weight as the site receives it (on its grid),
  as the fake-quantization graph of Jacob et al. does; ``'float'`` at the float activation and
  the float weight that the fake-quantization stage received (where the site's weight is not
  that stage's output as it returned it, the weight as received), as AQT's and Qwix's default
  backward does. Both pass the straight-through gradient and zero the activation's where it
  was clipped.

  With ``backward='int8'`` (needs ``integer`` and a PRNG ``key``), an integer site that is
  a plain matmul ``x @ w`` (``w`` 2-D, contracted on its first axis against ``x``'s last)
  forms both gradients as int8 dots from the forward's codes and a stochastically rounded
  int8 gradient (:func:`~jaxcompress.quantization._int8_backward.int8_matmul_grads`; the
  noise is ``key`` folded with a hash of the site's key); other sites keep the float backward.

  A site whose weight scales do not lie along its output features (a weight used
  transposed, or reshaped before the op) runs the float op on the quantized operands,
  which computes the same function. A dynamic per-tensor range whose largest ``|x|`` exceeds
  ``outlier_ratio`` times the 99.9th percentile of its nonzero ``|x|`` warns once per site (into ``warned``),
  tested only where the traced ``bool`` ``outlier_when`` holds (``None``: always); with
  ``outlier_sink`` a list, a site outside any nested call or loop appends ``(site.key,
  activation)`` to it instead, for the caller to test them all under one ``cond``.
  """
  if backward not in ("float", "int8"):
    raise ValueError(f"backward must be 'float' or 'int8', got {backward!r}")
  if backward == "int8" and (not integer or key is None):
    raise ValueError(f"backward='int8' needs integer=True and a PRNG key (got integer={integer}, key={key})")
  if backward_operands not in ("quantized", "float"):
    raise ValueError(f"backward_operands must be 'quantized' or 'float', got {backward_operands!r}")
  int8_backward = backward == "int8"
  float_operands = backward_operands == "float"
  grid_spec = weight_spec(weight_bits, per_channel=per_channel)  # the grid fake_quant puts the weights on
  warned = set() if warned is None else warned

  def scale_of(site, activation):
    if act_ranges is None and not per_token:
      if outlier_sink is not None and not site.scopes:
        outlier_sink.append((site.key, activation))
      else:
        warn_if_outlier(site.key, activation, outlier_ratio, warned, outlier_when)
    if per_token or act_ranges is not None or axis_name is None:
      return activation_scale(act_spec, site, activation, act_ranges, per_token)
    x = jax.lax.stop_gradient(activation)  # the whole batch's range, across the pmap axis
    lo, hi = jax.lax.pmin(jnp.min(x), axis_name), jax.lax.pmax(jnp.max(x), axis_name)
    return act_spec.params_from_range(lo, hi)

  def float_rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    scale, zero_point = scale_of(site, activation)
    return site.compute(act_spec.fake_quant(activation, scale, zero_point), weight)

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    if not integer or not _on_channel_grid(site, per_channel):
      return float_rule(site, activation, weight)
    # on the channel grid, per-channel scales lie along the op's one output-feature axis
    made, keep = provenance.lookup(weight) or (None, None)
    if made is not None and (
      made.spec != grid_spec or site.leaf_axes != tuple(range(weight.ndim)) or made.source.shape != weight.shape
    ):
      made = None  # another grid, or the leaf read transposed: derive the codes from the weight
    if made is not None:  # the weight stage's own scale, laid out on the op's weight operand
      axis = site.feature_axes[0]
      w_scale = jnp.reshape(made.scale, [made.scale.size if a == axis else 1 for a in range(weight.ndim)])
    else:
      granularity = Granularity(channel_axis=site.feature_axes[0]) if per_channel else Granularity()
      # in float32 for half types, as fake_quant's: a half-precision scale moves some codes off pack's
      w_scale = jax.lax.stop_gradient(uniform.symmetric_scale(uniform.upcast(weight), weight_bits, granularity))
    a_scale, a_zero = jax.lax.stop_gradient(scale_of(site, activation))
    a_scale = jnp.reshape(a_scale, ())
    out_scale = output_scale(site, w_scale)
    int8_grads = int8_backward and _plain_matmul(site)
    # the codes from one rounding of the float weight (pack's codes; zero where chain re-masked
    # the quantizer's output, which is pack's pruning of them), else of the weight as received
    w_float = w_from = None
    if made is not None:
      source = made.source if keep is None else jnp.where(keep, made.source, jnp.zeros((), made.source.dtype))
      w_float = source if float_operands else None
      w_from = (uniform.upcast(source), made.scale, made.zero_point)
    if out_scale is None:  # cannot happen: the scale varies only along the feature axes
      raise AssertionError(f"weight scale of site {site.key!r} does not lie along its output features")

    # every traced value the op needs is an argument (``aux``), none a closure: a closure's tracer
    # would leak into the backward pass when the model is jitted inside a gradient
    aux = (a_scale, a_zero, w_scale, out_scale, w_float, w_from, key)

    @jax.custom_vjp
    def op(a, w, aux):
      return forward(a, w, aux)[0]

    def forward(a, w, aux):
      a_scale, a_zero, w_scale, out_scale, w_float, w_from, _ = aux
      a_codes, shift, a_in = activation_codes(act_spec, a, a_scale, a_zero)
      if w_from is None:
        w_codes = uniform.quantize(w, w_scale, weight_bits).astype(jnp.int8)
      else:
        w_codes = grid_spec.quantize(*w_from).astype(jnp.int8)
      out = integer_op(site, a_codes, w_codes, a_scale * out_scale, a.dtype, None if act_spec.symmetric else shift)
      if int8_grads:
        return out, (a_codes, shift, a_in, w_codes, aux)
      if float_operands:  # no dequantized copy of either operand is kept
        return out, (a, None, a_in, w if w_float is None else w_float, aux)
      return out, (a_codes, shift, a_in, w, aux)

    def backward(res, g):
      x, shift, a_in, w_b, aux = res
      a_scale, _, w_scale, _, _, _, key = aux
      if int8_grads:
        assert key is not None  # checked above: int8_backward needs a key
        site_key = jax.random.fold_in(key, zlib.crc32(site.key.encode()) & 0x7FFFFFFF)
        da, dw = int8_matmul_grads(g, x, None if act_spec.symmetric else shift, a_scale, w_b, w_scale, site_key)
        # the int32 products rescaled in float32: saturated into a half type's range
        da, dw = uniform.saturate(da, activation.dtype), uniform.saturate(dw, weight.dtype)
        return jnp.where(a_in, da, 0), dw, None
      if float_operands:
        a_b = x
      else:  # dequantized in float32, saturated: codes at a half type's largest value stay finite
        a_b = (x.astype(jnp.int32) + shift).astype(jnp.float32) * a_scale.astype(jnp.float32)
        a_b = uniform.saturate(a_b, g.dtype)
      _, pullback = jax.vjp(site.compute, a_b, w_b)
      da, dw = pullback(g)
      return jnp.where(a_in, da, 0).astype(activation.dtype), dw.astype(weight.dtype), None

    op.defvjp(forward, backward)
    return op(activation, weight, aux)

  return rule


def check_weight_grid(
  apply_fn: Callable[..., Any],
  params: Any,
  batch: Any,
  *,
  weight_bits: int,
  per_channel: bool,
  where: Callable[[str, graph.Site], bool],
) -> None:
  """Raises if a weight that an integer site would read as int8 codes is not on the grid
  (``weight_bits`` symmetric, per output channel or per tensor) the site assumes, which
  would make the integer forward differ from the packed model. A half-precision weight may
  deviate by its own rounding (``eps`` of its dtype, relative), as :func:`fake_quant`'s output does.

  Raises:
    ValueError: naming the site, the largest deviation and the fix.
  """
  leaves = dict(leaves_with_paths(params))
  inputs = batch if isinstance(batch, tuple) else (batch,)
  for site in graph.trace(apply_fn, params, *inputs):
    w = leaves.get(site.path)
    if not where(site.path, site) or w is None or not _on_channel_grid(site, per_channel):
      continue
    w = jnp.asarray(w)
    eps = float(jnp.finfo(w.dtype).eps)  # a half type's fake_quant output is its grid rounded to it
    w = uniform.upcast(w)
    granularity = Granularity(channel_axis=-1) if per_channel and w.ndim else Granularity()
    scale = uniform.symmetric_scale(w, weight_bits, granularity)
    q = uniform.qmax(weight_bits)
    dev = jnp.abs(jnp.clip(jnp.round(w / scale), -q, q) * scale - w)
    off = float(jnp.max(dev))
    if bool(jnp.any(dev > 1e-5 * jnp.max(jnp.abs(w)) + eps * jnp.abs(w))):
      grid = "per-channel" if per_channel else "per-tensor"
      raise ValueError(
        f"integer=True reads the weight of site {site.key!r} as {weight_bits}-bit {grid} codes, but it is not on "
        f"that grid (off by up to {off:.3g}): put fake_quant({weight_bits}, per_channel={per_channel}) before this "
        "stage with the same bits and granularity, or use qat(...), which does"
      )


def quantize_activations(
  bits: int = 8,
  *,
  apply_fn: Callable[..., Any] | None = None,
  batches: Iterable[Any] | None = None,
  calibrator: calibration.Calibrator | None = None,
  symmetric: bool = False,
  integer: bool = False,
  weight_bits: int = 8,
  per_channel: bool = True,
  axis_name: str | None = None,
  where: select.Where = None,
  token_mask: TokenMask = None,
  per_token: bool = False,
  observer: str | None = None,
  averaging_constant: float = 0.01,
  freeze_step: int | None = None,
  observe_inputs: Callable[..., tuple[Any, ...]] | None = None,
  outlier_ratio: float | None = 10.0,
  backward: str = "float",
  seed: int = 0,
  backward_operands: str = "quantized",
  outlier_every: int | None = None,
) -> Compressor:
  """Uniform activation quantization at every selected matmul and convolution (model-side).

  ``rewrite`` fake-quantizes the input of each selected site per tensor at ``bits``
  bits, and (``integer``) runs the op in ``int8 × int8 → int32``. The codes are
  asymmetric and unsigned, ``0..2^b - 1`` over ``[min(x, 0), max(x, 0)]`` with a zero
  point, as in Jacob et al. 2018 (so non-negative post-ReLU inputs use every level), or
  with ``symmetric`` signed ``-(2^(b-1) - 1)..2^(b-1) - 1`` over ``max |x|``. Ranges are
  static when ``apply_fn`` and calibration ``batches`` are given: ``init`` runs
  ``apply_fn`` on them with the params it receives (in a chain, the view of the earlier
  stages: the pruned and quantized weights the deployed model has) and keeps the
  calibrated ``{site.key: (xmin, xmax)}`` in the state (``state.data``, for
  :func:`~jaxcompress.quantization.serve`); otherwise each batch uses its own range. Under
  ``pmap`` a dynamic range is each device's own shard's unless ``axis_name`` names the
  mapped axis (then it is reduced over it, so every device uses the whole batch's range,
  as a single device or a sharded ``jit`` would); either way the replicas stay equal,
  since ``make_step`` averages the gradients.

  Args:
    bits: bits per activation: 2..16, 2..8 with ``integer``.
    apply_fn: ``apply_fn(params, *inputs)``, for calibration.
    batches: calibration batches (each a tuple of inputs, or one array).
    calibrator: default :func:`~jaxcompress.quantization.calibration.minmax`.
    symmetric: symmetric signed codes instead of asymmetric unsigned ones.
    integer: run the ops on int8 codes (see the module docstring).
    weight_bits: with ``integer``, the bits of the weight grid that the earlier
      ``fake_quant`` stage uses (2..8).
    per_channel: with ``integer``, whether that grid has one scale per output channel
      (along the leaf's last axis) or one per tensor.
    axis_name: the ``pmap`` axis to reduce dynamic ranges over (only under ``pmap``).
    where: which sites, by weight path (regex or ``(path, site) -> bool``; default all).
    token_mask: which calibration tokens set the ranges (padding left out), as for
      :func:`~jaxcompress.quantization.calibration.calibrate_activations`.
    per_token: dynamic scales per token (each row's own range over the contracted
      features, SmoothQuant's O1) instead of per tensor; matmul sites only, no
      calibration ``batches``, not with ``integer``.
    observer: ``None`` (ranges fixed at ``init`` or each batch's own) or
      ``'moving_average'``: PyTorch's ``MovingAverageMinMaxObserver`` in QAT. ``init``
      calibrates ``apply_fn`` on ``batches`` (default calibrator: the moving average with
      the same constant, the first batch setting the range) and each ``update`` that
      receives ``batch=`` (:func:`~jaxcompress.train.make_step` passes it) runs ``apply_fn``
      forward once more on that batch (the params as this stage is given them, no
      gradient) and moves every site's range: ``xmin <- xmin + c · (batch_min - xmin)``,
      ``xmax`` alike. The ranges live in ``state.data`` (so ``serve`` uses them), and the
      forward fake-quantizes with the range as of the previous step (``update`` runs
      after the step's forward, where PyTorch's observer also folds in the batch being
      quantized: a one-step lag). Under ``pmap`` with ``axis_name`` the batch's min and
      max are reduced with ``pmin``/``pmax`` first, so every replica holds the range a
      single device would over the whole batch.
    averaging_constant: ``c`` in (0, 1] (PyTorch's default 0.01).
    freeze_step: the observer stops moving once the state's step count reaches it
      (PyTorch's ``disable_observer``); ``None`` never freezes.
    observe_inputs: ``observe_inputs(*batch) -> inputs`` of ``apply_fn`` from the step's
      batch (the loss's arguments); default: its first element, ``(batch[0],)``.
    outlier_ratio: warn (:class:`~jaxcompress.quantization.OutlierRangeWarning`, once per
      site) when a dynamic or observed range's largest ``|x|`` exceeds this many times the
      99.9th percentile of the batch's nonzero ``|x|`` (one outlier sets the range and the rest share a
      few levels); ``None`` silences it. Observed ranges are checked at each observation,
      dynamic ones only with ``outlier_every``.
    outlier_every: check dynamic ranges in the forward at the steps whose ``state.count`` is
      a multiple of this (the first included), all top-level sites under one ``cond``;
      ``None`` (default): not checked. The ``cond`` costs even when it is not taken: on
      XLA:CPU, 0.43 ms of a 0.78 ms LeNet-300-100 QAT step and about 3 ms of a 140 ms step of
      an MLP 1024-4096-4096-10 (``experiments/bench_qat.py``'s shapes), which is why it is
      opt-in.
    backward: ``'float'`` (the straight-through float backward of the module docstring) or
      ``'int8'`` (with ``integer``; opt-in): at every matmul site ``x @ w`` both gradient
      products run as ``int8 × int8 → int32`` on the forward's activation and weight codes
      and the incoming gradient quantized to int8 with stochastic rounding, one scale per
      row for the input gradient (with the weight's per-output scale folded in first) and
      one per output feature for the weight gradient, as AQT's ``dlhs``/``drhs``
      (:func:`~jaxcompress.quantization._int8_backward.int8_matmul_grads`); the
      straight-through clip mask is applied as in the float backward. Convolutions and
      other contractions keep the float backward.
    seed: with ``backward='int8'``, the stochastic rounding's noise at each step is
      ``fold_in(key(seed), state.count)`` (the step's count), folded with each site's key.
    backward_operands: with ``integer`` and the float backward, what the backward matmuls
      differentiate the op at: ``'quantized'`` (default: the dequantized activation and the
      weight as the site receives it, as Jacob et al.'s fake-quantization graph) or ``'float'``
      (the float activation and weight, AQT's and Qwix's default; it keeps no dequantized copy
      of either operand for the backward pass, so it moves fewer bytes per step).

  Returns:
    A model-side :class:`~jaxcompress.Compressor` with
    :class:`~jaxcompress.quantization.SiteState`.

  Raises:
    ValueError: on bit-widths out of range, ``batches`` without ``apply_fn``, or
      ``per_token`` with ``batches`` or ``integer``, or a bad ``observer``,
      ``averaging_constant``, ``freeze_step``, ``outlier_ratio`` or ``outlier_every`` (an observer needs
      ``apply_fn`` and ``batches`` and excludes ``per_token``), or ``backward`` not
      ``'float'``/``'int8'`` (``'int8'`` without ``integer``), or ``backward_operands`` not
      ``'quantized'``/``'float'`` (``'float'`` without ``integer`` and the float backward); at
      ``init``, if calibration finds a non-finite range or reaches no site.

  References:
    Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", https://arxiv.org/abs/1712.05877.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = quantize_activations(2, symmetric=True)  # levels -1, 0, 1 times the batch's max |x|
    >>> params, state = c.init({'w': jnp.eye(2)})
    >>> c.rewrite(model, params, state)(c.apply(params, state), jnp.array([[0.2, -1.0]])).tolist()
    [[0.0, -1.0]]
  """
  high = 8 if integer else 16
  validate.check_bits("bits", bits, low=2, high=high)
  validate.check_bits("weight_bits", weight_bits, low=2, high=8)
  if batches is not None and apply_fn is None:
    raise ValueError("calibration batches need apply_fn= (the model to run them through)")
  if not isinstance(per_token, bool):
    raise ValueError(f"per_token must be a bool, got {per_token!r}")
  if per_token and (batches is not None or integer):
    raise ValueError(
      "per_token=True scales are dynamic, fake-quantized: pass neither calibration batches nor integer=True "
      f"(got batches={'given' if batches is not None else None}, integer={integer})"
    )
  if backward not in ("float", "int8") or (backward == "int8" and not integer):
    raise ValueError(f"backward must be 'float' or 'int8' (with integer=True), got {backward!r}, integer={integer}")
  for name, flag in (("integer", integer), ("symmetric", symmetric), ("per_channel", per_channel)):
    if not isinstance(flag, bool):
      raise ValueError(f"{name} must be a bool, got {flag!r}")
  if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
    raise ValueError(f"seed must be an int in [-2^63, 2^63), got {seed!r}")
  if backward_operands not in ("quantized", "float") or (
    backward_operands == "float" and (not integer or backward != "float")
  ):
    raise ValueError(
      f"backward_operands must be 'quantized' or 'float' (with integer=True and backward='float'), got "
      f"{backward_operands!r}, integer={integer}, backward={backward!r}"
    )
  if observer not in (None, "moving_average"):
    raise ValueError(f"observer must be None or 'moving_average', got {observer!r}")
  c_avg = validate.check_float("averaging_constant", averaging_constant, low=0.0, high=1.0, low_open=True)
  if freeze_step is not None and (isinstance(freeze_step, bool) or not isinstance(freeze_step, int) or freeze_step < 0):
    raise ValueError(f"freeze_step must be None or an int >= 0, got {freeze_step!r}")
  if outlier_ratio is not None:
    validate.check_float("outlier_ratio", outlier_ratio, low=1.0)
  if outlier_every is not None and (
    isinstance(outlier_every, bool) or not isinstance(outlier_every, int) or outlier_every < 1
  ):
    raise ValueError(f"outlier_every must be None or an int >= 1, got {outlier_every!r}")
  dynamic_ratio = None if outlier_every is None else outlier_ratio  # the dynamic ranges' check
  if observer is not None and (apply_fn is None or batches is None or per_token):
    raise ValueError(
      f"observer={observer!r} needs apply_fn= and calibration batches= (they set the first range) and per-tensor "
      f"ranges (got apply_fn={'given' if apply_fn is not None else None}, "
      f"batches={'given' if batches is not None else None}, per_token={per_token})"
    )
  if observer is not None and calibrator is None:
    calibrator = calibration.moving_average(1.0 - c_avg)
  spec = QuantSpec(bits, symmetric=symmetric)
  batches = None if batches is None else list(batches)
  pred = site_predicate(where)
  warned: set[str] = set()

  def init(params):
    if batches is None or apply_fn is None:
      return None, None
    if integer:
      check_weight_grid(apply_fn, params, batches[0], weight_bits=weight_bits, per_channel=per_channel, where=pred)
    return None, calibration.calibrate_activations(
      apply_fn, params, batches, spec, calibrator, where=pred, token_mask=token_mask
    )

  def rule(extra, ranges, key=None, outlier_when=None, outlier_sink=None):
    del extra
    return site_rule(
      spec,
      integer=integer,
      weight_bits=weight_bits,
      per_channel=per_channel,
      act_ranges=ranges,
      axis_name=axis_name,
      per_token=per_token,
      outlier_ratio=dynamic_ratio,
      warned=warned,
      backward=backward,
      key=key,
      backward_operands=backward_operands,
      outlier_when=outlier_when,
      outlier_sink=outlier_sink,
    )

  root = jax.random.key(seed)

  def rewrite(fn, params, state):
    del params
    # with the int8 backward, the step's own noise: the key folded with the step count
    key = jax.random.fold_in(root, state.count) if backward == "int8" else None
    if outlier_every is None:
      return graph.rewrite(fn, rule(None, state.data, key), where=where)
    check = state.count % outlier_every == 0
    sink: list[tuple[str, jax.Array]] = []  # the top-level sites' dynamic ranges, tested after the model runs
    inner = graph.rewrite(fn, rule(None, state.data, key, check, sink), where=where)

    def rewritten(*args, **kwargs):
      sink.clear()
      out = inner(*args, **kwargs)
      warn_if_outliers(sink, dynamic_ratio, warned, check)
      sink.clear()
      return out

    return rewritten

  base = site_compressor(rule, init=init, where=where)._replace(rewrite=rewrite)
  if observer is None or apply_fn is None:
    return base
  observed_fn = apply_fn
  inputs_of = observe_inputs or (lambda *batch: batch[:1])

  def update(params, state, *, grads=None, batch=None, **extra):
    new_params, new_state = base.update(params, state, grads=grads, **extra)
    if batch is None or not state.data:
      return new_params, new_state
    ranges = {k: (jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)) for k, (lo, hi) in state.data.items()}
    inputs = tuple(inputs_of(*batch))
    moved, seen = observe(
      observed_fn, split(params)[0], inputs, ranges, averaging_constant=c_avg, where=pred, axis_name=axis_name
    )
    for key, x in seen.items():
      warn_if_outlier(key, x, outlier_ratio, warned)
    if freeze_step is not None:
      live = state.count < freeze_step
      moved = {k: tuple(jnp.where(live, m, r) for m, r in zip(moved[k], ranges[k])) for k in ranges}
    return new_params, new_state._replace(data=moved)

  return base._replace(update=update)


def qat(
  weight_bits: int = 8,
  act_bits: int = 8,
  *,
  per_channel: bool = True,
  act_symmetric: bool = False,
  integer: bool = True,
  apply_fn: Callable[..., Any] | None = None,
  batches: Iterable[Any] | None = None,
  axis_name: str | None = None,
  where: select.Where = None,
  observer: str | None = None,
  averaging_constant: float = 0.01,
  freeze_step: int | None = None,
  outlier_ratio: float | None = 10.0,
  backward: str = "float",
  seed: int = 0,
  backward_operands: str = "quantized",
  outlier_every: int | None = None,
) -> Compressor:
  """Quantization-aware training of weights and activations: one compressor.

  ``chain(fake_quant(weight_bits, per_channel=per_channel, where=where),
  quantize_activations(act_bits, integer=integer, ...))``: the weights are fake-quantized
  symmetric per output channel (the leaf's last axis) or per tensor, the activations per
  tensor at calibrated (``apply_fn`` and ``batches``) or dynamic ranges, and with
  ``integer`` every op whose weight scales lie along its output features runs as
  ``int8 × int8 → int32``. ``pack`` stores exactly the weights the model trained with.

  Args:
    weight_bits: 2..8 with ``integer`` (int8 containers), 2..16 otherwise.
    act_bits: 2..8 with ``integer``, 2..16 otherwise.
    per_channel: weight scales per output channel (else per tensor).
    act_symmetric: symmetric signed activation codes instead of asymmetric unsigned
      ones with a zero point (Jacob et al. 2018's default).
    integer: run the forward ops on int8 codes.
    apply_fn: the model, for activation calibration.
    batches: calibration batches; ``None`` uses each batch's own range.
    axis_name: under ``pmap``, the axis to reduce dynamic activation ranges over.
    where: which weights (and the sites they feed), by path (default: every floating
      leaf with ``ndim >= 2``, and every site).
    observer, averaging_constant, freeze_step, outlier_ratio, outlier_every: the activation
      ranges' moving-average observer and outlier warning, as for :func:`quantize_activations`
      (the observer needs ``apply_fn`` and ``batches``).
    backward, seed: ``backward='int8'`` (with ``integer``) makes the whole step int8: the
      matmuls' input and weight gradients run as int8 dots on the forward's codes and a
      stochastically rounded int8 gradient, as for :func:`quantize_activations`.
    backward_operands: with ``integer`` and ``backward='float'``: ``'quantized'`` (default,
      Jacob et al.'s fake-quantization graph) differentiates each op at the dequantized
      activation and fake-quantized weight; ``'float'`` (AQT's and Qwix's default) at the float
      activation and this stage's float weight, which keeps no float copy of the quantized
      weight for the backward pass (on an MLP 1024-4096-4096-10, about 150 MB fewer bytes
      moved per step by XLA's count; ``experiments/bench_qat.py`` times both).

  Returns:
    A :class:`~jaxcompress.Compressor` (a :func:`~jaxcompress.chain`).

  Raises:
    ValueError: on bit-widths out of range, or a bad observer or backward setting (as
      :func:`quantize_activations`).

  References:
    Jacob et al. 2018, https://arxiv.org/abs/1712.05877 (integer-arithmetic inference);
    with ``backward='int8'``, Abdolrashidi et al. 2021, "Pareto-Optimal Quantized ResNet Is
    Mostly 4-bit" (AQT), https://arxiv.org/abs/2105.03536, and Gupta et al. 2015,
    https://arxiv.org/abs/1502.02551 (stochastic rounding).

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = qat(weight_bits=4)
    >>> params, state = c.init({'w': jnp.array([[0.7, -0.2], [0.1, 0.4]])})
    >>> out = c.rewrite(model, params, state)(c.apply(params, state), jnp.ones((1, 2)))
    >>> [round(v, 3) for v in out[0].tolist()]
    [0.8, 0.229]
  """
  for name, flag in (("integer", integer), ("act_symmetric", act_symmetric), ("per_channel", per_channel)):
    if not isinstance(flag, bool):
      raise ValueError(f"{name} must be a bool, got {flag!r}")
  high = 8 if integer else 16
  validate.check_bits("weight_bits", weight_bits, low=2, high=high)
  validate.check_bits("act_bits", act_bits, low=2, high=high)
  weights = fake_quant(weight_bits, per_channel=per_channel, where=where)
  acts = quantize_activations(
    act_bits,
    apply_fn=apply_fn,
    batches=batches,
    symmetric=act_symmetric,
    integer=integer,
    weight_bits=min(weight_bits, 8),
    per_channel=per_channel,
    axis_name=axis_name,
    where=where,
    observer=observer,
    averaging_constant=averaging_constant,
    freeze_step=freeze_step,
    outlier_ratio=outlier_ratio,
    backward=backward,
    seed=seed,
    backward_operands=backward_operands,
    outlier_every=outlier_every,
  )
  return chain(weights, acts)
