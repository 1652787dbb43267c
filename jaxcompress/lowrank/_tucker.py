"""Tucker-2 of conv kernels over the two channel modes (Kim et al. 2016).

A ``(h, w, in, out)`` kernel becomes ``first [in, r1]`` (a 1×1 conv), ``core [h, w, r1,
r2]`` (the ``h×w`` conv) and ``last [r2, out]`` (a 1×1 conv); the spatial modes are kept
whole. Numerics: :func:`tucker2_factors` (HOOI), :func:`vbmf_rank` (EVBMF); compressor:
:func:`tucker2`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.lowrank import _common


class Tucker2Factors(NamedTuple):
  """The trainable factors of a Tucker-2 conv kernel.

  Attributes:
    first: ``float[in, r1]``, the 1×1 conv into the core's input channels.
    core: ``float[h, w, r1, r2]``, the spatial conv.
    last: ``float[r2, out]``, the 1×1 conv out of it.
  """

  first: jax.Array
  core: jax.Array
  last: jax.Array


def _leading(m: jax.Array, r: int) -> jax.Array:
  """The ``r`` leading left singular vectors of ``m`` (``[rows, r]``)."""
  return jnp.linalg.svd(m, full_matrices=False)[0][:, :r]


def tucker2_factors(kernel: jax.Array, ranks: tuple[int, int], iterations: int = 10) -> Tucker2Factors:
  """Tucker-2 over the channel modes by HOOI (higher-order orthogonal iteration).

  Starts from the truncated HOSVD (the leading left singular vectors of the input- and
  output-channel unfoldings), then alternates: each channel factor becomes the leading
  singular vectors of its unfolding of the kernel projected on the other factor. The
  core is the kernel projected on both.

  Args:
    kernel: ``float[h, w, in, out]``.
    ranks: ``(r1, r2)`` with ``1 <= r1 <= in``, ``1 <= r2 <= out`` (static).
    iterations: HOOI sweeps after the HOSVD, ``>= 0`` (not static).

  Returns:
    :class:`Tucker2Factors` with orthonormal ``first`` columns and ``last`` rows. Jittable
    and deterministic.

  Raises:
    ValueError: for a kernel that is not 4-D or ranks out of range.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> f = tucker2_factors(jax.random.normal(jax.random.key(0), (3, 3, 4, 6)), (2, 3))
    >>> f.core.shape
    (3, 3, 2, 3)
  """
  if kernel.ndim != 4:
    raise ValueError(f"tucker2_factors takes a (h, w, in, out) kernel, got shape {tuple(kernel.shape)}")
  c, o = kernel.shape[2:]
  r1, r2 = ranks
  if not (1 <= r1 <= c and 1 <= r2 <= o):
    raise ValueError(f"ranks must be in [1, {c}] x [1, {o}] for kernel {tuple(kernel.shape)}, got {ranks}")
  return _hooi(kernel, (int(r1), int(r2)), jnp.asarray(iterations, jnp.int32))


@functools.partial(jax.jit, static_argnames="ranks")
def _hooi(kernel: jax.Array, ranks: tuple[int, int], iterations: jax.Array) -> Tucker2Factors:
  r1, r2 = ranks
  k = kernel.astype(jnp.float32)
  unfold_in = lambda t: jnp.moveaxis(t, 2, 0).reshape(t.shape[2], -1)
  unfold_out = lambda t: jnp.moveaxis(t, 3, 0).reshape(t.shape[3], -1)
  a, b = _leading(unfold_in(k), r1), _leading(unfold_out(k), r2)

  def sweep(_, ab):
    a, b = ab
    a = _leading(unfold_in(jnp.einsum("hwco,ob->hwcb", k, b)), r1)
    b = _leading(unfold_out(jnp.einsum("hwco,ca->hwao", k, a)), r2)
    return a, b

  a, b = jax.lax.fori_loop(0, iterations, sweep, (a, b))
  core = jnp.einsum("hwco,ca,ob->hwab", k, a, b)
  dtype = kernel.dtype
  return Tucker2Factors(a.astype(dtype), core.astype(dtype), b.T.astype(dtype))


def _evb_objective(sigma2: float, s2: np.ndarray, L: int, M: int, xbar: float) -> float:
  """EVBMF's free energy (up to constants) at noise variance ``sigma2``."""
  alpha = L / M
  x = s2 / (M * sigma2)
  big = x[x > xbar]
  tau = 0.5 * (big - (1 + alpha) + np.sqrt(np.maximum((big - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))
  psi1 = np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau
  return float(np.sum(x - np.log(x)) + np.sum(psi1))


def vbmf_rank(matrix: Any) -> int:
  """The rank empirical variational Bayesian matrix factorization keeps (analytic EVBMF).

  With ``L <= M`` the smaller and larger side, ``α = L/M``, ``τ̲ = 2.5129·sqrt(α)`` and
  ``x̲ = (1 + τ̲)(1 + α/τ̲)``, the noise variance ``σ²`` minimizes the free energy
  ``Σ_h ψ(γ_h² / (M σ²))`` over all ``L`` singular values ``γ_h``, where
  ``ψ(x) = x - log x + [x > x̲]·(log(τ + 1) + α log(τ/α + 1) - τ)`` and
  ``τ = ½(x - 1 - α + sqrt((x - 1 - α)² - 4α))``; the rank is the number of ``γ_h`` above
  ``sqrt(M σ² x̲)``.

  Args:
    matrix: ``float[L, M]``, concrete (the rank is a shape).

  Returns:
    An ``int`` in ``[1, min(L, M)]`` (at least 1, so a layer keeps a factor).

  References:
    Nakajima, Sugiyama, Babacan & Tomioka 2013, "Global Analytic Solution of
    Fully-observed Variational Bayesian Matrix Factorization", JMLR 14. The bounded
    search for ``σ²`` (a log grid then golden-section refinement, between
    ``max(γ²_{ĥ+1}/(M x̲), mean γ²_{>ĥ}/M)`` and ``Σγ²/(LM)``, ``ĥ = ceil(L/(1+α)) - 1``)
    is this library's choice.

  Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 60)) * 3
    >>> vbmf_rank(signal + 0.1 * rng.normal(size=(40, 60)))
    3
  """
  y = np.asarray(matrix, np.float64)
  if y.shape[0] > y.shape[1]:
    y = y.T
  L, M = y.shape
  s2 = np.linalg.svd(y, compute_uv=False) ** 2
  if s2[0] <= 0:
    return 1
  alpha = L / M
  tbar = 2.5129 * math.sqrt(alpha)
  xbar = (1 + tbar) * (1 + alpha / tbar)
  h_ub = max(0, min(math.ceil(L / (1 + alpha)) - 1, L) - 1)
  upper = s2.sum() / (L * M)
  tail = s2[h_ub + 1 :] if h_ub + 1 < L else s2[-1:]
  lower = max(tail[0] / (M * xbar), tail.mean() / M, upper * 1e-12)
  if lower >= upper:
    lower = upper * 1e-6
  grid = np.geomspace(lower, upper, 512)
  vals = [_evb_objective(g, s2, L, M, xbar) for g in grid]
  i = int(np.argmin(vals))
  lo, hi = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
  golden = (math.sqrt(5) - 1) / 2
  for _ in range(60):
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    if _evb_objective(a, s2, L, M, xbar) < _evb_objective(b, s2, L, M, xbar):
      hi = b
    else:
      lo = a
  sigma2 = 0.5 * (lo + hi)
  rank = int(np.sum(s2 > M * sigma2 * xbar))
  return min(L, max(1, rank))


def tucker2_params(shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
  """Parameters of Tucker-2 factors: ``in·r1 + h·w·r1·r2 + r2·out``."""
  h, w, c, o = shape
  r1, r2 = ranks
  return c * r1 + h * w * r1 * r2 + r2 * o


def tucker2(
  ranks: Any = "vbmf",
  *,
  ratio: float | None = None,
  iterations: int = 10,
  init: str = "decomposition",
  seed: int = 0,
  where: select.Where = None,
  factors: Compressor | None = None,
  weakening: float = 0.0,
) -> Compressor:
  """Conv kernels as Tucker-2 (1×1, ``h×w`` core, 1×1), trained as the factors.

  Each selected ``(h, w, in, out)`` kernel is replaced in the trainable tree by
  :class:`Tucker2Factors` (:func:`tucker2_factors`: HOSVD then ``iterations`` HOOI
  sweeps); ``apply`` rebuilds it; ``pack`` stores an
  :class:`~jaxcompress.export.ConvFactorized`; :func:`~jaxcompress.lowrank.serve` runs
  the three convs. A kernel whose factors would not be smaller is left dense.

  Args:
    ranks: ``'vbmf'`` (the paper's rule: :func:`vbmf_rank` of the input- and
      output-channel unfoldings, needs concrete kernels), an ``int`` or fraction for both
      channel modes, or a pair ``(r_in, r_out)`` of them (a fraction is of ``in`` or
      ``out``, rounded up). Ignored when ``ratio`` is given.
    ratio: a target parameter ratio in ``(0, 1]``: the largest ranks proportional to
      ``(in, out)`` whose factors hold at most ``ratio`` of the kernel's parameters.
    iterations: HOOI sweeps, ``>= 0``.
    init: ``'decomposition'`` or ``'random'`` (train from scratch).
    seed: seeds ``init='random'``.
    factors: a compressor of the factors themselves, for example
      ``quantization.fake_quant(8, per_channel=True)`` (int8 factors, packed as ``QArray`` s
      inside the factorized leaf); see :func:`jaxcompress.lowrank._common.build`.
    where: which leaves (default: floating 4-D leaves).
    weakening: with ``ranks='vbmf'``, a float in ``[0, 1]`` that moves each VBMF rank
      ``r`` toward the full rank ``n`` (the channels): ``r + floor(weakening·(n - r))``.
      ``0`` (default) is the paper's VBMF rank, ``1`` the full rank. This is the
      "weakened VBMF" of Gusak et al. 2019 (MUSCO, https://arxiv.org/abs/1903.09973),
      whose factor ``k`` is ``1 - weakening`` here; their other rules (keep layers of at
      most 21 channels, and the full rank when VBMF finds none) are not applied. On a
      small trained kernel whose channel spectra are flat, VBMF can find no signal above
      its noise estimate and keep rank 1 (LeNet-5's 3x3x6x16 conv: ``(1, 1)``).

  Returns:
    A :class:`~jaxcompress.Compressor` (state as :func:`~jaxcompress.lowrank.svd`'s).

  Raises:
    ValueError: for a rank of 0 or below, a fraction above 1, a pair of the wrong length,
      ``ratio`` outside ``(0, 1]``, ``iterations < 0``, ``weakening`` outside ``[0, 1]``
      or nonzero without ``ranks='vbmf'``; at ``init``, for an integer rank
      beyond the channels, or a selected leaf that is not 4-D, naming it.

  References:
    Kim, Park, Yoo, Choi, Yang & Shin 2016, "Compression of Deep Convolutional Neural
    Networks for Fast and Low Power Mobile Applications", https://arxiv.org/abs/1511.06530.
    The paper takes the Tucker-2 factors from HOSVD and VBMF ranks; the HOOI refinement
    (default 10 sweeps, 0 for plain HOSVD) is this library's choice.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = tucker2((2, 3))
    >>> params, state = c.init({'conv': jax.random.normal(jax.random.key(0), (3, 3, 4, 6))})
    >>> [x.shape for x in params['conv']]
    [(4, 2), (3, 3, 2, 3), (3, 6)]
  """
  iterations = validate.check_int("iterations", iterations, low=0)
  weakening = validate.check_float("weakening", weakening, low=0.0, high=1.0)
  if weakening and (ratio is not None or not (isinstance(ranks, str) and ranks == "vbmf")):
    raise ValueError(f"weakening={weakening} moves VBMF's ranks: it needs ranks='vbmf' and no ratio")
  ratio = None if ratio is None else _common.check_ratio(ratio)
  pair = None
  if ratio is None and not (isinstance(ranks, str) and ranks == "vbmf"):
    pair = tuple(ranks) if isinstance(ranks, tuple | list) else (ranks, ranks)
    if len(pair) != 2:
      raise ValueError(f"ranks must be 'vbmf', a rank or a pair (r_in, r_out), got {ranks!r}")
    pair = tuple(_common.check_rank(f"ranks[{i}]", r) for i, r in enumerate(pair))

  def choose(path, k):
    h, w, c, o = shape = tuple(int(d) for d in k.shape)
    if ratio is not None:
      best = (1, 1)
      for i in range(1, max(c, o) + 1):
        r = (max(1, min(c, round(i * c / max(c, o)))), max(1, min(o, round(i * o / max(c, o)))))
        if tucker2_params(shape, r) <= ratio * h * w * c * o:
          best = r
      return best
    if pair is None:
      x = _common.concrete(path, k, "ranks='vbmf'")
      r_in, r_out = vbmf_rank(np.moveaxis(x, 2, 0).reshape(c, -1)), vbmf_rank(np.moveaxis(x, 3, 0).reshape(o, -1))
      weak = lambda r, n: r + math.floor(weakening * (n - r))
      return (weak(r_in, c), weak(r_out, o))
    return (
      _common.resolve_rank(pair[0], c, path, shape, "ranks[0] (input channels)"),
      _common.resolve_rank(pair[1], o, path, shape, "ranks[1] (output channels)"),
    )

  dec = _common.Decomposition(
    kind="tucker2",
    ndim=4,
    ranks=choose,
    params=tucker2_params,
    decompose=lambda k, r, key: tucker2_factors(k, (r[0], r[1]), iterations),
    rebuild=lambda f: export.rebuild_conv("tucker2", tuple(f)),
    pack=lambda f, shape: export.factorize_conv("tucker2", tuple(f), shape),
  )
  return _common.build(dec, init=init, seed=seed, where=where, factors=factors)
