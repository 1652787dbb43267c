"""Toeplitz weights, a low-displacement-rank structure (Sindhwani, Sainath & Kumar 2015).

Numerics: :func:`nearest_toeplitz` (least squares), :func:`sample_toeplitz`,
:func:`toeplitz_matmul` (``x @ T`` with one FFT product); the dense rebuild is the packed
format's (:func:`jaxcompress.export.toeplitz_dense`); :func:`toeplitz` is the compressor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _reparam
from jaxcompress.sharing._hashed import INITS


@jax.jit
def nearest_toeplitz(w: jax.Array) -> jax.Array:
  """The Toeplitz matrix nearest to ``w`` in Frobenius norm, as its ``m + n - 1`` diagonals.

  Each diagonal value appears only on its own diagonal, so the least squares problem
  separates: ``t[k]`` is the mean of ``w`` along the diagonal ``i - j = k - (n - 1)``.

  Args:
    w: ``float`` kernel with ``ndim >= 2``, read as the matrix
      :func:`~jaxcompress.export.matrix_shape` ``(m, n)``.

  Returns:
    ``float[m + n - 1]`` in ``w``'s dtype (:func:`jaxcompress.export.toeplitz_dense`
    rebuilds the matrix).
  """
  m, n = export.matrix_shape(tuple(w.shape))
  k = (np.arange(m)[:, None] - np.arange(n)[None, :] + n - 1).reshape(-1)
  sums = jax.ops.segment_sum(w.reshape(-1), k, num_segments=m + n - 1)
  counts = np.bincount(k, minlength=m + n - 1)
  return (sums / counts).astype(w.dtype)


def sample_toeplitz(w: jax.Array) -> jax.Array:
  """The Toeplitz matrix that agrees with ``w`` on its first row and column, as
  diagonals: for training from scratch from a fresh initialization.

  Args:
    w: ``float`` kernel with ``ndim >= 2``, read as the matrix ``(m, n)``.

  Returns:
    ``float[m + n - 1]`` in ``w``'s dtype.
  """
  matrix = w.reshape(export.matrix_shape(tuple(w.shape)))
  return jnp.concatenate([matrix[0, :0:-1], matrix[:, 0]])


def toeplitz_matmul(x: jax.Array, diagonals: jax.Array, n: int) -> jax.Array:
  """``x @ T`` for the ``m x n`` Toeplitz ``T[i, j] = t[i - j + n - 1]``, with one real FFT product.

  ``(x @ T)[j] = sum_i x[i] t[i + n - 1 - j]`` is the cross-correlation
  ``z[k] = sum_i x[i] t[i + k]`` read backwards (``k = n - 1 - j``); at FFT length
  ``L >= m + n - 1`` the circular correlation ``irfft(conj(rfft(x)) · rfft(t))`` has no
  wrap-around at ``k < n``.

  Args:
    x: ``float[..., m]``.
    diagonals: ``float[m + n - 1]``.
    n: the number of columns.

  Returns:
    ``float[..., n]`` in ``x``'s dtype, equal to ``x @ toeplitz_dense(t, (m, n))`` up to
    float rounding.

  Raises:
    ValueError: if ``diagonals`` does not have ``m + n - 1`` entries.
  """
  m = x.shape[-1]
  if diagonals.shape != (m + n - 1,):
    raise ValueError(f"a {m} x {n} Toeplitz matrix has {m + n - 1} diagonals, got shape {tuple(diagonals.shape)}")
  length = 1 << (m + n - 2).bit_length()  # a power of two >= m + n - 1
  z = jnp.fft.irfft(jnp.conj(jnp.fft.rfft(x, length)) * jnp.fft.rfft(diagonals, length), length)
  return z[..., n - 1 :: -1].astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class ToeplitzLeaf:
  """Per-leaf state of :func:`toeplitz`: the kernel's shape (static; no arrays)."""

  shape: tuple[int, ...]


jax.tree_util.register_dataclass(ToeplitzLeaf, data_fields=[], meta_fields=["shape"])


def toeplitz(*, init: str = "least_squares", where: select.Where = None) -> Compressor:
  """Toeplitz weights: every selected kernel constant along its diagonals.

  Each selected kernel (read as the matrix ``(m, n) = (prod(shape[:-1]), shape[-1])``)
  is replaced in the *trainable tree* by its ``m + n - 1`` diagonals; ``apply``
  rebuilds ``T[i, j] = t[i - j + n - 1]`` (a gather: each diagonal is trained by the
  summed gradient along it). Toeplitz matrices have displacement rank <= 2 (Sindhwani
  et al., §3: the "Toeplitz-like" family of rank ``r`` contains them at ``r = 2``);
  :func:`toeplitz_matmul` multiplies with an FFT. ``pack`` stores
  :class:`~jaxcompress.export.ToeplitzArray`.

  The paper trains square ``n x n`` layers of a chosen displacement rank from scratch;
  this is its Toeplitz case, for rectangular kernels too, and initializes from a trained
  kernel by least squares (or from a fresh one by its first row and column). General
  displacement rank ``r`` (``sum_i Z_1(g_i) Z_{-1}(h_i)``) is not implemented.

  Args:
    init: ``'least_squares'`` (the mean along each diagonal, :func:`nearest_toeplitz`)
      or ``'sample'`` (the first row and column, :func:`sample_toeplitz`).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`ToeplitzLeaf`; its
    trainable tree holds ``float[m + n - 1]`` at the selected leaves.

  Raises:
    ValueError: if ``init`` is unknown; at ``init``, if a selected leaf has fewer than 2
      axes (naming it), or as :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Sindhwani, Sainath & Kumar 2015, "Structured Transforms for Small-Footprint Deep
    Learning", https://arxiv.org/abs/1510.01722.

  Example:
    >>> import jax.numpy as jnp
    >>> c = toeplitz()
    >>> params, state = c.init({'w': jnp.array([[1.0, 2.0], [4.0, 3.0]])})
    >>> params['w'].tolist()  # t[0] = w[0, 1]; t[1]: mean of (1, 3); t[2] = w[1, 0]
    [2.0, 2.0, 4.0]
    >>> c.apply(params, state)['w'].tolist()
    [[2.0, 2.0], [4.0, 2.0]]
  """
  validate.check_choice("init", init, INITS)
  initial = nearest_toeplitz if init == "least_squares" else sample_toeplitz

  def init_fn(params, *, masks=None):
    del masks

    def return_leaf(path, w):
      if w.ndim < 2:
        raise ValueError(f"leaf {path!r} has shape {tuple(w.shape)}: a Toeplitz weight needs at least 2 axes")
      return initial(w), ToeplitzLeaf(tuple(w.shape))

    trainable, leaves = _reparam.init(params, where, return_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(diagonals, leaf):
    m, n = export.matrix_shape(leaf.shape)
    if tuple(jnp.shape(diagonals)) != (m + n - 1,):
      raise ValueError(
        f"expected {m + n - 1} diagonals in the trainable tree, got shape {tuple(jnp.shape(diagonals))}: "
        "pass the tree that init returned, not the model's params"
      )
    return export.toeplitz_dense(diagonals, leaf.shape)

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, ToeplitzLeaf)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack(params, state):
    return _reparam.map_nodes(
      lambda t, leaf: export.ToeplitzArray(diagonals=np.asarray(t), dense_shape=leaf.shape),
      params,
      state.leaves,
      ToeplitzLeaf,
    )

  return Compressor(init_fn, apply, update, pack)
