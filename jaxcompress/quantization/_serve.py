"""Serving quantized models through integer matmuls.

W8A8: each matmul or convolution whose weight is an 8-bit-or-narrower symmetric
:class:`~jaxcompress.export.QArray` runs as ``int8 × int8 → int32`` (``dot_general`` /
``conv_general_dilated`` with ``preferred_element_type=int32``), then one rescale by
``activation_scale · weight_scale``. Activations are asymmetric unsigned codes with a
zero point by default (stored shifted into int8, with an exact per-output correction)
or symmetric signed ones. Weights below 8 bits use int8 containers, so no
``int4 × int4`` dot is ever emitted (XLA's CPU backend cannot compile those).
Weight-only: the codes are dequantized right before the op. An int8 convolution runs as
im2col and one ``int8 × int8 → int32`` matmul (the same integers; XLA's CPU backend lowers
int8 convolutions far slower than float32 ones).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core.tree import PyTree, is_packed_leaf, path_str
from jaxcompress.export._base import on_device
from jaxcompress.quantization import calibration, uniform
from jaxcompress.quantization._activation_quant import activation_scale
from jaxcompress.quantization._spec import QuantSpec


def _integer_weights(packed: PyTree) -> dict[str, export.QArray]:
  flat, _ = jax.tree_util.tree_flatten_with_path(packed, is_leaf=is_packed_leaf)
  return {
    path_str(kp): leaf
    for kp, leaf in flat
    if isinstance(leaf, export.QArray) and leaf.bits <= 8 and leaf.zero_point is None and leaf.group_size is None
  }


def output_scale(site: graph.Site, w_scale: jax.Array) -> jax.Array | None:
  """The weight scale laid out on the site's output, or ``None`` if it varies off the feature axis."""
  w_scale = jnp.asarray(w_scale, jnp.float32)
  varying = [a for a, d in enumerate(w_scale.shape) if d != 1]
  if not varying:
    return w_scale.reshape(())
  if len(varying) != 1 or tuple(varying) != site.feature_axes:
    return None
  (f,) = varying
  out_ndim = len(site.output_shape)
  if site.op == "dot_general":
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    contract, batch = (rc, rb) if site.weight_operand == 1 else (lc, lb)
    free = [a for a in range(len(site.weight_shape)) if a not in contract and a not in batch]
    other_free = (
      len(site.activation_shape) - len(site.params["dimension_numbers"][0][1 - site.weight_operand]) - len(batch)
    )
    pos = len(batch) + (other_free if site.weight_operand == 1 else 0) + free.index(f)
  else:
    pos = site.params["dimension_numbers"].out_spec[1]
  shape = [1] * out_ndim
  shape[pos] = w_scale.size
  return w_scale.reshape(shape)


