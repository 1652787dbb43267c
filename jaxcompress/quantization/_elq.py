"""Explicit loss-error-aware quantization (ELQ, Zhou et al. 2018), as far as verified.

Incremental binary/ternary quantization in which each stage quantizes and freezes the
weights whose quantization perturbs the loss (first order) and the weights least.
:func:`elq_cost` is the per-weight criterion; :func:`elq` walks the tree, on INQ's
incremental machinery (``_inq.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.pruning._criteria import num_pruned
from jaxcompress.quantization._admm import codebook_values, project
from jaxcompress.quantization._inq import check_schedule, frozen_of, inq_partition, portion_at

KINDS = ("binary", "ternary")


def elq_indices(w: jax.Array, alpha: jax.Array, kind: str) -> jax.Array:
  """Index of the nearest of ``[-α, α]`` (binary; 0 goes to ``+α``) or ``[-α, 0, α]``
  (ternary: 0 for ``|w| < α/2``) for each weight, ``int32``."""
  if kind == "binary":
    return jnp.where(w < 0, 0, 1).astype(jnp.int32)
  a = jnp.abs(w).astype(jnp.float32)
  nonzero = (a >= alpha * 0.5) & (alpha > 0)
  return jnp.where(nonzero, jnp.where(w < 0, 0, 2), 1).astype(jnp.int32)


def _codebook(alpha: jax.Array, kind: str, dtype) -> jax.Array:
  return (alpha * jnp.asarray(codebook_values(kind))).astype(dtype)


def elq_quantize(w: jax.Array, alpha: jax.Array, kind: str) -> jax.Array:
  """``w`` rounded to the nearest value of ``α·{-1, 1}`` or ``α·{-1, 0, 1}``."""
  return _codebook(alpha, kind, w.dtype)[elq_indices(w, alpha, kind)]


def elq_cost(w: jax.Array, grad: jax.Array, q: jax.Array, error_weight: float = 1.0) -> jax.Array:
  """Per-weight cost of quantizing ``w`` to ``q``: ``|g (q - w)| + λ (q - w)²``.

  The first term is the first-order (Taylor) change of the loss if this weight alone
  moved to ``q``, the second the weight approximation error, weighted by ``λ =
  error_weight``. Computed in float32.

  Args:
    w: the weights.
    grad: ``dL/dw`` at the current weights (the gradient of the step just taken).
    q: the quantized values.
    error_weight: ``λ >= 0``.

  Returns:
    ``float32`` array of ``w``'s shape, ``>= 0``.
  """
  d = q.astype(jnp.float32) - w.astype(jnp.float32)
  return jnp.abs(grad.astype(jnp.float32) * d) + error_weight * d * d


class ELQLeaf(NamedTuple):
  """Per-leaf state of :func:`elq`.

  Attributes:
    frozen: ``bool[shape]``, the quantized-and-frozen weights.
    alpha: ``float32`` scalar, the layer's scale, fixed at ``init``.
  """

  frozen: jax.Array
  alpha: jax.Array


def elq(
  kind: str = "ternary",
  *,
  steps: Sequence[int],
  portions: Sequence[float] = (0.5, 0.75, 0.875, 1.0),
  error_weight: float = 1.0,
  where: select.Where = None,
) -> Compressor:
  """Loss-error-aware incremental quantization to binary or ternary weights.

  What is implemented: per layer, ``α`` is the exact L2-optimal scale of the weights at
  ``init`` (:func:`~jaxcompress.quantization._admm.project`, binary or ternary) and
  stays fixed; each weight's target ``q`` is its nearest value in ``α·{-1, (0,) 1}``.
  On INQ's schedule of accumulated ``portions`` from ``steps`` (validated as
  :func:`~jaxcompress.quantization._inq.check_schedule`), each new portion quantizes and
  freezes, among the weights not yet frozen, those with the *smallest*
  :func:`elq_cost` ``|g (q - w)| + λ (q - w)²`` (``g`` the gradient of the current step,
  from ``update(grads=)``; 0 at ``init``, where the first portion is chosen by the
  approximation error alone) — the loss perturbation and the weight approximation error
  that ELQ regularizes, used here as the selection rule. Frozen weights are held by the
  ``frozen`` seam (no gradient, update or optimizer moments under ``train.make_step``);
  the rest retrain in float. ``pack`` stores a
  :class:`~jaxcompress.export.CodebookArray` (``[-α, 0, α]`` at 2 bits or ``[-α, α]``
  at 1 bit) once every weight is frozen, the dense view before.

  What is uncertain: this follows ELQ's abstract (Zhou et al., CVPR 2018: the loss
  perturbation from weight quantization, the weight approximation error, an incremental
  strategy), not the paper's equations, which could not be checked here. The paper's
  exact objective (how the two terms are weighted, whether the loss term is the signed
  first-order change or its magnitude, any second-order term), its way of updating
  ``α`` across stages and its partition rule may differ from the choices above
  (magnitude of the first-order term, a fixed ``λ``, ``α`` fixed at ``init``,
  smallest-cost-first selection). The row in the results table is this method.

  Args:
    kind: ``'binary'`` or ``'ternary'``.
    steps: the step from which each portion holds (strictly increasing, ``>= 0``).
    portions: accumulated portions in ``(0, 1]``, nondecreasing, ending at 1.
    error_weight: ``λ >= 0``, the weight of the approximation error.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` holding :class:`ELQLeaf`.

  Raises:
    ValueError: on an unknown ``kind``, ``error_weight < 0`` or an invalid schedule; at
      ``init``, as :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Zhou, Yao, Wang & Chen 2018, "Explicit Loss-Error-Aware Quantization for Low-Bit
    Deep Neural Networks", CVPR,
    https://openaccess.thecvf.com/content_cvpr_2018/html/Zhou_Explicit_Loss-Error-Aware_Quantization_CVPR_2018_paper.html.

  Example:
    >>> import jax.numpy as jnp
    >>> c = elq('ternary', steps=(0, 1), portions=(0.5, 1.0))
    >>> params, state = c.init({'w': jnp.array([[1.0, -0.9], [0.1, 0.6]])})
    >>> c.apply(params, state)['w'].tolist()  # alpha = 2.5 / 3 (exact); the two cheapest frozen
    [[1.0, -0.8333333134651184], [0.0, 0.6000000238418579]]
  """
  kind = validate.check_choice("kind", kind, KINDS)
  portions, steps = check_schedule(portions, steps)
  error_weight = validate.check_float("error_weight", error_weight, low=0.0)

  def quantize_frozen(w, leaf):
    return jnp.where(leaf.frozen, elq_quantize(w, leaf.alpha, kind), w)

  def refreeze(w, leaf, g, count):
    cost = elq_cost(w, g, elq_quantize(w, leaf.alpha, kind), error_weight)
    leaf = leaf._replace(frozen=inq_partition(-cost, leaf.frozen, count))
    return quantize_frozen(w, leaf), leaf

  def init_leaf(path, p):
    del path
    alpha, _ = project(p, kind)
    return ELQLeaf(frozen=jnp.zeros(p.shape, bool), alpha=alpha)

  def init(params, *, masks=None):
    del masks
    leaves = leafwise.init_selected(params, where, init_leaf)
    state = leafwise.LeafwiseState.start(leaves)
    portion = portion_at(state.count, portions, steps)
    params, leaves = leafwise.update_selected(
      lambda w, leaf: refreeze(w, leaf, jnp.zeros_like(w), num_pruned(portion, w.size)), params, leaves
    )
    return params, state._replace(leaves=leaves)

  def apply(params, state):
    return leafwise.map_selected(
      lambda w, leaf: jnp.where(leaf.frozen, jax.lax.stop_gradient(elq_quantize(w, leaf.alpha, kind)), w),
      params,
      state.leaves,
    )

  def update(params, state, *, grads=None, **extra):
    del extra
    before = portion_at(state.count, portions, steps)
    state = state.advance()
    after = portion_at(state.count, portions, steps)
    gtree = jax.tree.map(jnp.zeros_like, params) if grads is None else grads

    def one(w, leaf, g):
      g = jnp.where(jnp.isfinite(g), g, 0)
      return jax.lax.cond(
        num_pruned(after, w.size) != num_pruned(before, w.size),
        lambda w, leaf, g: refreeze(w, leaf, g, num_pruned(after, w.size)),
        lambda w, leaf, g: (quantize_frozen(w, leaf), leaf),
        w,
        leaf,
        g,
      )

    params, leaves = leafwise.update_selected(one, params, state.leaves, gtree)
    return params, state._replace(leaves=leaves)

  def pack_leaf(p, leaf):
    w = jnp.asarray(export.materialize(p))
    if not np.asarray(leaf.frozen).all():
      return np.asarray(quantize_frozen(w, leaf))
    codebook = np.asarray(_codebook(leaf.alpha, kind, w.dtype))
    return export.from_assignments(codebook, np.asarray(elq_indices(w, leaf.alpha, kind)))

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  def frozen(state):
    return frozen_of(state.leaves, ELQLeaf)

  return Compressor(init, apply, update, pack, frozen=frozen)
