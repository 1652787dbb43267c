"""HashedNets: each layer's virtual weights drawn from ``K`` real values by a hash.

Numerics (:func:`hashed_least_squares`, :func:`hashed_sample`) act on one array; the
hash and the rebuild of the virtual weight are the packed format's own
(:func:`jaxcompress.export.hashed_dense`); :func:`hashed` is the compressor.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _reparam

INITS = ("least_squares", "sample")


@functools.partial(jax.jit, static_argnames=("buckets", "signed"))
def hashed_least_squares(w: jax.Array, seed: jax.Array, buckets: int, signed: bool = True) -> jax.Array:
  """The ``K`` values whose hashed weight is nearest to ``w`` in least squares.

  ``argmin_v sum_i (ξ(i) v[h(i)] - w_i)^2`` separates per bucket: ``v[k]`` is the mean of
  ``ξ(i) w_i`` over the coordinates hashed to ``k`` (0 for an empty bucket).

  Args:
    w: ``float`` array of any shape (the trained dense weight).
    seed: ``uint32`` scalar, the hash seed.
    buckets: ``K``, ``1 <= K <= w.size``.
    signed: with the sign hash.

  Returns:
    ``float[K]`` in ``w``'s dtype.
  """
  index, negative = export.hash_coordinates(seed, w.size, buckets)
  x = w.reshape(-1)
  if signed:
    x = jnp.where(negative, -x, x)
  sums = jax.ops.segment_sum(x, index, num_segments=buckets)
  counts = jax.ops.segment_sum(jnp.ones_like(x), index, num_segments=buckets)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), 0).astype(w.dtype)


@functools.partial(jax.jit, static_argnames=("buckets", "signed"))
def hashed_sample(w: jax.Array, seed: jax.Array, buckets: int, signed: bool = True) -> jax.Array:
  """The ``K`` values whose hashed weight agrees with ``w`` at the first coordinate
  (row-major) of each bucket: training from scratch, with ``w`` a fresh initialization
  (the values keep the initializer's distribution; 0 for an empty bucket).

  Args:
    w: ``float`` array of any shape.
    seed: ``uint32`` scalar, the hash seed.
    buckets: ``K``, ``1 <= K <= w.size``.
    signed: with the sign hash.

  Returns:
    ``float[K]`` in ``w``'s dtype.
  """
  index, negative = export.hash_coordinates(seed, w.size, buckets)
  x = w.reshape(-1)
  if signed:
    x = jnp.where(negative, -x, x)
  positions = jnp.arange(w.size, dtype=jnp.int32)
  first = jax.ops.segment_min(positions, index, num_segments=buckets)
  used = first < w.size
  return jnp.where(used, x[jnp.clip(first, 0, w.size - 1)], 0).astype(w.dtype)


@dataclasses.dataclass(frozen=True)
class HashedLeaf:
  """Per-leaf state of :func:`hashed`.

  Attributes:
    seed: ``uint32[]``, the leaf's hash seed.
    shape: the virtual weight's shape (static).
  """

  seed: jax.Array
  shape: tuple[int, ...]


jax.tree_util.register_dataclass(HashedLeaf, data_fields=["seed"], meta_fields=["shape"])


def hashed(
  ratio: float | None = None,
  *,
  buckets: int | None = None,
  signed: bool = True,
  init: str = "least_squares",
  seed: int = 0,
  where: select.Where = None,
) -> Compressor:
  """HashedNets (Chen et al. 2015): every selected weight drawn from ``K`` real values by a hash.

  Each selected leaf (``n`` virtual weights) is replaced in the *trainable tree* by
  ``float[K]`` real values; ``apply`` returns ``V[i] = ξ(i) · values[h(i)]`` with
  ``h(i) = murmur3(i, s) mod K`` and the sign hash ``ξ(i) = ±1`` (the top bit of a
  second murmur3 hash), ``i`` the row-major coordinate
  (:func:`jaxcompress.export.hash_coordinates`). The gradient reaches the ``K`` values
  through the gather (its transpose is a scatter-add): ``dL/dv[k] = sum over h(i) = k of
  ξ(i) dL/dV[i]`` (the paper's Eq. 10). The hash is fixed by the leaf's 32-bit seed ``s``
  (``murmur3(leaf number, seed)``, so layers hash differently), kept in the state and
  stored in the packed :class:`~jaxcompress.export.HashedArray`; no index array exists.

  Args:
    ratio: the compression factor ``K / n`` in ``(0, 1]`` (``1/8``, ``1/64`` in the paper);
      ``K = max(1, round(ratio * n))`` per leaf.
    buckets: ``K`` itself, the same for every leaf (instead of ``ratio``).
    signed: apply the sign hash ``ξ`` (the paper does; it makes the inner products of
      hashed features unbiased).
    init: ``'least_squares'``: the nearest hashed weight to the given (trained) one, per
      bucket the mean of ``ξ·w`` (:func:`hashed_least_squares`); ``'sample'``: the
      values at one coordinate per bucket, to train from scratch from a fresh
      initialization (:func:`hashed_sample`; the paper trains from scratch and does not
      say how the real weights are initialized).
    seed: the base seed of the hashes.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`HashedLeaf`; its
    trainable tree holds ``float[K]`` at the selected leaves. ``pack`` gives
    :class:`~jaxcompress.export.HashedArray` (``4 K + 4`` bytes at float32).

  Raises:
    ValueError: unless exactly one of ``ratio`` and ``buckets`` is given, if
      ``ratio`` is outside ``(0, 1]``, ``buckets < 1`` or ``init`` is unknown; at
      ``init``, if ``buckets`` exceeds a selected leaf's weight count (naming both), or
      as :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Chen, Wilson, Tyree, Weinberger & Chen 2015, "Compressing Neural Networks with the
    Hashing Trick", https://arxiv.org/abs/1504.04788.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = hashed(buckets=3)
    >>> params, state = c.init({'w': jnp.arange(12.0).reshape(3, 4)})
    >>> params['w'].shape  # the trainable values
    (3,)
    >>> c.apply(params, state)['w'].shape
    (3, 4)
    >>> g = jax.grad(lambda p: c.apply(p, state)['w'].sum())(params)['w']
    >>> float(jnp.abs(g).sum()) <= 12  # each value: the signed sum of its weights' gradients
    True
  """
  if (ratio is None) == (buckets is None):
    raise ValueError(f"give exactly one of ratio and buckets, got ratio={ratio!r}, buckets={buckets!r}")
  if ratio is not None:
    ratio = validate.check_float("ratio", ratio, low=0.0, high=1.0, low_open=True)
  if buckets is not None:
    buckets = validate.check_int("buckets", buckets, low=1, high=2**32)
  validate.check_choice("init", init, INITS)
  seed = validate.check_int("seed", seed, low=0, high=2**32 - 1)
  initial = hashed_least_squares if init == "least_squares" else hashed_sample

  def count(w) -> int:
    if buckets is not None:
      return buckets
    assert ratio is not None
    return max(1, round(ratio * w.size))

  def init_fn(params, *, masks=None):
    del masks
    number = [0]

    def init_leaf(path, w):
      k = count(w)
      if k > w.size:
        raise ValueError(f"buckets={k} is larger than the {w.size} weights of leaf {path!r}")
      leaf_seed = export.murmur3_32(jnp.uint32(number[0]), jnp.uint32(seed))
      number[0] += 1
      return initial(w, leaf_seed, k, signed), HashedLeaf(leaf_seed, tuple(w.shape))

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(values, leaf):
    if jnp.ndim(values) != 1:
      raise ValueError(
        f"expected the hashed values (1-D) in the trainable tree, got shape {tuple(jnp.shape(values))}: "
        "pass the tree that init returned, not the model's params"
      )
    return export.hashed_dense(values, leaf.seed, leaf.shape, signed)

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, HashedLeaf)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(values, leaf):
    seed_array = np.asarray(leaf.seed, np.uint32).reshape(())
    return export.HashedArray(values=np.asarray(values), seed=seed_array, dense_shape=leaf.shape, signed=signed)

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, HashedLeaf)

  return Compressor(init_fn, apply, update, pack)