def activation_codes(
  spec: QuantSpec, activation: jax.Array, scale: jax.Array, zero_point: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """An activation's codes in an int8 container, and where it lies inside the code range.

  Codes ``q = clip(round(x / scale) + zero_point, qmin, qmax)``; unsigned 8-bit codes
  (0..255) are stored shifted by 128 so that they fit int8 (:func:`integer_op` undoes it).

  Returns:
    ``(codes, shift, inside)``: ``int8`` codes ``q - shift``, the ``int32`` scalar
    ``shift - zero_point`` that :func:`integer_op` corrects by, and the ``bool`` mask of
    the elements whose rounded code lies in the range (the straight-through gradient's,
    as :func:`~jaxcompress.quantization.uniform.fake_quant`).
  """
  qmin, qmax = spec.qrange
  z = jnp.zeros((), jnp.int32) if zero_point is None else jnp.reshape(zero_point, ()).astype(jnp.int32)
  v = jnp.round(uniform.times_reciprocal(activation, scale)) + z.astype(activation.dtype)
  offset = 128 if qmax > 127 else 0
  codes = (jnp.clip(v, qmin, qmax) - offset).astype(jnp.int8)
  return codes, offset - z, (v >= qmin) & (v <= qmax)


def integer_op(
  site: graph.Site,
  a_codes: jax.Array,
  w_codes: jax.Array,
  scale: jax.Array,
  dtype: Any,
  shift: jax.Array | None = None,
) -> jax.Array:
  """The site's op on int8 codes, ``int8 × int8 → int32``, then one rescale to ``dtype``.

  With an asymmetric activation the codes stand for ``a_codes + shift`` (``shift = 128 -
  zero_point``, :func:`activation_codes`), and the op is linear, so ``op(a_codes + shift,
  w) = op(a_codes, w) + shift · op(1, w)``: the second term is one more example of ones
  in the same int8 op, zero-padded like the activation, so convolution borders come out
  right.

  Args:
    site: the matmul or convolution.
    a_codes: ``int8`` activation codes of the activation's shape.
    w_codes: ``int8`` weight codes of the weight operand's shape.
    scale: ``activation_scale · weight_scale`` laid out on the op's output (a scalar,
      or per output feature: :func:`output_scale`).
    dtype: the output dtype.
    shift: the ``int32`` scalar the codes are offset by, or ``None`` (symmetric).
  """
  if shift is None:
    acc = int8_compute(site, a_codes, w_codes)
  else:
    acc = _shifted_op(site, a_codes, w_codes, shift)
  return (acc.astype(jnp.float32) * scale).astype(dtype)


def int8_compute(site: graph.Site, a_codes: jax.Array, w_codes: jax.Array) -> jax.Array:
  """The site's op on int8 operands with an ``int32`` result; a convolution as im2col and a matmul.

  The result is the same integers as ``site.compute(..., preferred_element_type=int32)``
  (both accumulate exactly in int32). Convolutions with feature or batch groups, input
  dilation or the weight as the first operand run as the plain op.
  """
  p = site.params
  if site.op != "conv_general_dilated" or site.weight_operand != 1:
    return site.compute(a_codes, w_codes, preferred_element_type=jnp.int32)
  if p["feature_group_count"] != 1 or p["batch_group_count"] != 1 or any(d != 1 for d in p["lhs_dilation"]):
    return site.compute(a_codes, w_codes, preferred_element_type=jnp.int32)
  dn = p["dimension_numbers"]
  lhs = jnp.transpose(a_codes, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))  # (N, spatial..., C)
  rhs = jnp.transpose(w_codes, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))  # (spatial..., I, O)
  spatial = len(dn.lhs_spec) - 2
  zero = jnp.zeros((), lhs.dtype)
  lhs = jax.lax.pad(lhs, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in p["padding"]), (0, 0, 0)])
  out_sizes = [site.output_shape[a] for a in dn.out_spec[2:]]
  n, c = lhs.shape[0], lhs.shape[-1]
  columns = []
  for offsets in itertools.product(*(range(k) for k in rhs.shape[:spatial])):
    start = [0, *(o * d for o, d in zip(offsets, p["rhs_dilation"])), 0]
    limit = [n, *(s + (m - 1) * st + 1 for s, m, st in zip(start[1:-1], out_sizes, p["window_strides"])), c]
    columns.append(jax.lax.slice(lhs, start, limit, (1, *p["window_strides"], 1)))
  cols = jnp.concatenate(columns, axis=-1)  # (N, out spatial..., window x C), the kernel's row-major order
  kernel = rhs.reshape(-1, rhs.shape[-1])
  out = jax.lax.dot_general(cols, kernel, (((cols.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  perm = [0] * out.ndim  # (N, out spatial..., O) -> the op's output layout
  perm[dn.out_spec[0]], perm[dn.out_spec[1]] = 0, out.ndim - 1
  for i, a in enumerate(dn.out_spec[2:]):
    perm[a] = 1 + i
  return jnp.transpose(out, perm)


def _example_axis(site: graph.Site) -> int | None:
  """The activation's example axis (its first free axis), or ``None`` if it has none."""
  n = len(site.activation_shape)
  if site.op == "dot_general":
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    taken = set(lc) | set(lb) if site.weight_operand == 1 else set(rc) | set(rb)
    return next((a for a in range(n) if a not in taken), None)
  return site.params["dimension_numbers"].lhs_spec[0] if site.weight_operand == 1 else None


def _shifted_op(site: graph.Site, a_codes: jax.Array, w_codes: jax.Array, shift: jax.Array) -> jax.Array:
  """``op(a_codes + shift, w_codes)`` in int32, from int8 operands.

  ``op(a + shift, w) = op(a, w) + shift · op(1, w)``. The second term rides along in the
  same int8 op as one more example of ones (zero-padded like the activation, so conv
  borders are exact), which costs one example's work and no separate pass over the weight.
  """
  axis = _example_axis(site)
  if axis is None:  # no example axis to extend: a second, float32 op (exact below 2^24)
    ones = jnp.ones(site.activation_shape, jnp.float32)
    sums = site.compute(ones, w_codes.astype(jnp.float32)).astype(jnp.int32)
    return int8_compute(site, a_codes, w_codes) + shift * sums
  one = list(a_codes.shape)
  one[axis] = 1
  extended = jnp.concatenate([a_codes, jnp.ones(one, a_codes.dtype)], axis=axis)
  out = int8_compute(site, extended, w_codes)
  n = a_codes.shape[axis]
  out_axis = next(i for i, (d, e) in enumerate(zip(out.shape, site.output_shape)) if d != e)
  acc = jax.lax.slice_in_dim(out, 0, n, axis=out_axis)
  return acc + shift * jax.lax.slice_in_dim(out, n, n + 1, axis=out_axis)


def integer_rule(weights: dict[str, Any], act_spec: QuantSpec | None, act_ranges: dict | None) -> graph.Rule:
  """The serving rule: int8 × int8 → int32 where possible, dequantized weights otherwise.

  Args:
    weights: ``{path: QArray}`` of the integer-servable weights, with traced arrays.
    act_spec: the activation quantizer (at most 8 bits; symmetric, or asymmetric with a
      zero point), or ``None`` for weight-only serving.
    act_ranges: calibrated ranges per ``site.key`` (``None``: dynamic per batch).
  """

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    q = weights.get(site.path)
    w_scale, codes = None, None
    if q is not None and tuple(q.shape) == site.weight_shape:
      w_scale = jnp.asarray(q.scale)
      codes = jnp.asarray(export.materialize(q.codes)).astype(jnp.int8)
    elif q is not None and site.leaf_axes is not None and jnp.ndim(q.scale) in (0, len(site.leaf_axes)):
      # The op reads the leaf transposed and flipped off its features (nn.ConvTranspose with
      # transpose_kernel): the scales in the op's layout, and the codes back from the
      # dequantized operand (exact: code · scale divided by scale rounds to the code).
      w_scale = jnp.asarray(q.scale)
      w_scale = jnp.transpose(w_scale, site.leaf_axes) if w_scale.ndim else w_scale
      qmax = 2 ** (q.bits - 1) - 1
      codes = jnp.clip(jnp.round(uniform.divide(weight.astype(jnp.float32), w_scale)), -qmax - 1, qmax).astype(jnp.int8)
    out_scale = None if w_scale is None else output_scale(site, w_scale)
    if out_scale is None or codes is None or w_scale is None:
      if q is not None and site.leaf_axes is not None and w_scale is not None:
        features = sorted(site.leaf_axes[a] for a in site.feature_axes)
        warnings.warn(
          f"serve: the per-channel scales of {site.path!r} do not lie along its op's output features (leaf "
          f"axis {features}; a ConvTranspose with transpose_kernel=True has them at -2), so this op runs in "
          f"float; quantize that leaf with axis={features[0] - len(site.leaf_axes)} for int8",
          stacklevel=2,
        )
      return site.compute(activation, weight)  # not servable in integers: the dequantized weight
    if act_spec is None:
      return site.compute(activation, codes.astype(activation.dtype) * w_scale.astype(activation.dtype))
    a_scale, a_zero = activation_scale(act_spec, site, activation, act_ranges)
    a_codes, shift, _ = activation_codes(act_spec, activation, a_scale, a_zero)
    shift = None if act_spec.symmetric else shift
    return integer_op(site, a_codes, codes, jnp.reshape(a_scale, ()) * out_scale, activation.dtype, shift)

  return rule


def serve(
  apply_fn: Callable[..., Any],
  packed: PyTree,
  *,
  act_ranges: dict | None = None,
  act_bits: int | None = 8,
  act_symmetric: bool = False,
) -> Callable[..., Any]:
  """Runs a packed model with integer matmuls.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the float model.
    packed: the packed params (``QArray`` weights), for example :func:`ptq`'s.
    act_ranges: calibrated activation ranges ``{site.key: (xmin, xmax)}`` (static
      W8A8); ``None`` quantizes each batch's activations with its own range.
    act_bits: activation bits (2..8) for the integer path, or ``None`` for weight-only
      serving (dequantized weights, float activations).
    act_symmetric: symmetric signed activation codes; by default asymmetric unsigned
      codes with a zero point (Jacob et al. 2018: post-ReLU activations use all 256
      levels), as :func:`~jaxcompress.quantization.quantize_activations` trains them.

  Returns:
    ``fn(*inputs) -> outputs``, jitted, with ``packed`` passed as an argument (its NumPy
    leaves copied to the default device once, here).

  Raises:
    ValueError: if ``act_bits`` is outside 2..8, or at call time if a calibrated
      range is missing for a site.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress.quantization._ptq import ptq
    >>> params = {'w': jnp.array([[0.5, -1.0], [0.25, 2.0]])}
    >>> q = ptq(lambda p, x: x @ p['w'], params)
    >>> [round(v, 3) for v in serve(lambda p, x: x @ p['w'], q.packed)(jnp.ones((1, 2)))[0].tolist()]
    [0.752, 0.992]
  """
  if act_ranges is not None:
    calibration.check_ranges(act_ranges)
  act_spec = None
  if act_bits is not None:
    if not 2 <= int(act_bits) <= 8:
      raise ValueError(f"act_bits must be in [2, 8] for int8 matmuls, got {act_bits}")
    act_spec = QuantSpec(int(act_bits), symmetric=act_symmetric)

  if not _integer_weights(packed):
    warnings.warn(
      "serve: no weight of `packed` is a symmetric QArray of at most 8 bits, so every op runs in "
      "float on the dequantized weights (codebook, affine and per-group leaves are served that way); "
      "for int8 matmuls pack with a symmetric uniform quantizer (fake_quant, qat, ptq)",
      stacklevel=2,
    )

  # Host (NumPy) leaves, as a compressor's pack leaves them, go to the device once here, not on every call.
  packed = on_device(packed)

  @jax.jit
  def run(packed, *inputs):
    rule = integer_rule(_integer_weights(packed), act_spec, act_ranges)
    return graph.rewrite(apply_fn, rule, where=lambda path, site: True)(export.materialize_tree(packed), *inputs)

  return lambda *inputs: run(packed, *inputs)


SERVE_KEY = "serve"


def serving_extras(
  act_ranges: dict | None = None, *, act_bits: int | None = 8, act_symmetric: bool = False
) -> dict[str, Any]:
  """What :func:`serve` needs besides the weights, for ``export.save(..., extras=)``.

  Args:
    act_ranges: calibrated ranges ``{site.key: (xmin, xmax)}`` (from a QAT state:
      :func:`activation_ranges`; :func:`ptq`'s ``act_ranges``), or ``None`` (dynamic).
    act_bits: activation bits (2..8), or ``None`` for weight-only serving.
    act_symmetric: symmetric signed activation codes.

  Returns:
    ``{'serve': {'act_ranges': {key: [xmin, xmax]} | None, 'act_bits': ..., 'act_symmetric': ...}}``:
    plain JSON values (float32 ranges are stored exactly), merged into other extras as the
    caller likes; :func:`serve_file` reads it back.

  Raises:
    ValueError: if a range is non-finite or inverted, or ``act_bits`` is outside 2..8.

  Example:
    >>> serving_extras({'w': (0.0, 1.5)})
    {'serve': {'act_ranges': {'w': [0.0, 1.5]}, 'act_bits': 8, 'act_symmetric': False}}
  """
  if act_bits is not None and not 2 <= act_bits <= 8:
    raise ValueError(f"act_bits must be in [2, 8] for int8 matmuls, got {act_bits}")
  ranges = None
  if act_ranges is not None:
    calibration.check_ranges(act_ranges)
    ranges = {str(k): [float(np.float32(lo)), float(np.float32(hi))] for k, (lo, hi) in act_ranges.items()}
  return {SERVE_KEY: {"act_ranges": ranges, "act_bits": act_bits, "act_symmetric": act_symmetric}}


def serve_file(
  path: Any,
  apply_fn: Callable[..., Any],
  *,
  narrow: bool = False,
  device: Any = None,
  sharding: Any = None,
) -> Callable[..., Any]:
  """From a file to the integer-served function in one call.

  Reads the packed weights and the serving parameters saved with them
  (``export.save(path, packed, extras=serving_extras(...))``) and returns :func:`serve` of
  them, so the served function equals ``serve(apply_fn, packed, act_ranges=..., ...)`` on the
  in-memory tree.

  Args:
    path: a file written by :func:`jaxcompress.export.save` with :func:`serving_extras`.
    apply_fn: ``apply_fn(params, *inputs)`` of the float model; with ``narrow``, of the
      narrowed model (``pruning.narrow_nnx``'s module, ``pruning.narrow_linen(module)``).
    narrow: serve the kept blocks of channel-pruned leaves (:func:`jaxcompress.export.narrowed`),
      so a pruned and quantized layer runs narrow and in integers.
    device: a ``jax.Device`` to place the weights on.
    sharding: a ``jax.sharding.Sharding`` (or ``(name, array) -> Sharding``) for the weights.

  Returns:
    ``fn(*inputs) -> outputs``, as :func:`serve`.

  Raises:
    ValueError: if the file holds no serving parameters.
    jaxcompress.export.CorruptFileError: if the file fails its checks.
  """
  with export.open_file(path) as f:
    packed = f.read(device=device, sharding=sharding)
    config = f.extras.get(SERVE_KEY)
  if not isinstance(config, dict) or set(config) != {"act_ranges", "act_bits", "act_symmetric"}:
    raise ValueError(
      f"{path} holds no serving parameters (extras {sorted(f.extras)}): save it with "
      "extras=jaxcompress.quantization.serving_extras(...)"
    )
  ranges = config["act_ranges"]
  if ranges is not None:
    ranges = {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()}
  if narrow:
    packed = export.narrowed(packed)
  return serve(apply_fn, packed, act_ranges=ranges, act_bits=config["act_bits"], act_symmetric=config["act_symmetric"])
