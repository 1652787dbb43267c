"""N:M semi-structured sparsity: every group of M consecutive weights keeps N."""

from __future__ import annotations

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._magnitude import magnitude_score


def n_m(n: int, m: int, *, axis: int = -2, where: select.Where = None) -> Compressor:
  """N:M sparsity along the contraction axis, by magnitude: 2:4, 1:4, 4:8, ...

  In every group of ``m`` consecutive weights along ``axis``, the ``n`` largest ``|w|``
  are kept (ties keep the earlier weight), so every group holds exactly ``n`` nonzeros
  (fewer only if a kept weight is itself 0) and the sparsity is exactly ``1 - n/m``.
  The default ``axis=-2`` is the input (contraction) axis of Flax kernels, Dense
  ``(in, out)`` and Conv ``(h, w, in, out)``, the layout sparse tensor cores expect.
  The masks are chosen at ``init`` (prune a trained model once, then fine-tune) and
  stay fixed; ``update`` holds pruned weights at exactly 0. ``pack`` stores a
  :class:`~jaxcompress.export.SparseArray`; for 2:4 its bitmask costs 4 bits per group,
  the same as two 2-bit indices.

  Args:
    n: weights kept per group, ``1 <= n <= m``.
    m: group length, ``>= 1``.
    axis: the grouped axis of each selected leaf.
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with
    :class:`~jaxcompress.pruning.PruningState`.

  Raises:
    ValueError: if ``n > m``, either is not a positive integer, ``axis`` is not an int;
      at ``init``, if a selected leaf's ``axis`` length is not divisible by ``m`` (the
      message names the leaf's shape and ``m``).

  References:
    Mishra, Latorre, Pool, Stosic, Stosic, Venkatesh, Yu & Micikevicius 2021,
    "Accelerating Sparse Deep Neural Networks", https://arxiv.org/abs/2104.08378;
    Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From
    Scratch", https://arxiv.org/abs/2102.04010.

  Example:
    >>> import jax.numpy as jnp
    >>> c = n_m(2, 4)
    >>> params, state = c.init({'w': jnp.array([[1.0], [-4.0], [3.0], [0.5]])})
    >>> c.apply(params, state)['w'].ravel().tolist()
    [0.0, -4.0, 3.0, 0.0]
  """
  m = validate.check_int("m", m, low=1)
  n = validate.check_int("n", n, low=1)
  if n > m:
    raise ValueError(f"N:M sparsity needs n <= m, got n={n}, m={m}")
  axis = validate.check_int("axis", axis)
  structure = lambda scores, s: criteria.nm_mask(scores, n, m, axis)
  return masking.build(
    1.0 - n / m if n < m else 0.0,
    magnitude_score,
    where=where,
    structure=structure,
    who=f"{n}:{m} pruning",
  )
