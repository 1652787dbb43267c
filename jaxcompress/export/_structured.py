"""Packed leaves of parameter sharing: hashed, block-circulant and Toeplitz weights.

Each format is defined by the few numbers it stores and a deterministic rule that
rebuilds the dense weight from them: the rule is part of the format, so it lives here
(``jaxcompress.sharing`` trains with the same functions, which makes ``pack`` then
``materialize`` equal to the compressor's ``apply`` bit for bit).

- :class:`HashedArray`: HashedNets' ``K`` real values and the 32-bit seed of the hash
  that maps every coordinate to one of them (and to a sign); no index array is stored.
- :class:`CirculantArray`: one defining vector per ``b x b`` circulant block.
- :class:`ToeplitzArray`: the ``m + n - 1`` diagonals of a Toeplitz matrix.
- :class:`DisplacementArray`: the generators ``G, H`` of a Toeplitz-like matrix of
  displacement rank ``r``.
- :class:`TiedArray`: one member of a cross-layer sharing group (the weight stored once).

Each stored vector may itself be a compressed leaf (a later quantizer's values, kept as
a :class:`~jaxcompress.export.CodebookArray` by ``recompose``). Pruning one entry of a
shared weight cannot drop a stored number (it stands for many entries), so ``prune`` is
the default :class:`~jaxcompress.export.MaskedArray` fallback.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export._base import CompressedLeaf, materialize
from jaxcompress.export._codebook import from_assignments

_C1, _C2 = 0xCC9E2D51, 0x1B873593
_SIGN_SALT = 0x9E3779B9  # the sign hash's seed is the bucket hash's seed XOR this


def _u32(x: Any) -> jax.Array:
  return jnp.asarray(x, jnp.uint32)


def _rotl(x: jax.Array, r: int) -> jax.Array:
  return (x << _u32(r)) | (x >> _u32(32 - r))


def murmur3_32(key: jax.Array, seed: jax.Array) -> jax.Array:
  """MurmurHash3 (x86, 32-bit) of each 4-byte little-endian ``uint32`` key.

  The standard algorithm (Appleby, SMHasher) for a one-block key, in ``jax.numpy``
  ``uint32`` arithmetic (wrapping), so it is jittable and identical on every backend.

  Args:
    key: integer array, taken modulo ``2**32``.
    seed: a ``uint32`` scalar (or an array broadcastable to ``key``).

  Returns:
    ``uint32`` array of ``key``'s shape.
  """
  k = _u32(key) * _u32(_C1)
  k = _rotl(k, 15) * _u32(_C2)
  h = _rotl(_u32(seed) ^ k, 13) * _u32(5) + _u32(0xE6546B64)
  h = h ^ _u32(4)  # the key's length in bytes
  h = h ^ (h >> _u32(16))
  h = h * _u32(0x85EBCA6B)
  h = h ^ (h >> _u32(13))
  h = h * _u32(0xC2B2AE35)
  return h ^ (h >> _u32(16))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compiled call when run eagerly, inlined under jit
def hash_coordinates(seed: jax.Array, size: int, buckets: int) -> tuple[jax.Array, jax.Array]:
  """HashedNets' two hashes of every coordinate of a weight of ``size`` entries.

  The coordinate is the row-major flat index ``i`` (a bijection of the multi-index for a
  fixed shape). ``h(i) = murmur3(i, seed) mod buckets`` picks the shared value and
  ``ξ(i) = -1`` where the top bit of ``murmur3(i, seed XOR 0x9E3779B9)`` is set, else
  ``+1``.

  Args:
    seed: ``uint32`` scalar, the leaf's hash seed (traced values allowed).
    size: the number of virtual weights.
    buckets: ``K``, the number of real values, ``1 <= K <= 2**32``.

  Returns:
    ``(index, negative)``: ``int32[size]`` in ``[0, K)`` and ``bool[size]``.
  """
  i = jnp.arange(size, dtype=jnp.uint32)
  index = (murmur3_32(i, seed) % _u32(buckets)).astype(jnp.int32)
  negative = (murmur3_32(i, _u32(seed) ^ _u32(_SIGN_SALT)) >> _u32(31)) == 1
  return index, negative


@functools.partial(jax.jit, static_argnames=("shape", "signed"))
def hashed_dense(values: jax.Array, seed: jax.Array, shape: tuple[int, ...], signed: bool = True) -> jax.Array:
  """The virtual weight ``V[i] = ξ(i) · values[h(i)]`` of ``shape`` (HashedNets, Eq. 3-4).

  Differentiable in ``values``: the gather's transpose is a scatter-add, so each real
  value receives the summed (sign-corrected) gradients of its virtual weights.

  Args:
    values: ``float[K]``.
    seed: ``uint32`` scalar.
    shape: the virtual weight's shape.
    signed: apply the sign hash ``ξ`` (the paper's choice); ``False`` for ``ξ = 1``.

  Returns:
    ``values``'s dtype, ``shape``.
  """
  size = int(np.prod(shape, dtype=np.int64))
  index, negative = hash_coordinates(seed, size, int(values.shape[0]))
  dense = values[index]
  if signed:
    dense = jnp.where(negative, -dense, dense)
  return dense.reshape(shape)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
  """The matrix a kernel of ``shape`` is read as: ``(prod(shape[:-1]), shape[-1])``."""
  m = int(np.prod(shape[:-1], dtype=np.int64))
  return m, int(shape[-1])


@functools.partial(jax.jit, static_argnames=("shape",))
def circulant_dense(vectors: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The block-circulant matrix of the defining vectors, reshaped to ``shape``.

  Block ``(I, J)`` is the circulant ``C[i, j] = c[I, J, (i - j) mod b]`` (first column
  ``c[I, J]``, as ``scipy.linalg.circulant``).

  Args:
    vectors: ``float[p, q, b]``, ``p * b`` rows and ``q * b`` columns.
    shape: the dense shape; :func:`matrix_shape` of it must be ``(p * b, q * b)``.

  Returns:
    ``vectors``'s dtype, ``shape``.
  """
  b = vectors.shape[-1]
  d = (np.arange(b)[:, None] - np.arange(b)[None, :]) % b
  blocks = vectors[:, :, d]  # [p, q, b, b]
  return blocks.transpose(0, 2, 1, 3).reshape(shape)


@functools.partial(jax.jit, static_argnames=("shape",))
def toeplitz_dense(diagonals: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The Toeplitz matrix ``T[i, j] = t[i - j + n - 1]`` of ``m + n - 1`` diagonals, reshaped to ``shape``.

  ``t[n - 1:]`` is the first column and ``t[n - 1::-1]`` the first row (so
  ``scipy.linalg.toeplitz(c, r)`` has ``t = concat(r[:0:-1], c)``).

  Args:
    diagonals: ``float[m + n - 1]``.
    shape: the dense shape, read as the matrix :func:`matrix_shape`.

  Returns:
    ``diagonals``'s dtype, ``shape``.
  """
  m, n = matrix_shape(shape)
  k = np.arange(m)[:, None] - np.arange(n)[None, :] + n - 1
  return diagonals[k].reshape(shape)


def ldr_size(shape: tuple[int, ...]) -> int:
  """``N = max(m, n)``: a Toeplitz-like kernel of :func:`matrix_shape` ``(m, n)`` is the
  top-left ``m x n`` block of an ``N x N`` one."""
  return max(matrix_shape(shape))


def f_circulant(v: jax.Array, f: float) -> jax.Array:
  """``Z_f(v)``, the ``f``-circulant matrix with first column ``v`` (the last axis; leading axes batch).

  ``Z_f(v)[i, j] = v[i - j]`` for ``i >= j`` and ``f · v[i - j + N]`` for ``i < j``:
  ``Z_1`` is circulant, ``Z_{-1}`` skew-circulant (Sindhwani et al. 2015, §3).

  Args:
    v: ``float[..., N]``.
    f: the corner factor.

  Returns:
    ``float[..., N, N]``, ``v``'s dtype.
  """
  n = v.shape[-1]
  i, j = np.arange(n)[:, None], np.arange(n)[None, :]
  sign = np.where(i >= j, 1.0, f).astype(np.dtype(v.dtype))
  return v[..., (i - j) % n] * sign


@functools.partial(jax.jit, static_argnames=("shape",))
def ldr_dense(g: jax.Array, h: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The Toeplitz-like matrix ``M = sum_k Z_1(g_k) Z_{-1}(h_k)``, its top-left block reshaped to ``shape``.

  ``M`` has displacement rank ``<= r`` under ``L[M] = Z_1 M - M Z_{-1}`` (it equals
  ``D = 2 sum_k g_k (J h_k)^T``, ``J`` the reversal; Sindhwani et al. 2015, §3). Built in
  ``O(r N^2)`` rather than the ``r N^3`` of the products: the first column is
  ``sum_k Z_1(g_k) h_k``, and ``M[i, j + 1] = M[i - 1, j] - D[i, j]`` (the displacement
  equation read entrywise) gives the rest as running sums along the wrapped diagonals.

  Args:
    g: ``float[r, N]``, ``N =`` :func:`ldr_size` of ``shape``.
    h: ``float[r, N]``.
    shape: the dense shape, read as the matrix :func:`matrix_shape` ``(m, n)``.

  Returns:
    ``g``'s dtype, ``shape``: ``M[:m, :n]``.
  """
  m, n = matrix_shape(shape)
  size = g.shape[-1]
  i, j = np.arange(size)[:, None], np.arange(size)[None, :]
  # first column: M e_0 = sum_k Z_1(g_k) h_k, a circular convolution
  first = jnp.einsum("kab,kb->a", g[:, (i - j) % size], h)
  # L[M] = D = 2 G^T (J H); M[i, j + 1] = M[i - 1, j] - D[i, j] unrolls along each wrapped
  # diagonal: M[i, j] = first[i - j] - sum_{t < j} D[(i - j + 1 + t) mod N, t]
  d = 2 * jnp.einsum("ka,kb->ab", g, h[:, ::-1])
  along = jnp.cumsum(d[(i + j) % size, j], axis=1)  # along[e, t] = sum_{t' <= t} D[(e + t') mod N, t']
  tail = jnp.where(j >= 1, along[(i - j + 1) % size, (j - 1) % size], 0)
  full = first[(i - j) % size] - tail
  return full[:m, :n].astype(g.dtype).reshape(shape)


def _compact(values: np.ndarray) -> Any:
  """``values`` as a dense array, or a codebook of its distinct values when that is smaller."""
  values = np.ascontiguousarray(values)
  bits = values.view(f"u{values.dtype.itemsize}")  # distinct bit patterns: -0.0 is not +0.0
  distinct, inverse = np.unique(bits, return_inverse=True)
  if distinct.size > 1 << 16:
    return values
  book = from_assignments(distinct.view(values.dtype), inverse.reshape(values.shape))
  return book if book.nbytes < values.nbytes else values


def _recompose(owner: Any, field: str, leaf: Any, dense: np.ndarray, rebuilt: Any, values: np.ndarray) -> Any:
  """``owner`` holding ``values`` (compacted) in ``field`` when they rebuild ``leaf`` exactly, else ``leaf``."""
  if not np.array_equal(np.asarray(rebuilt).reshape(dense.shape), dense):
    return leaf
  if isinstance(getattr(owner, field), np.ndarray) and np.array_equal(values, getattr(owner, field)):
    return owner
  return dataclasses.replace(owner, **{field: _compact(values)})


@dataclasses.dataclass(frozen=True)
class HashedArray(CompressedLeaf):
  """A HashedNets weight: ``V[i] = ξ(i) · values[h(i)]`` (:func:`hashed_dense`).

  Chen, Wilson, Tyree, Weinberger & Chen 2015, "Compressing Neural Networks with the
  Hashing Trick", https://arxiv.org/abs/1504.04788.

  Attributes:
    values: ``float[K]`` (or a compressed leaf of ``K`` entries).
    seed: ``uint32[]``, the hash seed: the only thing stored for the ``size`` indices.
    dense_shape: the virtual weight's shape.
    signed: whether the sign hash is applied.
  """

  values: Any
  seed: Any
  dense_shape: tuple[int, ...]
  signed: bool = True

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def materialize(self) -> jax.Array:
    return hashed_dense(jnp.asarray(materialize(self.values)), jnp.asarray(self.seed), self.dense_shape, self.signed)

  def recompose(self, leaf: Any) -> Any:
    """A later stage's leaf kept as ``K`` values (a codebook when smaller), when it is
    still a hashed weight of the same hash."""
    dense = np.asarray(materialize(leaf)).reshape(-1)
    k = int(self.values.shape[0])
    index, negative = (np.asarray(a) for a in hash_coordinates(jnp.asarray(self.seed), dense.size, k))
    first = np.full(k, dense.size, np.int64)
    np.minimum.at(first, index, np.arange(dense.size))
    used = first < dense.size
    signed = np.where(negative, -dense, dense) if self.signed else dense
    values = np.zeros(k, dense.dtype)
    values[used] = signed[first[used]]
    rebuilt = hashed_dense(jnp.asarray(values), jnp.asarray(self.seed), self.dense_shape, self.signed).reshape(-1)
    return _recompose(self, "values", leaf, dense, rebuilt, values)


jax.tree_util.register_dataclass(HashedArray, data_fields=["values", "seed"], meta_fields=["dense_shape", "signed"])


@dataclasses.dataclass(frozen=True)
class CirculantArray(CompressedLeaf):
  """A block-circulant weight (:func:`circulant_dense`): ``p * q`` defining vectors of ``b``.

  Cheng, Yu, Feris, Kumar, Choudhary & Chang 2015, https://arxiv.org/abs/1502.03436;
  Ding et al. 2017 (CirCNN), https://arxiv.org/abs/1708.08917.

  Attributes:
    vectors: ``float[p, q, b]`` (or a compressed leaf of that shape).
    dense_shape: the kernel's shape (read as the matrix :func:`matrix_shape`).
  """

  vectors: Any
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def materialize(self) -> jax.Array:
    return circulant_dense(jnp.asarray(materialize(self.vectors)), self.dense_shape)

  def recompose(self, leaf: Any) -> Any:
    """A later stage's leaf kept as defining vectors (a codebook when smaller), when it is
    still block-circulant with the same blocks."""
    p, q, b = self.vectors.shape
    dense = np.asarray(materialize(leaf))
    vectors = dense.reshape(p, b, q, b)[:, :, :, 0].transpose(0, 2, 1)  # first column of each block
    rebuilt = circulant_dense(jnp.asarray(vectors), self.dense_shape)
    return _recompose(self, "vectors", leaf, dense, rebuilt, vectors)


jax.tree_util.register_dataclass(CirculantArray, data_fields=["vectors"], meta_fields=["dense_shape"])


@dataclasses.dataclass(frozen=True)
class ToeplitzArray(CompressedLeaf):
  """A Toeplitz weight (:func:`toeplitz_dense`): its ``m + n - 1`` diagonals.

  Sindhwani, Sainath & Kumar 2015, "Structured Transforms for Small-Footprint Deep
  Learning", https://arxiv.org/abs/1510.01722.

  Attributes:
    diagonals: ``float[m + n - 1]`` (or a compressed leaf of that shape).
    dense_shape: the kernel's shape (read as the matrix :func:`matrix_shape`).
  """

  diagonals: Any
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def materialize(self) -> jax.Array:
    return toeplitz_dense(jnp.asarray(materialize(self.diagonals)), self.dense_shape)

  def recompose(self, leaf: Any) -> Any:
    """A later stage's leaf kept as diagonals (a codebook when smaller), when it is still
    Toeplitz."""
    m, n = matrix_shape(self.dense_shape)
    dense = np.asarray(materialize(leaf))
    matrix = dense.reshape(m, n)
    diagonals = np.concatenate([matrix[0, :0:-1], matrix[:, 0]])
    rebuilt = toeplitz_dense(jnp.asarray(diagonals), self.dense_shape)
    return _recompose(self, "diagonals", leaf, dense, rebuilt, diagonals)


jax.tree_util.register_dataclass(ToeplitzArray, data_fields=["diagonals"], meta_fields=["dense_shape"])


@dataclasses.dataclass(frozen=True)
class DisplacementArray(CompressedLeaf):
  """A Toeplitz-like weight of displacement rank ``r`` (:func:`ldr_dense`): its generators.

  Sindhwani, Sainath & Kumar 2015, "Structured Transforms for Small-Footprint Deep
  Learning", https://arxiv.org/abs/1510.01722.

  Attributes:
    g: ``float[r, N]`` (or a compressed leaf of that shape), ``N =`` :func:`ldr_size`.
    h: ``float[r, N]`` (or a compressed leaf of that shape).
    dense_shape: the kernel's shape (read as the matrix :func:`matrix_shape`).
  """

  g: Any
  h: Any
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def materialize(self) -> jax.Array:
    return ldr_dense(jnp.asarray(materialize(self.g)), jnp.asarray(materialize(self.h)), self.dense_shape)


jax.tree_util.register_dataclass(DisplacementArray, data_fields=["g", "h"], meta_fields=["dense_shape"])


@dataclasses.dataclass(frozen=True)
class TiedArray(CompressedLeaf):
  """A packed member of a weight-sharing group.

  The group's first member stores the weight (``primary``); every other member holds a
  reference to the same array and counts 0 bytes (:func:`jaxcompress.export.save` writes
  an array that occurs several times once).

  Attributes:
    values: the shared weight (an array or a compressed leaf).
    source: the path of the member that stores it.
    primary: whether this member is the one that stores it.
  """

  values: Any
  source: str
  primary: bool

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.values.shape)

  @property
  def nbytes(self) -> int:
    """The shared weight's bytes at the primary member, 0 at the others."""
    return super().nbytes if self.primary else 0

  def materialize(self) -> jax.Array:
    return jnp.asarray(materialize(self.values))


jax.tree_util.register_dataclass(TiedArray, data_fields=["values"], meta_fields=["source", "primary"])
