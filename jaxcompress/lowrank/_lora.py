"""LoRA: a frozen kernel plus a trained low-rank update (Hu et al. 2021).

The same glue as the decompositions (:mod:`._common`): the trainable node of a kernel is
:class:`LoRAFactors` ``(base, a, b)`` and ``apply`` rebuilds
``stop_gradient(base) + (alpha / r) · a @ b``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.lowrank import _common


class LoRAFactors(NamedTuple):
  """The trainable node of a LoRA kernel: ``kernel = stop_gradient(base) + scale · a @ b``.

  Attributes:
    base: ``float[m, n]``, the pretrained kernel (its gradient is zero, so it stays put
      under optimizers without weight decay; mask it out of a decaying optimizer).
    a: ``float[m, r]``, Gaussian at init.
    b: ``float[r, n]``, zero at init (the model starts exactly at ``base``).
  """

  base: jax.Array
  a: jax.Array
  b: jax.Array


def lora(
  rank: int,
  *,
  alpha: float | None = None,
  seed: int = 0,
  where: select.Where = None,
) -> Compressor:
  """Low-rank adaptation of Dense kernels: train ``a @ b`` beside the frozen kernel.

  ``init`` replaces each selected ``(m, n)`` kernel by :class:`LoRAFactors`; ``apply``
  returns ``stop_gradient(base) + (alpha / rank) · a @ b``; ``pack`` stores the merged
  kernel (LoRA's deployment: no extra inference cost). :func:`~jaxcompress.lowrank.report`
  lists the trainable ``rank · (m + n)`` parameters of each kernel.

  Args:
    rank: ``r >= 1``, at most ``min(m, n)`` of every selected kernel.
    alpha: the scale numerator (``None``: ``alpha = rank``, a scale of 1).
    seed: seeds ``a``'s Gaussian initialization (std ``1/sqrt(m)``).
    where: which leaves (default: floating 2-D leaves).

  Returns:
    A :class:`~jaxcompress.Compressor` with a :class:`~jaxcompress.lowrank.LowRankState`.

  Raises:
    ValueError: for ``rank < 1`` or a non-positive ``alpha``; at ``init``, for a rank
      beyond a kernel's ``min(m, n)`` or a selected leaf that is not 2-D, naming it.

  References:
    Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen 2021, "LoRA: Low-Rank Adaptation of
    Large Language Models", https://arxiv.org/abs/2106.09685. In Flax's ``x @ W``
    layout the paper's ``ΔW = BA`` (``B`` zero) is ``a @ b`` with ``b`` zero; the std of
    ``a`` is this library's choice.

  Example:
    >>> import jax.numpy as jnp
    >>> c = lora(2)
    >>> params, state = c.init({'w': jnp.ones((4, 3))})
    >>> c.apply(params, state)['w'].tolist() == jnp.ones((4, 3)).tolist()  # b starts at zero
    True
  """
  rank = validate.check_int("rank", rank, low=1)
  scale = 1.0 if alpha is None else validate.check_float("alpha", alpha, low=0.0, low_open=True) / rank

  def decompose(w, r, key):
    m, n = w.shape
    a = jax.random.normal(key, (m, r[0]), w.dtype) / jnp.sqrt(m).astype(w.dtype)
    return LoRAFactors(w, a, jnp.zeros((r[0], n), w.dtype))

  dec = _common.Decomposition(
    kind="lora",
    ndim=2,
    ranks=lambda path, w: (_common.resolve_rank(rank, min(w.shape), path, tuple(w.shape)),),
    params=lambda shape, r: r[0] * (shape[0] + shape[1]),
    decompose=decompose,
    rebuild=lambda f: jax.lax.stop_gradient(f.base) + scale * (f.a @ f.b),
    pack=lambda f, shape: np.asarray(jnp.asarray(f.base) + scale * (jnp.asarray(f.a) @ jnp.asarray(f.b))),
  )
  return _common.build(dec, init="decomposition", seed=seed, where=where, always=True)
