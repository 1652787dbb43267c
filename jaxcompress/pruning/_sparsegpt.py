"""SparseGPT: one-shot pruning with the OBS weight update, from calibration data."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, map_with_path
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


class SparseGPTResult(NamedTuple):
  """The result of :func:`sparsegpt`.

  Attributes:
    params: the params with the pruned and updated kernels (dense arrays, exact zeros at
      pruned positions): run the model with ``apply_fn(params, *inputs)``.
    masks: ``bool`` keep-masks mirroring ``params`` (``None`` at unselected leaves), the
      pruning family's form: seed :func:`~jaxcompress.pruning.fixed` with them to fine-tune
      or pack (``export.prune`` stores the survivors sparse).
    layers: ``{path: LayerReport}``.
  """

  params: PyTree
  masks: PyTree
  layers: dict[str, LayerReport]


def _check_options(sparsity, n_m, block_size, damp) -> tuple[float, tuple[int, int] | None]:
  validate.check_int("block_size", block_size, low=1)
  validate.check_float("damp", damp, low=0.0, low_open=True)
  if n_m is None:
    return validate.check_sparsity("sparsity", sparsity), None
  if not (isinstance(n_m, tuple) and len(n_m) == 2):
    raise ValueError(f"n_m must be a pair (n, m) such as (2, 4), got {n_m!r}")
  n = validate.check_int("n_m[0]", n_m[0], low=1)
  m = validate.check_int("n_m[1]", n_m[1], low=1)
  if n > m:
    raise ValueError(f"n_m=(n, m) needs n <= m, got n_m={n_m}")
  return 1.0 - n / m, (n, m)


@functools.partial(jax.jit, static_argnames=("block_size", "sparsity", "n_m"))
def _sparsegpt_rows(w, u, *, block_size, sparsity, n_m):
  """SparseGPT (Algorithm 1) on ``w`` ``(rows, cols)``: the pruned, updated weights and
  the pruned positions."""
  rows, cols = w.shape

  def block(i1, size, carry):
    w, out, pruned_all = carry
    hinv = jax.lax.dynamic_slice(u, (i1, i1), (size, size))
    d = jnp.diagonal(hinv)
    w1 = jax.lax.dynamic_slice_in_dim(w, i1, size, axis=1)
    if n_m is None:  # adaptive mask selection: the block's lowest w² / [H⁻¹]_jj² go
      score = (w1 / d[None, :]) ** 2
      k = round(sparsity * rows * size)
      order = jnp.argsort(-score.reshape(-1), stable=True)  # ties: the earlier weight is kept
      pruned = jnp.ones(rows * size, bool).at[order[: rows * size - k]].set(False).reshape(rows, size)
    else:
      pruned = jnp.zeros((rows, size), bool)

    def column(i, carry):
      w1, pruned, block_out, err1 = carry
      if n_m is not None:  # every m-th column: the m - n lowest scores of the next m go
        n, m = n_m
        window = (jax.lax.dynamic_slice_in_dim(w1, i, m, axis=1) / jax.lax.dynamic_slice_in_dim(d, i, m)[None]) ** 2
        ranks = jnp.argsort(jnp.argsort(-window, axis=1, stable=True), axis=1, stable=True)
        current = jax.lax.dynamic_slice_in_dim(pruned, i, m, axis=1)
        chosen = jnp.where(i % m == 0, ranks >= n, current)
        pruned = jax.lax.dynamic_update_slice_in_dim(pruned, chosen, i, axis=1)
      col = w1[:, i]
      q = jnp.where(pruned[:, i], 0.0, col)
      err = (col - q) / hinv[i, i]
      w1 = w1 - err[:, None] * hinv[i][None, :]  # OBS update of the later columns (U upper triangular)
      return w1, pruned, block_out.at[:, i].set(q), err1.at[:, i].set(err)

    zeros = jnp.zeros((rows, size), w.dtype)
    _, pruned, block_out, err1 = jax.lax.fori_loop(0, size, column, (w1, pruned, zeros, zeros))
    w = w - jnp.matmul(err1, jax.lax.dynamic_slice_in_dim(u, i1, size, axis=0), precision=jax.lax.Precision.HIGHEST)
    out = jax.lax.dynamic_update_slice_in_dim(out, block_out, i1, axis=1)
    return w, out, jax.lax.dynamic_update_slice_in_dim(pruned_all, pruned, i1, axis=1)

  carry = (w, jnp.zeros_like(w), jnp.zeros(w.shape, bool))
  _, out, pruned = for_each_block(cols, block_size, block, carry)
  return out, pruned


@functools.partial(jax.jit, static_argnames=("block_size", "sparsity", "n_m"))
def _sparsegpt_kernel(kernel, u, dead, *, block_size, sparsity, n_m):
  """One kernel under one ``jit``: the pruned kernel (its dtype) and the keep-mask, ``(in, out)``."""
  w = jnp.where(dead[:, None], 0.0, kernel.astype(jnp.float32)).T
  out, pruned = _sparsegpt_rows(w, u, block_size=block_size, sparsity=sparsity, n_m=n_m)
  mask = ~pruned.T
  limit = float(jnp.finfo(kernel.dtype).max)  # the update may push a weight past the dtype's range: saturate
  return jnp.clip(jnp.where(mask, out.T, 0.0), -limit, limit).astype(kernel.dtype), mask


def sparsegpt_layer(
  kernel: Any,
  hessian: Any,
  *,
  sparsity: float = 0.5,
  n_m: tuple[int, int] | None = None,
  damp: float = 0.01,
  block_size: int = 128,
  name: str = "kernel",
) -> tuple[jax.Array, jax.Array, LayerReport]:
  """Prunes one Dense kernel with SparseGPT (Frantar & Alistarh 2023, Algorithm 1).

  The columns of ``W = kernelᵀ`` (one per input feature) are visited in order. At the
  start of each block of ``block_size`` columns the mask of the block is chosen
  (*adaptive mask selection*): the ``round(sparsity · rows · block)`` weights with the
  lowest OBS saliency ``w² / [H⁻¹]²_jj`` are pruned, where ``[H⁻¹]_jj`` is read off the
  upper Cholesky factor ``U`` of the damped inverse Hessian (the inverse of the Hessian
  with the earlier columns eliminated, as the paper's sequential elimination needs). With
  ``n_m=(n, m)`` the choice is made every ``m`` columns instead, keeping in each row the
  ``n`` of the next ``m`` weights with the highest saliency (2:4 along the input axis).
  Each column's pruning error is then compensated on the later columns by the OBS update
  ``W_{:, j:} -= (w_j - q_j) / U_jj · U_{j, j:}`` (within the block at once, beyond it by
  one lazy batch update per block). Dead inputs (``H_jj = 0``) get ``H_jj = 1``.

  The sparsity is exact per block, so per kernel whenever ``sparsity · rows · block`` is
  an integer for every block (ties in the saliency keep the earlier weight). The paper's
  joint quantization is not included.

  Args:
    kernel: ``float[in, out]`` (Flax layout).
    hessian: ``float[in, in]``, ``2XᵀX/n`` of the kernel's inputs.
    sparsity: fraction of weights removed, in ``[0, 1)`` (ignored with ``n_m``).
    n_m: ``(n, m)`` semi-structured sparsity, ``n`` kept of every ``m`` consecutive input
      features per output (``(2, 4)``); ``m`` must divide ``in``.
    damp: relative damping ``λ > 0`` (raised ×10 with a warning when the factorization
      fails).
    block_size: columns per block (the paper's 128); rounded up to a multiple of ``m``.
    name: the kernel's name in messages.

  Returns:
    ``(pruned kernel (in, out) in the kernel's dtype, keep-mask bool[in, out], LayerReport)``.

  Raises:
    ValueError: on a sparsity outside [0, 1), a bad ``n_m``, ``m`` not dividing ``in``,
      ``damp <= 0``, a kernel that is not 2-D or is empty, a Hessian of the wrong shape,
      or non-finite inputs; each message names the value.
    TypeError: on a kernel that is not floating point.

  A weight the update pushes past the kernel dtype's range saturates at its largest
  finite value (float16's ±65504), as :meth:`~jaxcompress.export.QArray.materialize` does.

  References:
    Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
    in One-Shot", https://arxiv.org/abs/2301.00774.
  """
  sparsity, nm = _check_options(sparsity, n_m, block_size, damp)
  k = kernel if isinstance(kernel, jax.Array) else np.asarray(kernel)
  if not jnp.issubdtype(k.dtype, jnp.floating):
    raise TypeError(f"{name}: SparseGPT prunes floating-point kernels, got dtype {k.dtype}")
  if k.ndim != 2 or 0 in k.shape:
    raise ValueError(f"{name}: SparseGPT prunes non-empty 2-D (in, out) kernels, got shape {tuple(k.shape)}")
  n_in, n_out = k.shape
  h = np.asarray(hessian, np.float32)
  if h.shape != (n_in, n_in):
    raise ValueError(f"{name}: the Hessian has shape {h.shape}, expected ({n_in}, {n_in}) for a kernel {k.shape}")
  if nm is not None and n_in % nm[1]:
    raise ValueError(
      f"{name}: n_m={n_m} needs the input dimension {n_in} of kernel {(n_in, n_out)} divisible by {nm[1]}"
    )
  if not (np.all(np.isfinite(h)) and np.all(np.isfinite(np.asarray(k, np.float32)))):
    raise ValueError(f"{name}: the kernel or its Hessian is not finite")
  dead = np.diagonal(h) == 0
  u, _, lam = damped_inverse_cholesky(unit_scale(h), damp, name=name)
  block = block_size if nm is None or block_size % nm[1] == 0 else -(-block_size // nm[1]) * nm[1]
  dense, mask = _sparsegpt_kernel(k, u, dead, block_size=block, sparsity=sparsity, n_m=nm)
  report = LayerReport(damp=lam, tokens=0, error=output_error(k, dense, hessian), dead=int(dead.sum()))
  return dense, mask, report


def sparsegpt(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  *,
  sparsity: float = 0.5,
  n_m: tuple[int, int] | None = None,
  damp: float = 0.01,
  block_size: int = 128,
  where: select.Where = None,
  token_mask: Any = None,
  sequential: bool = True,
) -> SparseGPTResult:
  """Prunes a trained model's Dense kernels with SparseGPT, from calibration data.

  Each selected kernel's input Hessian is gathered on ``batches``
  (:func:`~jaxcompress.graph.input_hessians`) and the kernel is pruned and updated by
  :func:`sparsegpt_layer`; with ``sequential=True`` (the paper's scheme) each Hessian
  comes from the inputs of the already-pruned earlier kernels
  (:func:`~jaxcompress.graph.layerwise`). The result composes with the pruning family
  through its masks: ``pruning.fixed(result.masks)`` holds them for fine-tuning (and in
  ``chain(fixed(masks), quantizer)``), and its ``pack`` stores the survivors sparse.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the trained params (Flax ``(in, out)`` Dense kernels).
    batches: calibration batches, each a tuple of inputs (or a single array).
    sparsity, n_m, damp, block_size: as for :func:`sparsegpt_layer`.
    where: which kernels (default: every leaf read by a plain Dense site ``x @ kernel``).
    token_mask: padding mask per batch (``batch -> bool[batch, tokens]``, or a list).
    sequential: Hessians from the partly pruned model (``False``: all from the original).

  Returns:
    A :class:`SparseGPTResult` (``params``, ``masks``, ``layers``).

  Raises:
    ValueError: as :func:`sparsegpt_layer` (naming the kernel), or calibration batches
      with no valid token.

  References:
    Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
    in One-Shot", https://arxiv.org/abs/2301.00774.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> params = {'w': jax.random.normal(jax.random.key(1), (8, 4))}
    >>> r = sparsegpt(lambda p, x: x @ p['w'], params, [x], n_m=(2, 4))
    >>> int(r.masks['w'].sum()), int((r.params['w'] != 0).sum())
    (16, 16)
  """
  _check_options(sparsity, n_m, block_size, damp)

  def solve(path: str, kernel: jax.Array, stats: InputHessian) -> LayerResult:
    dense, mask, report = sparsegpt_layer(
      kernel, stats.hessian, sparsity=sparsity, n_m=n_m, damp=damp, block_size=block_size, name=f"kernel {path!r}"
    )
    return LayerResult(dense, dense, (mask, report._replace(tokens=stats.tokens)))

  _, dense, extras = layerwise(
    apply_fn, params, batches, solve, where=where, token_mask=token_mask, sequential=sequential
  )
  masks = map_with_path(lambda path, leaf: extras[path][0] if path in extras else None, params)
  return SparseGPTResult(dense, masks, {p: e[1] for p, e in extras.items()})
