"""K-means codebook quantization with codebook fine-tuning (Deep Compression §3).

Numerics (:func:`init_centroids`, :func:`kmeans_1d`, :func:`assign`) act on a 1-D
array and are jit-safe (a fixed number of Lloyd iterations, fixed shapes);
:func:`kmeans` walks the tree and makes the codebooks the trainable parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import leaves_with_paths
from jaxcompress.quantization import _reparam, _ste, uniform
from jaxcompress.quantization.granularity import from_args

CENTROID_INITS = ("linear", "density", "kmeans++")


def init_centroids(
  x: jax.Array, k: int, method: str = "linear", key: jax.Array | None = None, weights: jax.Array | None = None
) -> jax.Array:
  """Initial centroids for 1-D k-means, ascending.

  Args:
    x: ``float[n]``, the values to cluster.
    k: the number of centroids.
    method: ``'linear'`` (``k`` values evenly spaced over ``[min x, max x]``),
      ``'density'`` (the ``x``-values where the empirical CDF crosses ``k`` evenly
      spaced levels in ``[0, 1]``: quantiles) or ``'kmeans++'`` (Arthur & Vassilvitskii
      2007: the first at random, each next one drawn with probability proportional to
      its squared distance to the nearest chosen one).
    key: a PRNG key, needed for ``'kmeans++'``.
    weights: ``bool[n]``: only these values count (the survivors of pruning); ``None``
      for all. With no value selected, every value counts.

  Returns:
    ``float[k]`` in ``x``'s dtype. Repeated values are allowed (fewer distinct values
    than ``k``).

  Raises:
    ValueError: for an unknown method, or ``'kmeans++'`` without a key.
  """
  w = jnp.ones(x.shape, bool) if weights is None else jnp.asarray(weights, bool)
  w = jnp.where(jnp.any(w), w, True)
  if method == "linear":
    lo, hi = jnp.min(jnp.where(w, x, jnp.inf)), jnp.max(jnp.where(w, x, -jnp.inf))
    return jnp.linspace(lo, hi, k).astype(x.dtype)
  if method == "density":
    return jnp.nanquantile(jnp.where(w, x, jnp.nan), jnp.linspace(0.0, 1.0, k)).astype(x.dtype)
  if method != "kmeans++":
    raise ValueError(f"method must be one of {CENTROID_INITS}, got {method!r}")
  if key is None:
    raise ValueError("method='kmeans++' needs a PRNG key")
  n = x.shape[0]
  keys = jax.random.split(key, k)
  wf = w.astype(jnp.float32)
  first = x[jax.random.choice(keys[0], n, p=wf / jnp.sum(wf))]
  centroids = jnp.full((k,), first, x.dtype)

  def pick(i, carry):
    centroids, d2 = carry
    d2 = d2 * wf
    total = jnp.sum(d2)
    p = jnp.where(total > 0, d2 / jnp.where(total > 0, total, 1), wf / jnp.sum(wf))  # all equal: uniform
    c = x[jax.random.choice(keys[i], n, p=p)]
    return centroids.at[i].set(c), jnp.minimum(d2, (x - c) ** 2)

  centroids, _ = jax.lax.fori_loop(1, k, pick, (centroids, (x - first) ** 2))
  return jnp.sort(centroids)


def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Index of the nearest centroid of each value (the first on ties), ``int32``."""
  return jnp.argmin(jnp.abs(x[..., None] - centroids), axis=-1).astype(jnp.int32)


