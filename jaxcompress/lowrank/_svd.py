"""Truncated SVD of Dense kernels: ``w ≈ u @ v`` with ``u: [m, r]``, ``v: [r, n]``.

Numerics (:func:`truncated_svd`, :func:`svd_rank`) act on one matrix; :func:`svd` is
the compressor.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import export
from jaxcompress.core import select
from jaxcompress.core._base import Compressor
from jaxcompress.lowrank import _common


class SVDFactors(NamedTuple):
  """The trainable factors of a Dense kernel: ``kernel = u @ v``.

  Attributes:
    u: ``float[m, r]``.
    v: ``float[r, n]``.
  """

  u: jax.Array
  v: jax.Array


def truncated_svd(w: jax.Array, rank: int) -> SVDFactors:
  """The best rank-``rank`` approximation of a matrix (Eckart–Young), as balanced factors.

  Args:
    w: ``float[m, n]``.
    rank: in ``[1, min(m, n)]`` (static).

  Returns:
    :class:`SVDFactors` with ``u = U_r · sqrt(s_r)`` and ``v = sqrt(s_r) · V_rᵀ``: both
    factors carry the singular values' square roots, so neither dwarfs the other in
    training. Jittable and deterministic.

  Raises:
    ValueError: if ``w`` is not 2-D or ``rank`` is outside ``[1, min(m, n)]``.

  Example:
    >>> import jax.numpy as jnp
    >>> f = truncated_svd(jnp.array([[3.0, 0.0], [0.0, 1.0]]), 1)
    >>> (f.u @ f.v).tolist()
    [[3.0, 0.0], [0.0, 0.0]]
  """
  if w.ndim != 2:
    raise ValueError(f"truncated_svd takes a matrix, got shape {tuple(w.shape)}")
  if not 1 <= rank <= min(w.shape):
    raise ValueError(f"rank must be in [1, {min(w.shape)}] for shape {tuple(w.shape)}, got {rank}")
  return _truncated_svd(w, int(rank))


@functools.partial(jax.jit, static_argnames="rank")
def _truncated_svd(w: jax.Array, rank: int) -> SVDFactors:
  u, s, vt = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return SVDFactors((u[:, :rank] * root).astype(w.dtype), (root[:, None] * vt[:rank]).astype(w.dtype))


def svd_rank(w: Any, *, rank: int | float | None, energy: float | None, ratio: float | None, path: str = "") -> int:
  """The rank of a matrix under one rule, clamped to ``[1, min(m, n)]``.

  Args:
    w: ``float[m, n]`` (concrete for ``energy``).
    rank: a fixed rank (an error beyond ``min(m, n)``) or a fraction of ``min(m, n)``
      in ``(0, 1]``, rounded up.
    energy: keep the smallest rank whose ``σ²`` sum to this fraction of ``Σσ²``
      (energy on ``σ²``, the squared Frobenius norm, not on ``σ``).
    ratio: the largest rank with ``rank · (m + n) <= ratio · m · n``.
    path: the leaf's path, for messages.

  Returns:
    The rank, an ``int``.

  Raises:
    ValueError: if an integer ``rank`` is beyond ``min(m, n)``, or ``energy`` is asked
      of a traced ``w``.
  """
  m, n = (int(d) for d in w.shape)
  full = min(m, n)
  if rank is not None:
    return _common.resolve_rank(rank, full, path, (m, n))
  if energy is not None:
    s = jnp.linalg.svd(jnp.asarray(_common.concrete(path, w, "energy="), jnp.float32), compute_uv=False)
    return _common.rank_for_energy(s, energy)
  assert ratio is not None
  return min(full, max(1, math.floor(ratio * m * n / (m + n) + 1e-9)))


def _pack(f: SVDFactors, shape: tuple[int, ...]) -> export.Factorized:
  return export.factorize(f.u, f.v, shape)


def svd(
  rank: int | float | None = None,
  *,
  energy: float | None = None,
  ratio: float | None = None,
  init: str = "decomposition",
  seed: int = 0,
  where: select.Where = None,
  factors: Compressor | None = None,
) -> Compressor:
  """Low-rank Dense kernels by truncated SVD, trained as their factors.

  ``init`` replaces each selected kernel ``w: [m, n]`` in the trainable tree by
  :class:`SVDFactors` ``(u: [m, r], v: [r, n])`` (:func:`truncated_svd`, balanced);
  ``apply`` returns ``u @ v``, so the gradient reaches the factors and
  ``train.make_step`` fine-tunes them (``init='random'`` trains them from scratch).
  ``pack`` stores an :class:`~jaxcompress.export.Factorized` (``r·(m + n)`` values).
  The rank is fixed, chosen by retained energy, or by a target parameter ratio (give one),
  and clamped to ``[1, min(m, n)]``; a kernel where ``r·(m + n) >= m·n`` (the factors
  would be larger) is left dense, and :func:`~jaxcompress.lowrank.report` says so.
  Serve the factorized ops, ``(x @ u) @ v``, with :func:`~jaxcompress.lowrank.serve`.

  In ``chain(svd(...), later)``, the later stage (a quantizer, a pruner) acts on the
  rebuilt kernel ``u @ v``; a pruner's masks are stored beside the factors
  (:class:`~jaxcompress.export.MaskedArray`) and a quantizer's codes of ``u @ v`` replace
  them (what training saw). To quantize the factors themselves, pass the quantizer as
  ``factors=``: ``svd(0.25, factors=quantization.fake_quant(8))`` trains ``Q(u) @ Q(v)``
  and packs a ``Factorized`` of two ``QArray`` s.

  Args:
    rank: a fixed rank (``int >= 1``), or a fraction of ``min(m, n)`` in ``(0, 1]``
      (``0.25``: a quarter of the full rank, rounded up).
    energy: the fraction of ``Σσ²`` to keep, in ``(0, 1]`` (needs concrete kernels).
    ratio: the target ``r·(m + n) / (m·n)``, in ``(0, 1]``.
    init: ``'decomposition'`` (the SVD of the kernel) or ``'random'`` (from scratch).
    seed: seeds ``init='random'``.
    factors: a compressor of the factors themselves, for example
      ``quantization.fake_quant(8, per_channel=True)`` (int8 factors, packed as ``QArray`` s
      inside the factorized leaf); see :func:`jaxcompress.lowrank._common.build`.
    where: which leaves (default: floating 2-D leaves).

  Returns:
    A :class:`~jaxcompress.Compressor` with a :class:`~jaxcompress.lowrank.LowRankState`
    (a :class:`~jaxcompress.lowrank.LeafReport` per selected leaf); its trainable tree
    holds :class:`SVDFactors` at the factorized leaves.

  Raises:
    ValueError: unless exactly one of ``rank``, ``energy``, ``ratio`` is given; for a
      rank of 0 or below, a fraction above 1, ``energy`` or ``ratio`` outside ``(0, 1]``,
      or an unknown ``init``; at ``init``, for an integer rank beyond a leaf's
      ``min(m, n)`` or a selected leaf that is not 2-D (a conv kernel: use
      :func:`~jaxcompress.lowrank.spatial_svd`, ``tucker2`` or ``cp``), naming it.

  References:
    Denton, Zaremba, Bruna, LeCun & Fergus 2014, "Exploiting Linear Structure Within
    Convolutional Networks for Efficient Evaluation", https://arxiv.org/abs/1404.0736
    (low-rank Dense layers by SVD, then fine-tuning). The split of ``s`` as ``sqrt(s)``
    into both factors is this library's choice.

  Example:
    >>> import jax.numpy as jnp
    >>> c = svd(1)
    >>> params, state = c.init({'w': jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])})
    >>> type(params['w']).__name__, params['w'].u.shape
    ('SVDFactors', (3, 1))
    >>> c.apply(params, state)['w'].round(4).tolist()
    [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
  """
  _common.one_of(rank=rank, energy=energy, ratio=ratio)
  rank = None if rank is None else _common.check_rank("rank", rank)
  energy = None if energy is None else _common.check_energy(energy)
  ratio = None if ratio is None else _common.check_ratio(ratio)

  dec = _common.Decomposition(
    kind="svd",
    ndim=2,
    ranks=lambda path, w: (svd_rank(w, rank=rank, energy=energy, ratio=ratio, path=path),),
    params=lambda shape, r: r[0] * (shape[0] + shape[1]),
    decompose=lambda w, r, key: truncated_svd(w, r[0]),
    rebuild=lambda f: f.u @ f.v,
    pack=_pack,
  )
  return _common.build(dec, init=init, seed=seed, where=where, factors=factors)
