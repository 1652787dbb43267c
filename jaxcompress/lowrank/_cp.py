"""CP (canonical polyadic) decomposition of conv kernels by ALS (Lebedev et al. 2015).

A ``(h, w, in, out)`` kernel of CP rank ``R`` is four convs: a 1×1 to ``R`` channels, a
depthwise ``h×1``, a depthwise ``1×w`` and a 1×1 to ``out``. Numerics: :func:`cp_als`;
compressor: :func:`cp`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import export
from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.lowrank import _common


class CPFactors(NamedTuple):
  """The trainable factors of a CP conv kernel: ``k[h, w, c, o] = Σ_r first[c, r]
  vertical[h, r] horizontal[w, r] last[r, o]``.

  Attributes:
    first: ``float[in, R]``, the 1×1 conv into ``R`` channels.
    vertical: ``float[h, R]``, the depthwise ``h×1`` conv.
    horizontal: ``float[w, R]``, the depthwise ``1×w`` conv.
    last: ``float[R, out]``, the 1×1 conv out.
  """

  first: jax.Array
  vertical: jax.Array
  horizontal: jax.Array
  last: jax.Array


_EQ = {  # the MTTKRP of each mode of the (h, w, c, o) kernel with the other three factors
  0: "hwco,wr,cr,or->hr",
  1: "hwco,hr,cr,or->wr",
  2: "hwco,hr,wr,or->cr",
  3: "hwco,hr,wr,cr->or",
}


@functools.partial(jax.jit, static_argnames="rank")
def _cp_als(kernel: jax.Array, rank: int, iterations: jax.Array, key: jax.Array) -> CPFactors:
  x = kernel.astype(jnp.float32)
  keys = jax.random.split(key, 4)
  factors = []
  for mode in range(4):
    n = x.shape[mode]
    u = jnp.linalg.svd(jnp.moveaxis(x, mode, 0).reshape(n, -1), full_matrices=False)[0][:, : min(n, rank)]
    if rank > n:
      u = jnp.concatenate([u, jax.random.normal(keys[mode], (n, rank - n), jnp.float32)], axis=1)
    factors.append(u)

  def solve(fs, mode):
    others = [fs[m] for m in range(4) if m != mode]
    gram = (others[0].T @ others[0]) * (others[1].T @ others[1]) * (others[2].T @ others[2])
    ridge = 1e-6 * jnp.trace(gram) / rank + 1e-30  # keeps a rank-deficient Gram matrix solvable
    a = jnp.linalg.solve(gram + ridge * jnp.eye(rank), jnp.einsum(_EQ[mode], x, *others).T).T
    norms = jnp.linalg.norm(a, axis=0)
    return a / jnp.where(norms > 0, norms, 1.0), norms

  def sweep(_, carry):
    fs, _ = carry
    fs = list(fs)
    norms = jnp.ones((rank,), jnp.float32)
    for mode in range(4):
      fs[mode], norms = solve(fs, mode)
    return tuple(fs), norms

  fs, norms = jax.lax.fori_loop(0, iterations, sweep, (tuple(factors), jnp.ones((rank,), jnp.float32)))
  share = norms ** (1.0 / 4)
  vertical, horizontal, first, last = (f * share for f in fs)
  dtype = kernel.dtype
  return CPFactors(first.astype(dtype), vertical.astype(dtype), horizontal.astype(dtype), last.T.astype(dtype))


def cp_als(kernel: jax.Array, rank: int, iterations: int = 50, key: jax.Array | None = None) -> CPFactors:
  """A rank-``rank`` CP decomposition of a 4-way kernel by alternating least squares.

  The factors start from the leading left singular vectors of each mode's unfolding
  (columns beyond the mode's size drawn from ``key``); each sweep solves every factor in
  turn by least squares with the other three fixed (``A_n = X_(n) (⊙_{m≠n} A_m)
  (∗_{m≠n} A_mᵀ A_m + εI)⁻¹``, ``ε`` a 1e-6 relative ridge) and rescales its columns to unit norm; at the end the column
  norms are shared equally by the four factors.

  Args:
    kernel: ``float[h, w, in, out]``.
    rank: ``R >= 1`` (static).
    iterations: ALS sweeps, ``>= 1`` (not static: one compilation serves any count).
    key: a PRNG key for the initial columns beyond a mode's size (``key(0)`` when
      ``None``); the result is deterministic for a given key.

  Returns:
    :class:`CPFactors`. Jittable.

  Raises:
    ValueError: for a kernel that is not 4-D, ``rank < 1`` or ``iterations < 1``.

  References:
    Kolda & Bader 2009, "Tensor Decompositions and Applications", SIAM Review 51(3)
    (CP-ALS, §3.4).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> ks = jax.random.split(jax.random.key(0), 4)
    >>> a, b, c, d = (jax.random.normal(k, (n, 2)) for k, n in zip(ks, (3, 3, 4, 6)))
    >>> kernel = jnp.einsum('hr,wr,cr,or->hwco', a, b, c, d)
    >>> f = cp_als(kernel, 2, iterations=100)
    >>> err = jnp.linalg.norm(export.rebuild_conv('cp', tuple(f)) - kernel) / jnp.linalg.norm(kernel)
    >>> bool(err < 1e-3)
    True
  """
  if kernel.ndim != 4:
    raise ValueError(f"cp_als takes a (h, w, in, out) kernel, got shape {tuple(kernel.shape)}")
  if rank < 1 or iterations < 1:
    raise ValueError(f"rank and iterations must be >= 1, got {rank} and {iterations}")
  return _cp_als(kernel, int(rank), jnp.asarray(iterations, jnp.int32), jax.random.key(0) if key is None else key)


def cp_params(shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
  """Parameters of CP factors: ``R·(h + w + in + out)``."""
  return ranks[0] * sum(shape)


def cp(
  rank: int | None = None,
  *,
  ratio: float | None = None,
  iterations: int = 50,
  init: str = "decomposition",
  seed: int = 0,
  where: select.Where = None,
  factors: Compressor | None = None,
) -> Compressor:
  """Conv kernels as a rank-``R`` CP decomposition (four convs), trained as the factors.

  Each selected ``(h, w, in, out)`` kernel is replaced in the trainable tree by
  :class:`CPFactors` (:func:`cp_als`); ``apply`` rebuilds it, ``pack`` stores an
  :class:`~jaxcompress.export.ConvFactorized` (``R·(h + w + in + out)`` values) and
  :func:`~jaxcompress.lowrank.serve` runs the 1×1, depthwise ``h×1``, depthwise ``1×w``
  and 1×1 convs. A kernel whose factors would not be smaller is left dense.

  Args:
    rank: the CP rank ``R``, an ``int >= 1`` (it may exceed every mode's size).
    ratio: or a target parameter ratio in ``(0, 1]``:
      ``R = floor(ratio · h·w·in·out / (h + w + in + out))``, at least 1.
    iterations: ALS sweeps, ``>= 1``.
    init: ``'decomposition'`` or ``'random'`` (train from scratch).
    seed: seeds the ALS initialization's extra columns and ``init='random'``.
    factors: a compressor of the factors themselves, for example
      ``quantization.fake_quant(8, per_channel=True)`` (int8 factors, packed as ``QArray`` s
      inside the factorized leaf); see :func:`jaxcompress.lowrank._common.build`.
    where: which leaves (default: floating 4-D leaves).

  Returns:
    A :class:`~jaxcompress.Compressor` (state as :func:`~jaxcompress.lowrank.svd`'s).

  Raises:
    ValueError: unless exactly one of ``rank`` and ``ratio`` is given; for ``rank < 1``
      (or not an integer), ``ratio`` outside ``(0, 1]`` or ``iterations < 1``; at
      ``init``, for a selected leaf that is not 4-D, naming it.

  References:
    Lebedev, Ganin, Rakhuba, Oseledets & Lempitsky 2015, "Speeding-up Convolutional
    Neural Networks Using Fine-tuned CP-Decomposition", https://arxiv.org/abs/1412.6553.
    The paper computes the CP factors by non-linear least squares; as the issue asks,
    this uses ALS (:func:`cp_als`), then fine-tunes all four factors.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = cp(12, iterations=5)
    >>> params, state = c.init({'conv': jax.random.normal(jax.random.key(0), (3, 3, 4, 6))})
    >>> [x.shape for x in params['conv']]
    [(4, 12), (3, 12), (3, 12), (12, 6)]
  """
  _common.one_of(rank=rank, ratio=ratio)
  if rank is not None:
    rank = validate.check_int("rank", rank, low=1)
  ratio = None if ratio is None else _common.check_ratio(ratio)
  iterations = validate.check_int("iterations", iterations, low=1)

  def choose(path, k):
    shape = tuple(int(d) for d in k.shape)
    if rank is not None:
      return (rank,)
    assert ratio is not None
    return (max(1, math.floor(ratio * math.prod(shape) / sum(shape) + 1e-9)),)

  dec = _common.Decomposition(
    kind="cp",
    ndim=4,
    ranks=choose,
    params=cp_params,
    decompose=lambda k, r, key: cp_als(k, r[0], iterations, key),
    rebuild=lambda f: export.rebuild_conv("cp", tuple(f)),
    pack=lambda f, shape: export.factorize_conv("cp", tuple(f), shape),
  )
  return _common.build(dec, init=init, seed=seed, where=where, factors=factors)