def kmeans_1d(
  x: jax.Array, centroids: jax.Array, iterations: int, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Lloyd's algorithm on scalars for a fixed number of iterations (jit-safe).

  Each iteration assigns every value to its nearest centroid, then moves each centroid
  to the mean of its values; a centroid with no value keeps its place (so fewer
  distinct values than centroids leaves duplicates or unused centroids, never NaN).

  Args:
    x: ``float[n]``.
    centroids: ``float[k]``, the initial centroids.
    iterations: the number of Lloyd iterations, >= 0.
    weights: ``bool[n]``: only these values move the centroids (the survivors of
      pruning); ``None`` for all. Every value is still assigned.

  Returns:
    ``(centroids, assignments)``: the final ``float[k]`` and ``int32[n]`` with
    ``x ≈ centroids[assignments]``.
  """
  k = centroids.shape[0]
  w = jnp.ones_like(x) if weights is None else jnp.asarray(weights, x.dtype)

  def step(_, c):
    idx = assign(x, c)
    sums = jax.ops.segment_sum(x * w, idx, num_segments=k)
    counts = jax.ops.segment_sum(w, idx, num_segments=k)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), c)

  centroids = jax.lax.fori_loop(0, iterations, step, centroids)
  return centroids, assign(x, centroids)


def _check_codebook_dtype(codebook_dtype: str | None) -> np.dtype | None:
  if codebook_dtype is None:
    return None
  try:
    dtype = jnp.dtype(codebook_dtype)
  except (TypeError, ValueError):
    dtype = None
  if not isinstance(codebook_dtype, str) or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"codebook_dtype must be None or a floating dtype name such as 'float16', got {codebook_dtype!r}")
  return dtype


class KMeansLeaf(NamedTuple):
  """Per-leaf state of :func:`kmeans`.

  Attributes:
    indices: ``int32`` assignments, the weight's shape (fixed during fine-tuning).
  """

  indices: jax.Array


def kmeans(
  clusters: int = 16,
  *,
  centroid_init: str = "linear",
  iterations: int = 20,
  per_channel: bool = False,
  axis: int = -1,
  seed: int = 0,
  codebook_dtype: str | None = None,
  where: select.Where = None,
) -> Compressor:
  """K-means weight sharing with codebook fine-tuning (Deep Compression, §3).

  ``init`` clusters each selected leaf's values (per layer, or per slice along ``axis``
  with ``per_channel``) into ``clusters`` centroids with ``iterations`` Lloyd steps run
  in JAX, then replaces the leaf in the *trainable tree* by its codebook (``float[k]``,
  or ``float[c, k]`` per channel); the assignments stay fixed in the state. ``apply``
  returns ``codebook[indices]``. Gradient: ``dL/dcodebook[j] = sum of dL/dw_i over the
  weights i assigned to centroid j`` (Han et al. 2016, Eq. 3; the transpose of the
  gather), so fine-tuning trains the shared values. A leaf with fewer distinct values
  than clusters is handled: its spare centroids stay unused or repeat a value.
  ``pack`` stores a :class:`~jaxcompress.export.CodebookArray` with
  ``ceil(log2 clusters)``-bit indices. Clustering runs on the values divided by the power
  of two nearest above ``max|w|`` (exact; float32 for half types), so weights up to the
  dtype's largest finite value cluster without overflow.

  After pruning, ``chain(prune, kmeans(...))`` is Deep Compression: ``init`` receives the
  keep-masks (``masks=``) and clusters the survivors only (initialization and Lloyd
  steps; pruned weights are assigned but never move a centroid), the chain keeps the
  pruned positions at exactly zero (their gradient is zero, so no centroid is trained
  by them and no weight revives), and the packed indices are stored for the survivors
  only.

  ``codebook_dtype='float16'`` (or ``'bfloat16'``) stores the codebooks in that dtype, half
  the codebook bytes (for a small model they weigh as much as its indices). The paper keeps
  float32 centroids, the default (``None``: the weight's dtype). With the option the
  centroids *are* half values: ``apply`` rounds each to the nearest ``codebook_dtype``
  value (values past its largest finite one saturate there, never ``inf``) with a
  straight-through gradient, so fine-tuning trains float32 shadow centroids while the model
  trained, evaluated and stored is the one the file holds; ``pack`` stores the rounded
  codebook, and the loaded weights come back in the weight's dtype (exactly: every half
  value is a float32 value).

  Args:
    clusters: centroids per codebook, >= 2 (16 gives 4-bit indices).
    centroid_init: ``'linear'`` (the paper's best), ``'density'`` or ``'kmeans++'``
      (see :func:`init_centroids`).
    iterations: Lloyd iterations, >= 0 (0 keeps the initial centroids).
    per_channel: one codebook per slice along ``axis`` instead of one per leaf.
    axis: the channel axis (-1: Flax's output features).
    seed: seeds ``'kmeans++'``.
    codebook_dtype: the floating dtype the codebooks are stored (and rounded) in, narrower
      than the weights (``'float16'``, ``'bfloat16'``); ``None`` keeps the weight's dtype.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`KMeansLeaf`; its trainable tree
    holds the codebooks at the selected leaves.

  Raises:
    ValueError: if ``clusters < 2``, ``iterations < 0``, ``centroid_init`` is
      unknown, or ``codebook_dtype`` is not a floating dtype name; at ``init``, as :func:`jaxcompress.core.leafwise.init_selected`, if
      ``axis`` is out of range, or if ``clusters`` exceeds the number of weights
      sharing a codebook.

  References:
    Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", https://arxiv.org/abs/1510.00149.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> c = kmeans(2)
    >>> params, state = c.init({'w': jnp.array([[0.1, 0.2], [2.0, 2.2]])})
    >>> [round(v, 2) for v in params['w'].tolist()]  # the trainable codebook
    [0.15, 2.1]
    >>> c.apply(params, state)['w'][:, 0].tolist() == params['w'].tolist()
    True
    >>> grad = jax.grad(lambda p: (c.apply(p, state)['w'] * jnp.array([[1., 2.], [3., 4.]])).sum())
    >>> grad(params)['w'].tolist()  # each centroid: the sum of its weights' gradients
    [3.0, 7.0]
  """
  clusters = validate.check_int("clusters", clusters, low=2)
  validate.check_choice("centroid_init", centroid_init, CENTROID_INITS)
  iterations = validate.check_int("iterations", iterations, low=0)
  granularity = from_args(per_channel=per_channel, axis=axis)
  seed = validate.check_int("seed", seed)
  root = jax.random.key(seed)
  stored_dtype = _check_codebook_dtype(codebook_dtype)

  def rounded(codebook):
    """The codebook as stored: each centroid rounded to ``codebook_dtype`` (saturating)."""
    if stored_dtype is None or jnp.dtype(codebook.dtype).itemsize <= stored_dtype.itemsize:
      return codebook
    limit = float(jnp.finfo(stored_dtype).max)
    half = jnp.clip(codebook, -limit, limit).astype(stored_dtype)
    return _ste.straight_through(codebook, half.astype(codebook.dtype))

  def cluster(x, key, keep):
    # Cluster x / 2^e with 2^e the power of two at max|x| (exact scaling, float32 for half
    # types): distances and sums stay finite even at the dtype's largest values.
    z = uniform.upcast(x)
    _, e = jnp.frexp(jnp.max(jnp.abs(z)))
    z = jnp.ldexp(z, -e)
    centroids, idx = kmeans_1d(z, init_centroids(z, clusters, centroid_init, key, keep), iterations, keep)
    return jnp.ldexp(centroids, e).astype(x.dtype), idx

  def init(params, *, masks=None):
    counter = [0]
    keep_of = dict(leaves_with_paths(masks)) if masks is not None else {}

    def init_leaf(path, w):
      keep = keep_of.get(path)
      keep = jnp.ones(w.shape, bool) if keep is None else jnp.asarray(keep, bool)
      key = jax.random.fold_in(root, counter[0])
      counter[0] += 1
      granularity.check(tuple(w.shape), f"leaf {path!r}")
      per_codebook = w.size // w.shape[axis] if per_channel else w.size
      if clusters > per_codebook:
        raise ValueError(f"clusters={clusters} is larger than the {per_codebook} weights per codebook of leaf {path!r}")
      if not per_channel:
        codebook, idx = cluster(w.reshape(-1), key, keep.reshape(-1))
        return codebook, KMeansLeaf(idx.reshape(w.shape))
      rows, keep_rows = jnp.moveaxis(w, axis, 0), jnp.moveaxis(keep, axis, 0)
      n_rows = rows.shape[0]
      codebook, idx = jax.vmap(cluster)(
        rows.reshape(n_rows, -1), jax.random.split(key, n_rows), keep_rows.reshape(n_rows, -1)
      )
      return codebook, KMeansLeaf(jnp.moveaxis(idx.reshape(rows.shape), 0, axis))

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def dense(codebook, leaf):
    idx = leaf.indices
    expected = (idx.shape[axis], clusters) if per_channel else (clusters,)
    if tuple(jnp.shape(codebook)) != expected:
      raise ValueError(
        f"expected a codebook of shape {expected} in the trainable tree, got {tuple(jnp.shape(codebook))}: "
        "pass the tree that init returned, not the model's params"
      )
    codebook = rounded(codebook)
    if not per_channel:
      return codebook[leaf.indices]
    channel = jax.lax.broadcasted_iota(jnp.int32, leaf.indices.shape, axis % leaf.indices.ndim)
    return codebook[channel, leaf.indices]

  def apply(params, state):
    return _reparam.map_nodes(dense, params, state.leaves, KMeansLeaf)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(codebook, leaf):
    dtype = jnp.dtype(codebook.dtype)
    book = np.asarray(rounded(jnp.asarray(codebook)))
    if stored_dtype is not None and dtype.itemsize > stored_dtype.itemsize:
      book = book.astype(stored_dtype)  # exact: the values are already stored_dtype's
    return export.from_assignments(book, np.asarray(leaf.indices), axis=axis if per_channel else None, dtype=dtype)

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, KMeansLeaf)

  return Compressor(init, apply, update, pack)
