"""GPTQ: one-shot weight quantization that corrects each rounding error with the Hessian."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree
from jaxcompress.export._base import on_device
from jaxcompress.graph._hessian import (
  InputHessian,
  LayerReport,
  LayerResult,
  damped_inverse_cholesky,
  for_each_block,
  layerwise,
  output_error,
  unit_scale,
)
from jaxcompress.quantization import uniform
from jaxcompress.quantization._spec import QuantSpec

_HI = jax.lax.Precision.HIGHEST


class GPTQResult(NamedTuple):
  """The result of :func:`gptq`; its first four fields are a
  :class:`~jaxcompress.quantization.QuantizedModel`'s.

  Attributes:
    apply: ``apply(packed, *inputs)``: the model with the dequantized weights.
    packed: the params with :class:`~jaxcompress.export.QArray` kernels, on the device
      (``jax.Array`` leaves, as :func:`~jaxcompress.quantization.ptq`'s).
    act_ranges: ``None`` (weights only).
    act_spec: ``None``.
    layers: ``{path: LayerReport}``.
  """

  apply: Callable[..., Any]
  packed: PyTree
  act_ranges: None
  act_spec: None
  layers: dict[str, LayerReport]


def _check_options(bits, group_size, block_size, damp, act_order, symmetric) -> None:
  validate.check_bits("bits", bits, low=2, high=8)
  if group_size is not None:
    validate.check_int("group_size", group_size, low=1)
  validate.check_int("block_size", block_size, low=1)
  validate.check_float("damp", damp, low=0.0, low_open=True)
  for name, v in (("act_order", act_order), ("symmetric", symmetric)):
    if not isinstance(v, bool):
      raise ValueError(f"{name} must be a bool, got {v!r}")


def _row_params(symmetric: bool, qrange: Any, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row ``(scale, zero_point)`` of ``w`` ``(rows, k)`` from its own range (widened to 0),
  as :meth:`QuantSpec.params_from_range` computes them; ``qrange = (qmin, qmax)`` may be
  traced, so one compiled program serves every bit-width."""
  lo, hi = jnp.min(w, axis=1), jnp.max(w, axis=1)
  qrange = cast(Any, qrange)  # traced ints where uniform's signatures say int: the arithmetic is the same
  if symmetric:
    scale = uniform.symmetric_params(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), qrange[1])
    return scale, jnp.zeros(scale.shape, jnp.int32)
  return uniform.affine_params(lo, hi, qrange[0], qrange[1])


