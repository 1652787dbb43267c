"""Block-circulant weights, multiplied with the FFT (Cheng et al. 2015; CirCNN, Ding et al. 2017).

Numerics: :func:`nearest_circulant` (least squares projection of a dense matrix),
:func:`circulant_matmul` (``x @ C`` in ``O(n log b)`` per block row); the dense rebuild
is the packed format's (:func:`jaxcompress.export.circulant_dense`); :func:`circulant`
is the compressor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import path_str
from jaxcompress.quantization import _reparam
from jaxcompress.sharing._hashed import INITS


def check_blocks(shape: tuple[int, ...], block: int, path: str = "the weight") -> tuple[int, int]:
  """``(p, q)``, the block counts of a kernel of ``shape`` in ``block x block`` blocks.

  Raises:
    ValueError: if ``block`` does not divide both sides of :func:`~jaxcompress.export.matrix_shape`,
      naming the block size, the leaf and its shape.
  """
  if len(shape) < 2:
    raise ValueError(f"{path} has shape {shape}: a block-circulant weight needs at least 2 axes")
  m, n = export.matrix_shape(shape)
  if m % block or n % block:
    raise ValueError(f"block={block} does not divide the {m} x {n} matrix of {path} (shape {shape})")
  return m // block, n // block


@functools.partial(jax.jit, static_argnames=("block",))
def nearest_circulant(w: jax.Array, block: int) -> jax.Array:
  """The block-circulant matrix nearest to ``w`` in Frobenius norm, as defining vectors.

  Each block is projected on its own: the circulant ``C[i, j] = c[(i - j) mod b]``
  nearest to a block ``B`` has ``c[d]`` = the mean of ``B`` along the wrapped diagonal
  ``i - j ≡ d (mod b)`` (each ``c[d]`` appears once in every row, so the least squares
  problem separates per diagonal).

  Args:
    w: ``float`` kernel, read as the matrix :func:`~jaxcompress.export.matrix_shape`.
    block: ``b``, dividing both sides of that matrix.

  Returns:
    ``float[p, q, b]`` in ``w``'s dtype (:func:`jaxcompress.export.circulant_dense`
    rebuilds the matrix).

  Raises:
    ValueError: as :func:`check_blocks`.
  """
  p, q = check_blocks(tuple(w.shape), block)
  blocks = w.reshape(p, block, q, block).transpose(0, 2, 1, 3)  # [p, q, i, j]
  i = np.arange(block)[None, :]
  d = np.arange(block)[:, None]
  return jnp.mean(blocks[:, :, i, (i - d) % block], axis=-1).astype(w.dtype)


@functools.partial(jax.jit, static_argnames=("block",))
def sample_circulant(w: jax.Array, block: int) -> jax.Array:
  """The block-circulant matrix that agrees with ``w`` on each block's first column, as
  defining vectors: for training from scratch from a fresh initialization (the vectors
  keep the initializer's distribution).

  Args:
    w: ``float`` kernel, read as the matrix :func:`~jaxcompress.export.matrix_shape`.
    block: ``b``, dividing both sides of that matrix.

  Returns:
    ``float[p, q, b]`` in ``w``'s dtype.

  Raises:
    ValueError: as :func:`check_blocks`.
  """
  p, q = check_blocks(tuple(w.shape), block)
  return w.reshape(p, block, q, block)[:, :, :, 0].transpose(0, 2, 1)


def circulant_matmul(x: jax.Array, vectors: jax.Array) -> jax.Array:
  """``x @ C`` for the block-circulant ``C`` of ``vectors``, with real FFTs.

  For one block, ``x @ C = C^T x`` is a circular cross-correlation:
  ``(x @ C)[j] = sum_i x[i] c[(i - j) mod b] = irfft(conj(rfft(c)) · rfft(x))``. The
  block sums are taken in the frequency domain, so each call does one ``rfft`` per input
  block, a complex contraction of ``p q (b/2 + 1)`` products per row, and one ``irfft``
  per output block: ``O(m n / b + (m + n) log b)`` per row instead of ``m n``.

  Args:
    x: ``float[..., p * b]``.
    vectors: ``float[p, q, b]``.

  Returns:
    ``float[..., q * b]``, ``x``'s dtype; equal to ``x @ circulant_dense(vectors)`` up
    to float rounding.

  Raises:
    ValueError: if ``x``'s last axis is not ``p * b``.
  """
  p, q, b = vectors.shape
  if x.shape[-1] != p * b:
    raise ValueError(f"x has {x.shape[-1]} features, the block-circulant matrix has {p * b} rows")
  xf = jnp.fft.rfft(x.reshape(*x.shape[:-1], p, b), axis=-1)  # [..., p, f]
  cf = jnp.conj(jnp.fft.rfft(vectors, axis=-1))  # [p, q, f]
  yf = jnp.einsum("...pf,pqf->...qf", xf, cf)
  y = jnp.fft.irfft(yf, n=b, axis=-1)
  return y.reshape(*x.shape[:-1], q * b).astype(x.dtype)


def fft_rule(block: int) -> Callable[..., jax.Array]:
  """A :func:`jaxcompress.graph.rewrite` rule computing ``x @ W`` with :func:`circulant_matmul`.

  At a site where the weight operand is the kernel itself (2-D, untransposed, contracted
  on axis 0 against the activation's last axis, no batch axes), the defining vectors are
  read from each ``b x b`` block's first column and the product runs through the FFT;
  any other site runs its original op. Exact only where the kernel *is*
  block-circulant (the view of :func:`circulant`, also after an elementwise stage such
  as a quantizer; not after pruning). Gradients: the FFT path's gradient with respect to
  the vectors lands on those first columns, which :func:`circulant`'s ``apply`` maps back
  to the vectors, so training through the rule gives the same gradient as the dense path.

  Args:
    block: ``b``.

  Returns:
    ``rule(site, activation, weight) -> output``.
  """

  def rule(site: Any, activation: jax.Array, weight: jax.Array) -> jax.Array:
    dims = site.params.get("dimension_numbers")
    plain = (
      site.op == "dot_general"
      and site.weight_operand == 1
      and site.leaf_axes == (0, 1)
      and dims == (((activation.ndim - 1,), (0,)), ((), ()))
      and weight.shape[0] % block == 0
      and weight.shape[1] % block == 0
    )
    if not plain:
      return site.compute(activation, weight)
    m, n = weight.shape
    vectors = weight.reshape(m // block, block, n // block, block)[:, :, :, 0].transpose(0, 2, 1)
    out = circulant_matmul(activation, vectors.astype(activation.dtype))
    return out.astype(jnp.result_type(activation, weight))

  return rule


@dataclasses.dataclass(frozen=True)
class CirculantLeaf:
  """Per-leaf state of :func:`circulant`: the kernel's shape (static; no arrays)."""

  shape: tuple[int, ...]


jax.tree_util.register_dataclass(CirculantLeaf, data_fields=[], meta_fields=["shape"])


def circulant(block: int, *, init: str = "least_squares", fft: bool = False, where: select.Where = None) -> Compressor:
  """Block-circulant weights: every ``b x b`` block of a kernel is a circulant matrix.

  Each selected kernel (read as the matrix ``(prod(shape[:-1]), shape[-1])``, so a Flax
  ``Dense`` kernel ``(in, out)`` is split into ``in/b x out/b`` blocks) is replaced in
  the *trainable tree* by its defining vectors ``float[p, q, b]``: ``m n / b`` values
  instead of ``m n``. ``apply`` rebuilds the dense kernel (a gather, so each vector entry
  is trained by the summed gradient of its wrapped diagonal); :func:`circulant_matmul`
  computes ``x @ C`` with FFTs from the vectors, which is what makes the layer fast for
  large blocks (Cheng et al.; CirCNN uses it for both inference and training). ``pack``
  stores :class:`~jaxcompress.export.CirculantArray`.

  Cheng et al. 2015 use one circulant ``n x n`` (padding rectangular layers); CirCNN
  partitions into ``b x b`` circulant blocks. This follows CirCNN (``block = n`` is
  Cheng's square case) and requires ``b`` to divide both sides, instead of padding.

  Args:
    block: ``b``, the circulant block size, >= 1 (1 keeps the dense kernel).
    init: ``'least_squares'``: each block's nearest circulant, the mean along each
      wrapped diagonal (:func:`nearest_circulant`), to start from a trained kernel;
      ``'sample'``: each block's first column (:func:`sample_circulant`), to train from
      scratch from a fresh initialization.
    fft: make ``rewrite`` compute the selected kernels' matmuls with the FFT
      (:func:`fft_rule`), in training and evaluation; only where no later stage breaks
      the block-circulant structure (a pruner does; a quantizer does not).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`CirculantLeaf`; its
    trainable tree holds ``float[p, q, b]`` at the selected leaves.

  Raises:
    ValueError: if ``block < 1`` or ``init`` is unknown; at ``init``, if ``block``
      does not divide a selected kernel's matrix (naming the block, the leaf and its
      shape), or as :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Cheng, Yu, Feris, Kumar, Choudhary & Chang 2015, "An exploration of parameter
    redundancy in deep networks with circulant projections", https://arxiv.org/abs/1502.03436;
    Ding et al. 2017, "CirCNN: Accelerating and Compressing Deep Neural Networks Using
    Block-Circulant Weight Matrices", https://arxiv.org/abs/1708.08917.

  Example:
    >>> import jax.numpy as jnp
    >>> c = circulant(2)
    >>> params, state = c.init({'w': jnp.array([[1.0, 2.0], [4.0, 3.0]])})
    >>> params['w'].tolist()  # c[0]: mean of the diagonal (1, 3); c[1]: of (4, 2)
    [[[2.0, 3.0]]]
    >>> c.apply(params, state)['w'].tolist()
    [[2.0, 3.0], [3.0, 2.0]]
  """
  block = validate.check_int("block", block, low=1)
  validate.check_choice("init", init, INITS)
  initial = nearest_circulant if init == "least_squares" else sample_circulant

  def init_fn(params, *, masks=None):
    del masks

    def init_leaf(path, w):
      check_blocks(tuple(w.shape), block, f"leaf {path!r}")
      return initial(w, block), CirculantLeaf(tuple(w.shape))

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(vectors, leaf):
    p, q = check_blocks(leaf.shape, block)
    if tuple(jnp.shape(vectors)) != (p, q, block):
      raise ValueError(
        f"expected defining vectors of shape {(p, q, block)} in the trainable tree, got {tuple(jnp.shape(vectors))}: "
        "pass the tree that init returned, not the model's params"
      )
    return export.circulant_dense(vectors, leaf.shape)

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, CirculantLeaf)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack(params, state):
    return _reparam.map_nodes(
      lambda v, leaf: export.CirculantArray(vectors=np.asarray(v), dense_shape=leaf.shape),
      params,
      state.leaves,
      CirculantLeaf,
    )

  def rewrite(fn, params, state):
    del params
    if not fft:
      return fn
    is_state = lambda x: x is None or isinstance(x, CirculantLeaf)
    flat, _ = jax.tree_util.tree_flatten_with_path(state.leaves, is_leaf=is_state)
    selected = {path_str(kp) for kp, s in flat if s is not None}
    return graph.rewrite(fn, fft_rule(block), where=lambda path, site: path in selected)

  return Compressor(init_fn, apply, update, pack, rewrite=rewrite)
