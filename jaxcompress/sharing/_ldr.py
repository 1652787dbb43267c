"""Toeplitz-like weights of low displacement rank (Sindhwani, Sainath & Kumar 2015).

A matrix ``M`` (``N x N``) is Toeplitz-like of displacement rank ``r`` when its
displacement ``L[M] = Z_1 M - M Z_{-1}`` has rank ``r`` (``Z_f`` the unit shift with
``f`` in its corner). Such an ``M`` is ``sum_k Z_1(g_k) Z_{-1}(h_k)``: ``2 r N`` numbers,
and a product with ``M`` is ``r`` circulant and ``r`` skew-circulant products, each an
FFT (:func:`ldr_matmul`). Numerics: :func:`displacement`, :func:`nearest_ldr` (the
generators from a dense kernel), :func:`ldr_matmul`; the dense rebuild is the packed
format's (:func:`jaxcompress.export.ldr_dense`); :func:`ldr` is the compressor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import path_str
from jaxcompress.quantization import _reparam
from jaxcompress.sharing._hashed import INITS


@jax.jit
def displacement(m: jax.Array) -> jax.Array:
  """``L[M] = Z_1 M - M Z_{-1}`` of a square ``M`` (the Toeplitz-like displacement operator).

  ``Z_1 M`` shifts the rows down cyclically; ``M Z_{-1}`` shifts the columns left with the
  first column negated into the last.

  Args:
    m: ``float[..., N, N]``.

  Returns:
    ``float[..., N, N]``, ``m``'s dtype.
  """
  right = jnp.roll(m, -1, axis=-1)
  right = right.at[..., -1].multiply(-1)
  return jnp.roll(m, 1, axis=-2) - right


def _square(w: jax.Array) -> jax.Array:
  m, n = export.matrix_shape(tuple(w.shape))
  size = max(m, n)
  return jnp.zeros((size, size), w.dtype).at[:m, :n].set(w.reshape(m, n))


@functools.partial(jax.jit, static_argnames=("rank",))
def nearest_ldr(w: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """Generators ``(g, h)`` of the Toeplitz-like matrix of displacement rank ``rank`` whose
  displacement is nearest (Frobenius) to ``w``'s.

  ``w`` is read as the matrix ``(m, n)`` and zero-padded to ``N x N``, ``N = max(m, n)``.
  With ``L[w] ≈ U_r S_r V_r^T`` (truncated SVD, Eckart–Young), ``g_k = sqrt(s_k / 2) u_k``
  and ``h_k = J sqrt(s_k / 2) v_k`` (``J`` the reversal), since
  ``L[sum_k Z_1(g_k) Z_{-1}(h_k)] = 2 sum_k g_k (J h_k)^T``. ``L`` is invertible (the
  spectra of ``Z_1`` and ``Z_{-1}`` are disjoint), so the result is exact when ``w``
  already has displacement rank ``<= rank`` (a Toeplitz matrix at ``rank = 2``; any
  matrix at ``rank = N``).

  Choice: the paper trains from scratch and gives no projection; the least squares fit
  of ``M`` itself is a nonconvex bilinear problem, so this solves it in the displacement
  domain (closed form, deterministic); fine-tuning then fits ``M`` itself.

  Args:
    w: ``float`` kernel with ``ndim >= 2``.
    rank: ``r``, ``1 <= r <= N``.

  Returns:
    ``(g, h)``, each ``float[r, N]`` in ``w``'s dtype.

  Raises:
    ValueError: if ``rank`` is not in ``[1, N]``, naming it.
  """
  size = export.ldr_size(tuple(w.shape))
  rank = validate.check_int("rank", rank, low=1)
  if rank > size:
    raise ValueError(f"rank={rank} exceeds the displacement rank of a {size} x {size} matrix (at most {size})")
  d = displacement(_square(w).astype(jnp.float32))
  u, s, vt = jnp.linalg.svd(d, full_matrices=False)
  root = jnp.sqrt(s[:rank] / 2)
  g = (u[:, :rank] * root).T
  h = (vt[:rank] * root[:, None])[:, ::-1]
  return g.astype(w.dtype), h.astype(w.dtype)


@functools.partial(jax.jit, static_argnames=("rank",))
def _sample_ldr(w: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """Generators from a fresh kernel's entries, scaled so ``M``'s entries keep ``w``'s variance."""
  size = export.ldr_size(tuple(w.shape))
  if not 1 <= rank <= size:
    raise ValueError(f"rank={rank} exceeds the displacement rank of a {size} x {size} matrix (at most {size})")
  flat = w.reshape(-1)
  idx = np.arange(2 * rank * size) % flat.size
  values = flat[idx].reshape(2, rank, size)
  std = jnp.std(flat)
  # M's entries sum r N products of two generator entries: var(M) = r N var(g) var(h)
  scale = jnp.where(std > 0, 1.0 / jnp.sqrt(jnp.maximum(std, 1e-30) * np.sqrt(rank * size)), 1.0)
  return (values[0] * scale).astype(w.dtype), (values[1] * scale).astype(w.dtype)