def _quantize(qrange: jax.Array, w: jax.Array, scale: jax.Array, zero: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Codes and dequantized values of ``w`` on the grid ``(scale, zero)``."""
  q = jnp.clip(jnp.round(w * (1.0 / scale)) + zero, qrange[0], qrange[1])
  return q.astype(jnp.int32), (q - zero) * scale


@functools.partial(jax.jit, static_argnames=("symmetric", "group_size", "block_size", "static_groups"))
def _gptq_rows(w, u, scales, zeros, group_of, qrange, *, symmetric, group_size, block_size, static_groups):
  """Algorithm 1 of GPTQ on ``w`` ``(rows, cols)`` (columns already in processing order).

  ``u`` is the upper Cholesky factor of the damped ``H⁻¹`` in the same order. With
  ``group_size`` and not ``static_groups``, each group's grid is computed when its first
  column is reached, on the weights updated so far; otherwise column ``j`` uses the grid
  ``scales[group_of[j]]`` given. Returns the codes ``(rows, cols)`` and the grids used.
  """
  rows, cols = w.shape
  dynamic = group_size is not None and not static_groups

  def block(i1, size, carry):
    w, codes, scales, zeros = carry
    hinv = jax.lax.dynamic_slice(u, (i1, i1), (size, size))

    def column(i, carry):
      w1, block_codes, err1, scales, zeros = carry
      j = i1 + i
      if dynamic:
        g = j // group_size
        window = jax.lax.dynamic_slice_in_dim(w1, i, group_size, axis=1)
        s_new, z_new = _row_params(symmetric, qrange, window)
        first = j % group_size == 0
        scales = scales.at[g].set(jnp.where(first, s_new, scales[g]))
        zeros = zeros.at[g].set(jnp.where(first, z_new, zeros[g]))
      else:
        g = group_of[j]
      col = w1[:, i]
      q, dq = _quantize(qrange, col, scales[g], zeros[g])
      err = (col - dq) / hinv[i, i]
      w1 = w1 - err[:, None] * hinv[i][None, :]  # hinv is upper triangular: columns < i untouched
      return w1, block_codes.at[:, i].set(q), err1.at[:, i].set(err), scales, zeros

    w1 = jax.lax.dynamic_slice_in_dim(w, i1, size, axis=1)
    start = (w1, jnp.zeros((rows, size), jnp.int32), jnp.zeros((rows, size), w.dtype), scales, zeros)
    _, block_codes, err1, scales, zeros = jax.lax.fori_loop(0, size, column, start)
    # The lazy batch update of the later columns (U is upper triangular, so the rows of U
    # in this block are zero before it; the block's own columns are done and not read again).
    w = w - jnp.matmul(err1, jax.lax.dynamic_slice_in_dim(u, i1, size, axis=0), precision=_HI)
    return w, jax.lax.dynamic_update_slice_in_dim(codes, block_codes, i1, axis=1), scales, zeros

  carry = (w, jnp.zeros((rows, cols), jnp.int32), scales, zeros)
  _, codes, scales, zeros = for_each_block(cols, block_size, block, carry)
  return codes, scales, zeros


def gptq_layer(
  kernel: Any,
  hessian: Any,
  *,
  bits: int = 4,
  group_size: int | None = 128,
  act_order: bool = True,
  damp: float = 0.01,
  block_size: int = 128,
  symmetric: bool = False,
  name: str = "kernel",
) -> tuple[export.QArray, jax.Array, LayerReport]:
  """Quantizes one Dense kernel with GPTQ (Frantar et al. 2022, Algorithm 1).

  The columns of ``W = kernelᵀ`` (one per input feature) are quantized one at a time, in
  order of decreasing ``H_jj`` with ``act_order``; each rounding error is spread over the
  columns not yet quantized through the upper Cholesky factor ``U`` of the damped
  ``H⁻¹`` (``W_{:, j:} -= (w_j - q_j) / U_jj · U_{j, j:}``), within lazy blocks of
  ``block_size`` columns whose accumulated update reaches the later columns once per
  block. The result is the same as column by column, up to float rounding.

  Grids: with ``group_size``, one affine (or symmetric) grid per ``group_size``
  consecutive input features per output feature. Without ``act_order`` each group's grid
  is computed from its weights as updated when its first column is reached, as the
  paper's code does (the lazy block is rounded up to a multiple of ``group_size``, so a
  group never straddles a pending block update and the blocked result equals the
  unblocked one). With ``act_order`` the grids are the reference code's *static groups*:
  computed up front from the original weights, one per group of consecutive features in
  the kernel's own order, so the result is an ordinary
  :class:`~jaxcompress.export.QArray` that needs no permutation index (the paper's other
  choice, groups formed in the permuted order, would need one). With
  ``group_size=None``: one grid per output feature from the original weights.
  Affine grids span ``[min(w, 0), max(w, 0)]`` onto ``[0, 2^b - 1]`` as in the paper's
  code; symmetric ones are this library's narrow signed range ``max|w| / (2^(b-1) - 1)``
  (the paper's code instead centres an unsigned range). Dead inputs (``H_jj = 0``) get
  ``H_jj = 1`` and weight 0, as in the reference.

  Args:
    kernel: ``float[in, out]`` (Flax layout).
    hessian: ``float[in, in]``, ``2XᵀX/n`` of the kernel's inputs.
    bits: 2..8.
    group_size: features per grid along the input axis (must divide ``in``), or ``None``.
    act_order: process the columns by decreasing ``H_jj`` (the permutation is undone in
      the stored codes).
    damp: relative damping ``λ > 0``: ``H + λ·mean(diag H)·I``; raised ×10 (with a
      warning) up to four times when the Cholesky factorization fails.
    block_size: columns per lazy batch update (the paper's 128).
    symmetric: symmetric grids instead of affine.
    name: the kernel's name in messages.

  Returns:
    ``(qarray, dense, report)``: the :class:`~jaxcompress.export.QArray` (the kernel's
    shape and dtype), what its ``materialize()`` returns, and a :class:`LayerReport`.

  Raises:
    ValueError: on ``bits`` outside 2..8, ``group_size`` not dividing ``in``,
      ``damp <= 0``, a kernel that is not 2-D or is empty, a Hessian of the wrong shape,
      or non-finite inputs; each message names the value.
    TypeError: on a kernel that is not floating point.

  References:
    Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", https://arxiv.org/abs/2210.17323.
  """
  _check_options(bits, group_size, block_size, damp, act_order, symmetric)
  k = np.asarray(kernel) if not isinstance(kernel, jax.Array) else kernel
  if not jnp.issubdtype(k.dtype, jnp.floating):
    raise TypeError(f"{name}: GPTQ quantizes floating-point kernels, got dtype {k.dtype}")
  if k.ndim != 2 or 0 in k.shape:
    raise ValueError(f"{name}: GPTQ quantizes non-empty 2-D (in, out) kernels, got shape {tuple(k.shape)}")
  n_in, n_out = k.shape
  h = np.asarray(hessian, np.float32)
  if h.shape != (n_in, n_in):
    raise ValueError(f"{name}: the Hessian has shape {h.shape}, expected ({n_in}, {n_in}) for a kernel {k.shape}")
  if group_size is not None and n_in % group_size:
    raise ValueError(
      f"{name}: group_size={group_size} does not divide the input dimension {n_in} of kernel {(n_in, n_out)}"
    )
  if not (np.all(np.isfinite(h)) and np.all(np.isfinite(np.asarray(k, np.float32)))):
    raise ValueError(f"{name}: the kernel or its Hessian is not finite")
  qrange = np.asarray(QuantSpec(bits, symmetric=symmetric).qrange, np.int32)
  dead = np.diagonal(h) == 0
  h = h.copy()
  h[dead, dead] = 1.0
  perm = np.argsort(-np.diagonal(h), kind="stable") if act_order else np.arange(n_in)
  u, _, lam = damped_inverse_cholesky(unit_scale(h[np.ix_(perm, perm)]), damp, name=name)
  gs = group_size
  mode = "channel" if gs is None else "static" if act_order else "dynamic"
  block = block_size if gs is None or mode != "dynamic" or block_size % gs == 0 else -(-block_size // gs) * gs
  codes, scale, zero, dense = _gptq_kernel(
    k, u, dead, perm.astype(np.int32), qrange, symmetric=symmetric, group_size=gs, block_size=block, mode=mode
  )
  qarray = export.QArray(
    codes=export.store_codes(np.asarray(codes), bits, signed=symmetric),
    scale=np.asarray(scale, np.float32),
    zero_point=None if symmetric else np.asarray(zero, np.int32),
    bits=bits,
    dtype=str(k.dtype),
    group_axis=None if gs is None else 0,
    group_size=gs,
  )
  report = LayerReport(damp=lam, tokens=0, error=output_error(k, dense, hessian), dead=int(dead.sum()))
  return qarray, dense, report


@functools.partial(jax.jit, static_argnames=("symmetric", "group_size", "block_size", "mode"))
def _gptq_kernel(kernel, u, dead, perm, qrange, *, symmetric, group_size, block_size, mode):
  """The whole of one kernel under one ``jit``: ``(codes[in, out], scale, zero_point, dense)``
  with ``scale``/``zero_point`` laid out as :class:`~jaxcompress.export.QArray` stores them
  and ``dense`` what its ``materialize`` returns."""
  n_in, n_out = kernel.shape
  w = jnp.where(dead[:, None], 0.0, kernel.astype(jnp.float32)).T  # (out, in)
  gs = group_size
  if mode == "channel":  # one grid per output feature, from the original weights
    s, z = _row_params(symmetric, qrange, w)
    scales, zeros, group_of = s[None], z[None], jnp.zeros((n_in,), jnp.int32)
  elif mode == "static":  # static groups over the original feature order
    blocks = w.reshape(n_out, n_in // gs, gs).transpose(1, 0, 2)
    scales, zeros = jax.vmap(lambda b: _row_params(symmetric, qrange, b))(blocks)
    group_of = perm // gs
  else:
    scales, zeros = jnp.ones((n_in // gs, n_out), jnp.float32), jnp.zeros((n_in // gs, n_out), jnp.int32)
    group_of = jnp.zeros((n_in,), jnp.int32)
  codes, scales, zeros = _gptq_rows(
    w[:, perm], u, scales, zeros, group_of, qrange, symmetric=symmetric, group_size=gs, block_size=block_size,
    static_groups=mode != "dynamic",
  )  # fmt: skip
  codes = codes[:, jnp.argsort(perm)].T  # (in, out), the permutation undone
  shape = (1, n_out) if gs is None else (n_in // gs, 1, n_out)
  scale, zero = scales.reshape(shape), zeros.reshape(shape)
  blocked = codes if gs is None else codes.reshape(n_in // gs, gs, n_out)
  dense = ((blocked - (0 if symmetric else zero)).astype(jnp.float32) * scale).reshape(n_in, n_out)
  limit = float(jnp.finfo(kernel.dtype).max)  # as QArray.materialize: saturate, cast
  return codes, scale, zero, jnp.clip(dense, -limit, limit).astype(kernel.dtype)


def gptq(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  *,
  bits: int = 4,
  group_size: int | None = 128,
  act_order: bool = True,
  damp: float = 0.01,
  block_size: int = 128,
  symmetric: bool = False,
  where: select.Where = None,
  token_mask: Any = None,
  sequential: bool = True,
) -> GPTQResult:
  """Quantizes a trained model's Dense kernels with GPTQ, from calibration data.

  Each selected kernel's input Hessian ``H = 2XᵀX/n`` is gathered on ``batches``
  (:func:`~jaxcompress.graph.input_hessians`, padding dropped with ``token_mask``) and
  the kernel is quantized by :func:`gptq_layer`. With ``sequential=True`` (the paper's
  scheme) the kernels are processed in execution order and each Hessian is taken from
  the inputs that the already-quantized earlier kernels produce (one forward pass over
  the calibration set per group of kernels sharing an input;
  :func:`~jaxcompress.graph.layerwise`). Like :func:`~jaxcompress.quantization.ptq` the
  result holds :class:`~jaxcompress.export.QArray` kernels, so ``export.save``,
  ``core.accounting.report``, ``export.prune`` and ``quantization.serve`` read it.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the trained params (Flax ``(in, out)`` Dense kernels).
    batches: calibration batches, each a tuple of inputs (or a single array).
    bits, group_size, act_order, damp, block_size, symmetric: as for :func:`gptq_layer`
      (``group_size`` must divide every selected kernel's input dimension).
    where: which kernels (default: every leaf read by a plain Dense site ``x @ kernel``;
      an explicit ``where`` must select only such leaves).
    token_mask: padding mask per batch (``batch -> bool[batch, tokens]``, or a list):
      masked rows are left out of every Hessian.
    sequential: Hessians from the partly quantized model (``False``: all from the float
      model, one pass).

  Returns:
    A :class:`GPTQResult` (``apply``, ``packed``, ``act_ranges=None``, ``act_spec=None``,
    ``layers``).

  Raises:
    ValueError: on bad options (naming the value), a ``group_size`` that does not divide
      a kernel's input dimension (naming the kernel), calibration batches with no valid
      token, or non-finite inputs.

  References:
    Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", https://arxiv.org/abs/2210.17323.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> params = {'w': jax.random.normal(jax.random.key(1), (8, 4))}
    >>> q = gptq(lambda p, x: x @ p['w'], params, [x], bits=4, group_size=None)
    >>> type(q.packed['w']).__name__, q.packed['w'].bits
    ('QArray', 4)
  """
  _check_options(bits, group_size, block_size, damp, act_order, symmetric)

  def solve(path: str, kernel: jax.Array, stats: InputHessian) -> LayerResult:
    qarray, dense, report = gptq_layer(
      kernel,
      stats.hessian,
      bits=bits,
      group_size=group_size,
      act_order=act_order,
      damp=damp,
      block_size=block_size,
      symmetric=symmetric,
      name=f"kernel {path!r}",
    )
    return LayerResult(dense, qarray, report._replace(tokens=stats.tokens))

  packed, _, layers = layerwise(
    apply_fn, params, batches, solve, where=where, token_mask=token_mask, sequential=sequential
  )
  packed = on_device(packed)  # to compute with: no host-to-device copy per call
  return GPTQResult(lambda p, *x: apply_fn(export.materialize_tree(p), *x), packed, None, None, layers)
