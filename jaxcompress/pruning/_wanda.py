"""Wanda: prune by weight magnitude times input activation norm, one shot, no weight update."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.graph._dense import PathSet, TokenMask, as_inputs, dense_layout, selected
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning._masking import PruningState, held


def wanda_score(w: jax.Array, norms: jax.Array) -> jax.Array:
  """Wanda's importance ``S_ij = |W_ij| · ‖X_j‖₂`` for a Flax kernel ``W: (in..., out)``.

  Args:
    w: a Dense kernel whose leading axes are the inputs (``(in, out)``, or
      ``(in_1, ..., in_k, out...)`` flattened to ``prod(in)`` inputs).
    norms: ``float[prod(in)]``, the L2 norm of each input feature over the calibration
      tokens.

  Returns:
    ``float32`` scores of ``w``'s shape.
  """
  w = jnp.asarray(w, jnp.float32)
  norms = jnp.asarray(norms, jnp.float32)
  lead = norms.size
  flat = w.reshape(lead, -1)
  return (jnp.abs(flat) * norms[:, None]).reshape(w.shape)


def per_output_mask(scores: jax.Array, sparsity: float, in_axes: int = 1) -> jax.Array:
  """Keeps, for every output feature, the ``n - round(sparsity · n)`` highest scores among
  its ``n`` inputs (Wanda's per-output comparison group; ties keep the earlier input).

  Args:
    scores: a kernel's scores, inputs on the leading ``in_axes`` axes.
    sparsity: fraction of each output's inputs removed, in [0, 1).
    in_axes: how many leading axes are inputs.

  Returns:
    A ``bool`` mask of ``scores.shape``; every output keeps exactly the same count.
  """
  n = int(np.prod(scores.shape[:in_axes]))
  flat = jnp.asarray(scores, jnp.float32).reshape(n, -1)
  keep = n - int(criteria.num_pruned(sparsity, n))
  flat = jnp.where(jnp.isnan(flat), -jnp.inf, flat)
  order = jnp.argsort(-flat, axis=0, stable=True)
  ranks = jnp.argsort(order, axis=0, stable=True)
  return (ranks < keep).reshape(scores.shape)


def wanda(
  sparsity: float | None = None,
  *,
  apply_fn: Callable[..., Any],
  batches: Iterable[Any],
  n: int | None = None,
  m: int | None = None,
  token_mask: TokenMask = None,
  where: select.Where = None,
) -> Compressor:
  """Wanda pruning: removes the weights with the smallest ``|W_ij| · ‖X_j‖₂`` per output.

  At ``init`` the model runs on the calibration ``batches`` with the params ``init``
  receives (inside :func:`~jaxcompress.chain`, the earlier stages' view), each Dense
  site's input is flattened to ``(tokens, in)`` (padding dropped with ``token_mask``,
  :func:`~jaxcompress.graph.dense_inputs`), and every weight is scored by its magnitude
  times the L2 norm of its input feature over the tokens (:func:`wanda_score`). Weights
  are compared within each output feature (a column of a Flax ``(in, out)`` kernel, the
  paper's per-output group): each keeps its ``in - round(sparsity · in)`` best inputs, or
  with ``n``/``m`` the ``n`` best of every ``m`` consecutive inputs (2:4). The masks are
  fixed from then on; the weights are not updated (one shot), and the compressor then
  behaves as every pruner: ``apply`` zeroes the pruned weights, ``update`` holds them at
  zero while fine-tuning, ``masks`` reports them (so it composes with
  :func:`~jaxcompress.train.make_step` and ``chain``), ``pack`` stores
  :class:`~jaxcompress.export.SparseArray` leaves.

  A kernel used at several sites (tied weights) sums its inputs' squared norms. Leaves
  that feed no Dense site (embeddings, biases) are not pruned; with an explicit ``where``
  selecting one, ``init`` raises.

  Args:
    sparsity: fraction of each output's inputs removed, in [0, 1) (default 0.5);
      omit it with ``n``/``m``.
    apply_fn: ``apply_fn(params, *inputs)``, the model.
    batches: calibration batches (tuples of inputs); the paper uses 128 sequences.
    n, m: N:M sparsity, ``n`` kept in every ``m`` consecutive inputs of each output
      (``n=2, m=4``); the input count must be divisible by ``m``.
    token_mask: which tokens count (:func:`~jaxcompress.graph.dense_inputs`): ``None``,
      the index of the batch input holding the attention mask, or ``batch -> mask``.
    where: which kernels (default: floating leaves with ``ndim >= 2`` that feed a
      Dense site).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`~jaxcompress.pruning.PruningState`.

  Raises:
    ValueError: if ``sparsity`` is outside [0, 1), given together with ``n``/``m``, or
      ``n > m``; at ``init``, if the batches are empty or hold only padding, a selected
      leaf feeds no Dense site or is not a Dense ``(in, out)`` kernel, or its input count
      is not divisible by ``m`` (naming the leaf and the values).

  References:
    Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large
    Language Models", https://arxiv.org/abs/2306.11695.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p['w']
    >>> x = jnp.array([[10.0, 1.0], [10.0, 1.0]])  # the first input is 10x larger
    >>> c = wanda(0.5, apply_fn=apply_fn, batches=[(x,)])
    >>> params, state = c.init({'w': jnp.array([[0.2, 1.0], [1.0, 0.05]])})
    >>> c.apply(params, state)['w'].tolist()  # magnitude would keep the 1.0s
    [[0.20000000298023224, 1.0], [0.0, 0.0]]
  """
  if (n is None) != (m is None):
    raise ValueError(f"N:M sparsity needs both n and m, got n={n}, m={m}")
  if n is not None and m is not None:
    if sparsity is not None:
      raise ValueError(f"give either sparsity={sparsity} or n={n}, m={m} (N:M fixes the sparsity to 1 - n/m)")
    m = validate.check_int("m", m, low=1)
    n = validate.check_int("n", n, low=1)
    if n > m:
      raise ValueError(f"N:M sparsity needs n <= m, got n={n}, m={m}")
  else:
    sparsity = validate.check_sparsity("sparsity", 0.5 if sparsity is None else sparsity)
  if not callable(apply_fn):
    raise TypeError(f"apply_fn must be callable, got {apply_fn!r}")
  batches = list(batches)
  if not batches:
    raise ValueError("wanda needs calibration batches: `batches` was empty")
  explicit = where is not None
  who = "wanda" if n is None else f"wanda {n}:{m}"

  def masks_for(params):
    chosen = selected(params, where)
    first = batches[0]
    fed = {s.path for s in graph.trace(apply_fn, params, *as_inputs(first))}
    if explicit and (missing := sorted(chosen - fed)):
      raise ValueError(f"where={where!r} selects {missing[:5]}, which feed no Dense site: Wanda needs their inputs")
    chosen &= fed
    if not chosen:
      raise ValueError(f"where={where!r} selects no kernel that feeds a Dense site of this model")
    stats = graph.dense_inputs(apply_fn, params, batches, where=PathSet(chosen), token_mask=token_mask)
    sq: dict[str, np.ndarray] = {}
    for s in stats.values():
      sq[s.site.path] = sq.get(s.site.path, 0.0) + s.sqnorm
    return sq, {s.site.path: s.site for s in stats.values()}

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: their zeros score 0 here
    sq, sites = masks_for(params)

    def init_leaf(path, p):
      if path not in sq:
        return None
      k = dense_layout(sites[path], tuple(p.shape))
      norms = jnp.asarray(np.sqrt(sq[path]), jnp.float32)
      scores = wanda_score(p, norms)
      if n is None or m is None:
        return per_output_mask(scores, float(sparsity or 0.0), in_axes=k)
      lead = int(np.prod(p.shape[:k]))
      if lead % m:
        raise ValueError(f"{who}: leaf {path!r} has {lead} inputs (shape {tuple(p.shape)}), not divisible by m={m}")
      flat = scores.reshape(lead, -1)
      return criteria.nm_mask(flat, n, m, axis=0).reshape(p.shape)

    masks_tree = leafwise.init_selected(params, lambda path, leaf: path in sq, init_leaf)
    state = PruningState(
      count=jnp.asarray(0, jnp.int32),
      masks=masks_tree,
      scores=jax.tree.map(lambda _: None, masks_tree),
      key=jax.random.key_data(jax.random.key(0)),
    )
    return params, state

  return held(init, PruningState, who)
