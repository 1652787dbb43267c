"""Spatial SVD of conv kernels (Jaderberg, Vedaldi & Zisserman 2014, scheme 2).

A ``(h, w, in, out)`` kernel becomes a vertical ``h×1`` conv to ``r`` channels then a
horizontal ``1×w`` conv to ``out``: the SVD of the kernel read as the matrix
``[(h, in), (w, out)]``. Numerics: :func:`spatial_matrix`, :func:`spatial_factors`;
compressor: :func:`spatial_svd`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import export
from jaxcompress.core import select
from jaxcompress.core._base import Compressor
from jaxcompress.lowrank import _common
from jaxcompress.lowrank._svd import truncated_svd


class SpatialFactors(NamedTuple):
  """The trainable factors of a spatially separated conv kernel, both in Flax layout.

  Attributes:
    vertical: ``float[h, 1, in, r]``, the ``h×1`` conv.
    horizontal: ``float[1, w, r, out]``, the ``1×w`` conv after it.
  """

  vertical: jax.Array
  horizontal: jax.Array


def spatial_matrix(kernel: jax.Array) -> jax.Array:
  """A ``(h, w, in, out)`` kernel as the matrix ``[(h, in), (w, out)]`` whose rank-``r``
  factorization is a vertical then a horizontal conv."""
  h, w, c, o = kernel.shape
  return jnp.transpose(kernel, (0, 2, 1, 3)).reshape(h * c, w * o)


def spatial_factors(kernel: jax.Array, rank: int) -> SpatialFactors:
  """The best spatially separable approximation of rank ``rank`` (in Frobenius norm).

  Args:
    kernel: ``float[h, w, in, out]``.
    rank: the intermediate channels, in ``[1, min(h·in, w·out)]`` (static).

  Returns:
    :class:`SpatialFactors`; ``kernel ≈ Σ_r vertical[:, 0, :, r] ⊗ horizontal[0, :, r, :]``.
    Jittable and deterministic.

  Raises:
    ValueError: if ``kernel`` is not 4-D or ``rank`` is out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> k = jnp.einsum('h,w,c,o->hwco', jnp.arange(1., 4.), jnp.ones(3), jnp.ones(2), jnp.arange(1., 3.))
    >>> f = spatial_factors(k, 1)
    >>> f.vertical.shape, f.horizontal.shape
    ((3, 1, 2, 1), (1, 3, 1, 2))
    >>> bool(jnp.allclose(export.rebuild_conv('spatial_svd', f), k, atol=1e-5))
    True
  """
  if kernel.ndim != 4:
    raise ValueError(f"spatial_factors takes a (h, w, in, out) kernel, got shape {tuple(kernel.shape)}")
  h, w, c, o = kernel.shape
  f = truncated_svd(spatial_matrix(kernel), rank)
  return SpatialFactors(f.u.reshape(h, 1, c, rank), jnp.transpose(f.v.reshape(rank, w, o), (1, 0, 2))[None])


def spatial_svd(
  rank: int | float | None = None,
  *,
  energy: float | None = None,
  ratio: float | None = None,
  init: str = "decomposition",
  seed: int = 0,
  where: select.Where = None,
  factors: Compressor | None = None,
) -> Compressor:
  """Conv kernels as a ``k×1`` then a ``1×k`` conv (spatial SVD), trained as the factors.

  Each selected ``(h, w, in, out)`` kernel is replaced in the trainable tree by
  :class:`SpatialFactors` (:func:`spatial_factors`); ``apply`` rebuilds the kernel,
  ``pack`` stores an :class:`~jaxcompress.export.ConvFactorized` (``r·(h·in + w·out)``
  values) and :func:`~jaxcompress.lowrank.serve` runs the two convs. A kernel where
  the factors would not be smaller is left dense (see :func:`~jaxcompress.lowrank.report`).

  Args:
    rank: the intermediate channels: an ``int >= 1``, or a fraction in ``(0, 1]`` of
      the full rank ``min(h·in, w·out)``.
    energy: the fraction of ``Σσ²`` of :func:`spatial_matrix` to keep, in ``(0, 1]``.
    ratio: the target parameter ratio, in ``(0, 1]``.
    init: ``'decomposition'`` or ``'random'`` (train from scratch).
    seed: seeds ``init='random'``.
    factors: a compressor of the factors themselves, for example
      ``quantization.fake_quant(8, per_channel=True)`` (int8 factors, packed as ``QArray`` s
      inside the factorized leaf); see :func:`jaxcompress.lowrank._common.build`.
    where: which leaves (default: floating 4-D leaves).

  Returns:
    A :class:`~jaxcompress.Compressor` (state as :func:`~jaxcompress.lowrank.svd`'s).

  Raises:
    ValueError: as :func:`~jaxcompress.lowrank.svd`; a selected leaf that is not a 4-D
      kernel is named.

  References:
    Jaderberg, Vedaldi & Zisserman 2014, "Speeding up Convolutional Neural Networks with
    Low Rank Expansions", https://arxiv.org/abs/1405.3866 (scheme 2). The paper learns
    the filters by minimizing the reconstruction error (or the data reconstruction);
    for the filter reconstruction that minimum is the truncated SVD used here.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = spatial_svd(2)
    >>> params, state = c.init({'conv': jax.random.normal(jax.random.key(0), (3, 3, 4, 6))})
    >>> params['conv'].vertical.shape, params['conv'].horizontal.shape
    ((3, 1, 4, 2), (1, 3, 2, 6))
  """
  _common.one_of(rank=rank, energy=energy, ratio=ratio)
  rank = None if rank is None else _common.check_rank("rank", rank)
  energy = None if energy is None else _common.check_energy(energy)
  ratio = None if ratio is None else _common.check_ratio(ratio)

  def ranks(path, k):
    h, w, c, o = (int(d) for d in k.shape)
    full = min(h * c, w * o)
    if rank is not None:
      return (_common.resolve_rank(rank, full, path, tuple(k.shape)),)
    if energy is not None:
      m = spatial_matrix(jnp.asarray(_common.concrete(path, k, "energy="), jnp.float32))
      return (_common.rank_for_energy(jnp.linalg.svd(m, compute_uv=False), energy),)
    assert ratio is not None
    return (min(full, max(1, math.floor(ratio * h * w * c * o / (h * c + w * o) + 1e-9))),)

  dec = _common.Decomposition(
    kind="spatial_svd",
    ndim=4,
    ranks=ranks,
    params=lambda s, r: r[0] * (s[0] * s[2] + s[1] * s[3]),
    decompose=lambda k, r, key: spatial_factors(k, r[0]),
    rebuild=lambda f: export.rebuild_conv("spatial_svd", tuple(f)),
    pack=lambda f, shape: export.factorize_conv("spatial_svd", tuple(f), shape),
  )
  return _common.build(dec, init=init, seed=seed, where=where, factors=factors)