@functools.partial(jax.jit, static_argnames=("n",))
def ldr_matmul(x: jax.Array, g: jax.Array, h: jax.Array, n: int) -> jax.Array:
  """``x @ M[:m, :n]`` for ``M = sum_k Z_1(g_k) Z_{-1}(h_k)``, with real FFTs (no dense ``M``).

  ``x @ Z_1(g)`` is the circular cross-correlation ``irfft(conj(rfft(g)) · rfft(x))``
  (length ``N``); ``y @ Z_{-1}(h)`` is the first ``N`` entries of ``[y, 0]`` times the
  length-``2N`` circulant of ``[h, -h]``. The ``r`` terms are summed in the frequency
  domain, so one call does ``1 + r`` FFTs of length ``N``, ``r`` of length ``2N`` and one
  inverse: ``O(r N log N)`` per row instead of ``m n``.

  Args:
    x: ``float[..., m]``, ``m <= N``.
    g: ``float[r, N]``.
    h: ``float[r, N]``.
    n: the number of columns, ``<= N``.

  Returns:
    ``float[..., n]``, ``x``'s dtype; equal to ``x @ ldr_dense(g, h, (m, n))`` up to
    float rounding.

  Raises:
    ValueError: if ``g`` and ``h`` differ in shape, or ``m`` or ``n`` exceed ``N``.
  """
  if g.shape != h.shape or g.ndim != 2:
    raise ValueError(f"g and h must both be [r, N], got {tuple(g.shape)} and {tuple(h.shape)}")
  size, m = g.shape[1], x.shape[-1]
  if m > size or n > size:
    raise ValueError(f"a {m} x {n} block does not fit in the {size} x {size} Toeplitz-like matrix")
  xf = jnp.fft.rfft(x.astype(jnp.float32), size)  # zero-pads x to N
  y = jnp.fft.irfft(xf[..., None, :] * jnp.conj(jnp.fft.rfft(g.astype(jnp.float32))), size)  # [..., r, N]
  hf = jnp.conj(jnp.fft.rfft(jnp.concatenate([h, -h], axis=-1).astype(jnp.float32)))  # [r, N + 1]
  z = jnp.sum(jnp.fft.rfft(y, 2 * size) * hf, axis=-2)  # the r terms, summed in frequency
  return jnp.fft.irfft(z, 2 * size)[..., :n].astype(x.dtype)


class LDRFactors(NamedTuple):
  """The trainable node of :func:`ldr`: the generators, each ``float[r, N]``."""

  g: jax.Array
  h: jax.Array


@dataclasses.dataclass(frozen=True)
class LDRLeaf:
  """Per-leaf state of :func:`ldr`: the kernel's shape (static; no arrays)."""

  shape: tuple[int, ...]


jax.tree_util.register_dataclass(LDRLeaf, data_fields=[], meta_fields=["shape"])


def _fft_rule(factors: dict[str, LDRFactors]) -> Callable[..., jax.Array]:
  def rule(site: Any, activation: jax.Array, weight: jax.Array) -> jax.Array:
    dims = site.params.get("dimension_numbers")
    plain = (
      site.op == "dot_general"
      and site.weight_operand == 1
      and site.leaf_axes == (0, 1)
      and dims == (((activation.ndim - 1,), (0,)), ((), ()))
    )
    if not plain:
      return site.compute(activation, weight)
    g, h = factors[site.path]
    return ldr_matmul(activation, g, h, weight.shape[1]).astype(jnp.result_type(activation, weight))

  return rule


