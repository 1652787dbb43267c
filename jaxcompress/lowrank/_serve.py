"""Serving factorized models: the factors' ops run at each matmul and conv site.

Through :func:`jaxcompress.graph.rewrite`, a Dense site whose kernel is packed as an
:class:`~jaxcompress.export.Factorized` computes ``(x @ u) @ v`` instead of
``x @ (u @ v)``, and a conv site whose kernel is an
:class:`~jaxcompress.export.ConvFactorized` runs the decomposition's sequence of convs
(spatial SVD: ``h×1`` then ``1×w``; Tucker-2: 1×1, ``h×w``, 1×1; CP: 1×1, depthwise
``h×1``, depthwise ``1×w``, 1×1). The dense kernel is never formed, so the FLOPs that
:func:`jaxcompress.graph.flops` counts and the time measured both drop. With channels
last (Flax's NHWC), the first 1×1 stage is a ``dot_general`` over the channel axis (the
last stays a 1×1 conv: faster on XLA's CPU before the model's bias add) and CP's
depthwise stages pad once, then ``k`` shifted multiply-adds each along ``h`` and ``w``, one
fused loop (XLA's CPU depthwise convolution is several times slower); ``graph.flops`` counts matmuls and convolutions only, so it omits
those ``2·k·R`` FLOPs per output pixel (a few percent of CP's total). Not done, because slower side by side
(measured under load): a conv site's stages over chunks of the batch (``lax.map``, or unrolled
Python chunks inside the one program: the bench's CP 61 ms against 38 ms), a Dense site's rank
padded to a multiple of 8 (LeNet-300-100 at 10%, ranks 7 -> 8: 80 µs against 68 µs), and, since
the convs run on Eigen (below), Tucker-2's inner channel counts padded likewise (49 -> 56: 20.6
against 19.4 ms); CP's taps without the pad (nine shifted, zero-filled slices in one loop: 42.5
against 38.3 ms).

On the CPU, :func:`serve` compiles with one per-computation XLA option: XLA's YNNPACK library
handles only the matmuls (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``), so the convolutions run on
XLA's own Eigen kernels. Side by side in one run (the bench's conv layer, medians of 21
interleaved repetitions, measured under load): spatial SVD 56 -> 38 ms, Tucker-2 65 -> 52 ms, CP
66 -> 51 ms; the Dense-only MLPs unchanged (their matmuls stay on YNNPACK). The dense conv gains
as well (on a quieter machine 72 -> 37 ms), so ``serve`` given dense params compiles the dense
model the same way, and ``experiments/bench_lowrank.py`` times the dense model both ways. A jaxlib
that does not know the option compiles without it.

Where the time goes at the bench's conv layer (per-op minima over 10 profiled calls, glibc
malloc configured for serving, the quietest run, measured under load): CP 17.9 ms = its last
1×1 stage (Eigen dot, 1.56 GFLOP) 7.6 + the first (YNNPACK, 0.78 GFLOP) 4.7 + the taps 2.6 +
the pad 1.8 + the model's bias add 1.0. The two matmuls alone run at 170-210 GFLOP/s, against
~330 for the dense conv (small contraction dims: 64 and 93), and already take more than the
10.6 ms that 0.7 of the FLOP ratio allows. Tried again for that target, not kept (medians of
interleaved repetitions, factorized against this module's programs, measured under load):
CP's stages over batch chunks (``lax.map``, chunks of at most 1, 4 or 8 MiB of rank-R
intermediate) 71.0 / 72.8 / 72.9 against 59.5 ms with glibc's default malloc and 80.3 / 62.6 /
58.8 against 75.1 ms with it configured for serving; Tucker-2 in chunks of 32 images 65.9
against 46.8 ms (serving); other ``xla_cpu_experimental_ynn_fusion_type`` values, which apply
to a whole computation: ``LIBRARY_FUSION_TYPE_DOT`` (fuses CP's pad into the first matmul and
all of Tucker-2 into one YNNPACK fusion) CP 68.9 against 57.1 ms, Tucker-2 92.3 against 88.3;
``INDIVIDUAL_DOT`` with ``ELTWISE`` (CP's taps on YNNPACK) CP 284 against 145 ms; with
``INDIVIDUAL_CONVOLUTION`` Tucker-2 140 against 117 ms; ``INDIVIDUAL_DOT`` with ``ELTWISE``
made spatial SVD one YNNPACK fusion, 60.7 against 69.0 ms (41.9 against 49.8 serving), but the
dense conv 131.6 against 120.7 ms (serving) and CP twice as slow; the last 1×1 stage as a
YNNPACK matmul, CP 103.3 against 98.5 ms, Tucker-2 79.8 against 76.5; CP's taps with their
borders by concatenation instead of a padded buffer, 19.2 against 17.9 ms (profile minima).
A small win, not built: the model's bias add folded into CP's last stage (a ones channel
appended in the taps' loop, the bias as the last 1×1 kernel's extra row), 53.6 against 57.1 ms
(default malloc), 54.6 against 61.2 (serving), faster in 3 of 4 runs; it needs
:func:`jaxcompress.graph.rewrite` to hand a site the bias add that follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import export, graph
from jaxcompress.core.tree import PyTree
from jaxcompress.graph._packed import packed_sites, served

_FACTORED = (export.Factorized, export.ConvFactorized)

# the XLA options serve compiles with on the CPU: YNNPACK for the matmuls only, the convs on Eigen
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _dtype(leaf: Any) -> Any:
  first = leaf.u if isinstance(leaf, export.Factorized) else leaf.factors[0]
  return jnp.dtype(first.dtype)


def _dense_op(site: graph.Site, activation: jax.Array, leaf: export.Factorized) -> jax.Array | None:
  """``(x @ u) @ v`` at a ``dot_general`` that contracts the kernel's first axis, else ``None``."""
  (_, rc), (lb, rb) = site.params["dimension_numbers"]
  if site.weight_operand != 1 or tuple(rc) != (0,) or lb or rb or site.leaf_axes != (0, 1):
    return None
  u, v = (jnp.asarray(export.materialize(f)) for f in (leaf.u, leaf.v))
  y = site.compute(activation, u)
  return site.compute(y, v, dimension_numbers=(((y.ndim - 1,), (0,)), ((), ())))


