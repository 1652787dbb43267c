"""Gradient saliency ``|w * g|``, and SNIP: pruning at initialization from one batch."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning import _masking as masking
from jaxcompress.pruning._allocation import Allocation


def saliency_score(w: jax.Array, g: Any, acc: Any = None, key: Any = None) -> jax.Array:
  """``|w * g|``: the first-order estimate of the loss change when ``w`` is set to 0."""
  del acc, key
  return jnp.abs(w * g)


def saliency(
  sparsity: validate.ScalarOrSchedule,
  *,
  grads: Any = None,
  where: select.Where = None,
  scope: str = "layer",
  allocation: str | Allocation = "uniform",
  total_steps: int | None = None,
) -> Compressor:
  """Prunes the weights with the smallest first-order saliency ``|w * g|``.

  ``init`` ranks by ``|w * grads|`` when ``grads`` (a tree like the params, e.g. the
  gradient of one batch) is given; otherwise ``sparsity(0)`` must be 0. On a schedule,
  ``update`` ranks by the gradient it receives (``jaxcompress.train.make_step`` passes
  the step's gradient) on each step where a target count changes. Masked weights get
  zero gradient, so once pruned a weight stays pruned.

  Args:
    sparsity: fraction removed, in [0, 1), or a schedule ``step -> sparsity``.
    grads: gradients at the params given to ``init``, a tree with the params'
      structure and shapes, or ``None``.
    where, scope, allocation, total_steps: as for :func:`~jaxcompress.pruning.magnitude`.

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`~jaxcompress.pruning.PruningState`.

  Raises:
    ValueError: for a sparsity outside [0, 1) (with ``total_steps``, at any step of the
      run) or unknown ``scope``; at ``init``, if
      ``grads`` does not match the params (structure or a leaf's shape), or is missing
      while ``sparsity(0) > 0``; in ``update`` on a schedule, if called without
      ``grads`` (with a constant sparsity the masks are fixed and none are needed).

  References:
    Mozer & Smolensky 1989, "Skeletonization"; Molchanov, Tyree, Karras, Aila & Kautz
    2017, "Pruning Convolutional Neural Networks for Resource Efficient Inference",
    https://arxiv.org/abs/1611.06440.

  Example:
    >>> import jax.numpy as jnp
    >>> w = {'w': jnp.array([[1.0, -4.0], [3.0, 0.5]])}
    >>> g = {'w': jnp.array([[5.0, 0.1], [1.0, 2.0]])}
    >>> c = saliency(0.5, grads=g)
    >>> params, state = c.init(w)
    >>> c.apply(params, state)['w'].tolist()  # |w*g| = [[5, .4], [3, 1]]
    [[1.0, 0.0], [3.0, 0.0]]
  """
  return masking.build(
    sparsity,
    saliency_score,
    where=where,
    scope=scope,
    allocation=allocation,
    init_grads=grads,
    needs_grads=True,
    total_steps=total_steps,
    who="saliency pruning",
  )


def snip(sparsity: float, grads: Any, *, where: select.Where = None) -> Compressor:
  """SNIP: one-shot pruning at initialization by connection sensitivity ``|w * g|``.

  Ranks all selected weights together (Lee et al.'s normalized sensitivity
  ``|w g| / sum |w g|`` has the same order) and keeps the top ``1 - sparsity`` before
  training; the masks then stay fixed. The factory and ``init`` may run under ``jit`` or
  ``pmap``, with ``grads`` computed there (tracers): the constant sparsity is read at
  compile time.

  Args:
    sparsity: fraction removed, in [0, 1).
    grads: the gradient of the loss on one batch at the initial params (a tree with
      the params' structure and shapes), concrete or traced.
    where: which leaves to prune (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with
    :class:`~jaxcompress.pruning.PruningState`.

  Raises:
    ValueError: for a sparsity outside [0, 1); at ``init``, if ``grads`` does not
      match the params.

  References:
    Lee, Ajanthan & Torr 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", https://arxiv.org/abs/1810.02340.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'a': jnp.array([[1.0, 2.0]]), 'b': jnp.array([[3.0, 4.0]])}
    >>> grads = {'a': jnp.array([[9.0, 0.0]]), 'b': jnp.array([[1.0, 1.0]])}
    >>> c = snip(0.5, grads)
    >>> p, s = c.init(params)
    >>> [m.tolist() for m in (s.masks['a'], s.masks['b'])]
    [[[True, False]], [[False, True]]]
  """
  validate.check_sparsity("sparsity", sparsity)
  if grads is None:
    raise ValueError("snip needs grads: the gradient of one batch at the initial params")
  return masking.build(
    sparsity, saliency_score, where=where, scope="global", init_grads=grads, needs_grads=True, who="snip"
  )