def ldr(rank: int = 2, *, init: str = "least_squares", fft: bool = False, where: select.Where = None) -> Compressor:
  """Toeplitz-like weights of displacement rank ``rank`` (Sindhwani et al. 2015).

  Each selected kernel (read as the matrix ``(m, n) = (prod(shape[:-1]), shape[-1])``) is
  the top-left block of ``M = sum_{k<r} Z_1(g_k) Z_{-1}(h_k)`` (``N x N``,
  ``N = max(m, n)``), and its *trainable tree* holds :class:`LDRFactors` ``(g, h)``:
  ``2 r N`` numbers instead of ``m n``. ``apply`` rebuilds the kernel
  (:func:`jaxcompress.export.ldr_dense`); ``pack`` stores
  :class:`~jaxcompress.export.DisplacementArray`. ``rank = 2`` contains every Toeplitz
  matrix; larger ranks interpolate towards a dense layer (``rank = N``).

  The paper writes ``M = 1/2 sum Z_1(g_k) Z_{-1}(J h_k)``; this absorbs the ``1/2`` and
  the reversal ``J`` into ``h`` (the same family). The paper's layers are square; a
  rectangular kernel is taken as the top-left block of a square one (the paper's
  suggestion of stacking is not followed: one block is fewer numbers).

  Args:
    rank: ``r >= 1`` (at most ``N`` of each selected kernel, checked at ``init``).
    init: ``'least_squares'``: from a trained kernel, the generators whose displacement is
      the nearest rank-``r`` one to the kernel's (:func:`nearest_ldr`); ``'sample'``: to
      train from scratch, generators taken from a fresh kernel's entries, scaled so the
      rebuilt entries keep its variance.
    fft: make ``rewrite`` compute each selected kernel's matmul as :func:`ldr_matmul` from
      the generators (training and evaluation); valid only where no later stage changes
      the kernel (the rule reads the generators, not the kernel a quantizer would change).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`LDRLeaf`.

  Raises:
    ValueError: if ``rank < 1`` or ``init`` is unknown; at ``init``, if ``rank`` exceeds
      ``N`` of a selected kernel (naming the rank) or a selected leaf has fewer than 2
      axes, or as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Sindhwani, Sainath & Kumar 2015, "Structured Transforms for Small-Footprint Deep
    Learning", https://arxiv.org/abs/1510.01722.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 1.0, 2.0], [5.0, 4.0, 1.0]])  # Toeplitz
    >>> c = ldr(2)
    >>> params, state = c.init({'w': w})
    >>> params['w'].g.shape
    (2, 3)
    >>> bool(jnp.allclose(c.apply(params, state)['w'], w, atol=1e-5))  # displacement rank 2: exact
    True
  """
  rank = validate.check_int("rank", rank, low=1)
  validate.check_choice("init", init, INITS)
  initial = nearest_ldr if init == "least_squares" else _sample_ldr

  def init_fn(params, *, masks=None):
    del masks

    def init_leaf(path, w):
      if w.ndim < 2:
        raise ValueError(f"leaf {path!r} has shape {tuple(w.shape)}: a Toeplitz-like weight needs at least 2 axes")
      size = export.ldr_size(tuple(w.shape))
      if rank > size:
        raise ValueError(
          f"rank={rank} exceeds the displacement rank of leaf {path!r} (shape {tuple(w.shape)}: at most {size})"
        )
      return LDRFactors(*initial(w, rank)), LDRLeaf(tuple(w.shape))

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(node, leaf):
    return export.ldr_dense(node.g, node.h, leaf.shape)

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, LDRLeaf, LDRFactors)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack(params, state):
    return _reparam.map_nodes(
      lambda node, leaf: export.DisplacementArray(g=np.asarray(node.g), h=np.asarray(node.h), dense_shape=leaf.shape),
      params,
      state.leaves,
      LDRLeaf,
      LDRFactors,
    )

  def rewrite(fn, params, state):
    if not fft:
      return fn
    is_state = lambda x: x is None or isinstance(x, LDRLeaf)
    states, treedef = jax.tree_util.tree_flatten_with_path(state.leaves, is_leaf=is_state)
    nodes = jax.tree_util.tree_structure(state.leaves, is_leaf=is_state).flatten_up_to(params)
    factors = {path_str(kp): node for (kp, s), node in zip(states, nodes) if s is not None}
    del treedef
    return graph.rewrite(fn, _fft_rule(factors), where=lambda path, site: path in factors)

  return Compressor(init_fn, apply, update, pack, rewrite=rewrite)