def _pad_spatial(y: jax.Array, axes: tuple[int, int], pads: Any, lhs_dils: Any) -> jax.Array:
  """``y`` zero-padded (and dilated) along both spatial ``axes`` at once, as the conv would."""
  config = [(0, 0, 0)] * y.ndim
  for axis, pad, dil in zip(axes, pads, lhs_dils, strict=True):
    config[axis] = (int(pad[0]), int(pad[1]), int(dil) - 1)
  return jax.lax.pad(y, jnp.zeros((), y.dtype), config)


def _depthwise_taps(padded: jax.Array, taps: jax.Array, axis: int, stride: int, rhs_dil: int) -> jax.Array:
  """A depthwise 1-D VALID conv along ``axis`` of an already padded ``padded`` (``taps:
  [k, channels]``, channels last) as a sum of ``k`` shifted, strided slices times the taps:
  XLA's CPU depthwise convolution is several times slower than these multiply-adds."""
  k = taps.shape[0]
  out = (padded.shape[axis] - rhs_dil * (k - 1) - 1) // stride + 1
  total = None
  for t in range(k):
    start = t * rhs_dil
    piece = jax.lax.slice_in_dim(padded, start, start + (out - 1) * stride + 1, stride=stride, axis=axis) * taps[t]
    total = piece if total is None else total + piece
  assert total is not None
  return total


def _conv_op(site: graph.Site, activation: jax.Array, leaf: export.ConvFactorized) -> jax.Array | None:
  """The decomposition's conv sequence at a 2-D conv that uses the kernel as laid out, else ``None``."""
  p = site.params
  dn = p["dimension_numbers"]
  if (
    site.weight_operand != 1
    or site.leaf_axes != (0, 1, 2, 3)
    or tuple(dn.rhs_spec) != (3, 2, 0, 1)
    or tuple(dn.lhs_spec) != tuple(dn.out_spec)
    or p.get("feature_group_count", 1) != 1
    or p.get("batch_group_count", 1) != 1
    or len(p["padding"]) != 2
  ):
    return None
  fs = [jnp.asarray(export.materialize(f)) for f in leaf.factors]
  (s0, s1), (pad0, pad1) = p["window_strides"], p["padding"]
  (l0, l1), (d0, d1) = p["lhs_dilation"], p["rhs_dilation"]
  pointwise_conv = {
    "window_strides": (1, 1),
    "padding": ((0, 0), (0, 0)),
    "lhs_dilation": (1, 1),
    "rhs_dilation": (1, 1),
  }
  along_h = {"window_strides": (s0, 1), "padding": (pad0, (0, 0)), "lhs_dilation": (l0, 1), "rhs_dilation": (d0, 1)}
  along_w = {"window_strides": (1, s1), "padding": ((0, 0), pad1), "lhs_dilation": (1, l1), "rhs_dilation": (1, d1)}
  channels_last = dn.lhs_spec[1] == activation.ndim - 1

  def pointwise(y, m, last=False):
    """A 1x1 conv by the matrix ``m [in, out]``: the first one a matmul over the channel axis when it
    is last; the last one stays a 1x1 conv, which XLA's CPU backend follows with the model's bias
    add or activation faster (CP served 96 ms against 128 ms as a matmul, Tucker-2 104 against 107,
    side by side, measured under load; as the program's root the matmul was the faster)."""
    if channels_last and not last:
      dims = (((y.ndim - 1,), (0,)), ((), ()))
      return jax.lax.dot_general(
        y, m, dims, precision=p.get("precision"), preferred_element_type=p.get("preferred_element_type")
      )
    return site.compute(y, m[None, None], **pointwise_conv)

  if leaf.kind == "spatial_svd":
    vertical, horizontal = fs
    return site.compute(site.compute(activation, vertical, **along_h), horizontal, **along_w)
  if leaf.kind == "tucker2":
    first, core, last = fs
    return pointwise(site.compute(pointwise(activation, first), core), last, True)
  # (padding CP's rank 93 to 96 did not help: 114 vs 102 ms, measured under load)
  first, vertical, horizontal, last = fs
  r = first.shape[1]
  y = pointwise(activation, first)
  if channels_last:
    # pad both spatial axes once, then the h-taps and the w-taps: XLA fuses the two sums into one
    # loop (padding again between them split it in two: CP served 110 ms against 69 ms, measured under load)
    y = _pad_spatial(y, (dn.lhs_spec[2], dn.lhs_spec[3]), (pad0, pad1), (l0, l1))
    y = _depthwise_taps(y, vertical, dn.lhs_spec[2], s0, d0)
    y = _depthwise_taps(y, horizontal, dn.lhs_spec[3], s1, d1)
  else:
    y = site.compute(y, vertical[:, None, None, :], feature_group_count=r, **along_h)
    y = site.compute(y, horizontal[None, :, None, :], feature_group_count=r, **along_w)
  return pointwise(y, last, True).astype(site.activation_dtype)


def factorized(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
  """``apply_fn`` on a packed tree, with each factorized kernel's site run as its factors' ops.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the dense model.

  Returns:
    ``fn(packed, *inputs)``, pure (jit it, or give it to
    :func:`jaxcompress.graph.flops` to count the factorized FLOPs). Leaves that are not
    factorized are materialized; a factorized kernel is never rebuilt unless a site uses
    it in a way the factors' ops do not cover (a transposed kernel, grouped convs), where
    the dense kernel is rebuilt for that site.

  Raises:
    ValueError: at call time, if a site uses a factorized kernel through a reshape,
      broadcast or slice (so the dense operand cannot be rebuilt from the leaf).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import export, graph
    >>> packed = {'w': export.factorize(jnp.ones((64, 2)), jnp.ones((2, 32)), (64, 32))}
    >>> fn = factorized(lambda p, x: x @ p['w'])
    >>> fn(packed, jnp.ones((1, 64)))[0, :2].tolist()
    [128.0, 128.0]
    >>> graph.flops(fn, packed, jnp.ones((8, 64)))['flops'], 2 * 8 * 64 * 32  # factorized, dense
    (3072, 32768)
  """

  def op(site: graph.Site, activation: jax.Array, leaf: Any) -> jax.Array | None:
    if site.weight_shape != tuple(leaf.shape):
      return None
    if isinstance(leaf, export.Factorized):
      return _dense_op(site, activation, leaf)
    return _conv_op(site, activation, leaf)

  return packed_sites(apply_fn, _FACTORED, op, _dtype, "factorized")


def serve(apply_fn: Callable[..., Any], packed: PyTree) -> Callable[..., Any]:
  """Runs a packed low-rank model with the factors' ops (see :func:`factorized`).

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the dense model.
    packed: the packed params (from a low-rank compressor's ``pack``, or a chain's).

  Returns:
    ``fn(*inputs) -> outputs``, jitted (on the CPU with one XLA option, see the
    module's docstring), with ``packed`` (put on the default device once, here) passed as
    an argument. Given plain dense params, it is the dense model compiled the same way.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcompress import lowrank
    >>> c = lowrank.svd(2)
    >>> params = {'w': jax.random.normal(jax.random.key(0), (16, 8))}
    >>> packed = c.pack(*c.init(params))
    >>> x = jnp.ones((3, 16))
    >>> bool(jnp.allclose(serve(lambda p, x: x @ p['w'], packed)(x), x @ packed['w'].materialize(), atol=1e-5))
    True
  """
  if jax.default_backend() != "cpu":
    return served(factorized(apply_fn), packed)
  try:
    tuned = jax.jit(factorized(apply_fn), compiler_options=_CPU_OPTIONS)
  except TypeError:  # a jax whose jit takes no compiler options
    return served(factorized(apply_fn), packed)
  plain = jax.jit(factorized(apply_fn))
  on_device = jax.device_put(packed)
  chosen: list[Callable[..., Any]] = []

  def run(*inputs: Any) -> Any:
    if chosen:
      return chosen[0](on_device, *inputs)
    try:  # the first call compiles: a jaxlib without the option rejects it, and then runs without it
      out = tuned(on_device, *inputs)
    except jax.errors.JaxRuntimeError as e:
      if "compile option" not in str(e) and "xla_cpu_experimental_ynn_fusion_type" not in str(e):
        raise
      chosen.append(plain)
      return plain(on_device, *inputs)
    chosen.append(tuned)
    return out

  return run
