"""ADMM quantization (Leng et al. 2018): weights W, their projection G, the scaled dual U.

Numerics (:func:`level_values`, :func:`project`) act on one array; :func:`admm` walks the
tree. The projection solves ``min_{α, Q} ||w - α Q||²`` over a scaled set exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.quantization import _ste, uniform

KINDS = ("binary", "ternary", "power_of_two")


def level_values(kind: str, levels: int = 1) -> tuple[float, ...]:
  """The positive levels ``l`` of the unscaled set (the set is ``{±α l}``, with 0 unless
  binary): ``(1,)`` for binary and ternary, ``(1, 2, ..., 2^(levels-1))`` for power of two."""
  if kind == "power_of_two":
    return tuple(float(2**i) for i in range(levels))
  return (1.0,)


def codebook_values(kind: str, levels: int = 1) -> np.ndarray:
  """The unscaled codebook, ascending: ``[-1, 1]`` (binary), ``[-1, 0, 1]`` (ternary),
  ``[-2^(L-1), ..., -1, 0, 1, ..., 2^(L-1)]`` (power of two), ``float32``."""
  pos = np.asarray(level_values(kind, levels), np.float32)
  zero = np.zeros(0 if kind == "binary" else 1, np.float32)
  return np.concatenate([-pos[::-1], zero, pos])


def _exact_scale(a: jax.Array, pos: tuple[float, ...]) -> jax.Array:
  """``argmin_α min_q Σ (a_i - α q_i)²`` over ``q_i in {0} ∪ pos``, for ``a >= 0`` (flat).

  For a fixed ``α`` each ``a_i`` takes its nearest level; ``a_i`` moves from level
  ``l_{j-1}`` to ``l_j`` as ``α`` falls below ``a_i / t_j``, ``t_j = (l_{j-1} + l_j)/2``.
  Between consecutive breakpoints the assignment is fixed and the error is the quadratic
  ``||a||² - 2 α S1 + α² S2`` (``S1 = Σ a_i q_i``, ``S2 = Σ q_i²``), minimized at
  ``S1/S2`` clipped to the interval. Sweeping the sorted breakpoints with running sums
  visits every interval, so the best of them is the global minimum: exact, in
  ``O(n m log(n m))`` for ``m`` levels.
  """
  lv = np.asarray((0.0, *pos), np.float32)
  t = jnp.asarray((lv[:-1] + lv[1:]) / 2)
  b = (a[:, None] / t[None, :]).reshape(-1)
  d1 = (a[:, None] * jnp.asarray(lv[1:] - lv[:-1])[None, :]).reshape(-1)
  d2 = jnp.broadcast_to(jnp.asarray(lv[1:] ** 2 - lv[:-1] ** 2), (a.shape[0], len(pos))).reshape(-1)
  order = jnp.argsort(-b)
  b, d1, d2 = b[order], d1[order], d2[order]
  s1, s2 = jnp.cumsum(d1), jnp.cumsum(d2)
  lo = jnp.concatenate([b[1:], jnp.zeros((1,), b.dtype)])
  alpha = jnp.clip(s1 / s2, lo, b)
  err = alpha * (alpha * s2 - 2 * s1)
  return alpha[jnp.argmin(err)]


def _assign(a: jax.Array, alpha: jax.Array, pos: tuple[float, ...]) -> jax.Array:
  """The index ``j`` (0 for zero, ``j`` for ``pos[j-1]``) of the level nearest ``a / α``."""
  lv = np.asarray((0.0, *pos), np.float32)
  t = (lv[:-1] + lv[1:]) / 2
  j = jnp.zeros(a.shape, jnp.int32)
  for tj in t:
    j = j + (a >= alpha * float(tj)).astype(jnp.int32)
  return j


def project(w: jax.Array, kind: str, levels: int = 1) -> tuple[jax.Array, jax.Array]:
  """Euclidean projection onto ``{α Q}``: ``min_{α >= 0, Q} ||w - α Q||²``, solved.

  ``kind``: ``'binary'`` (``Q in {-1, 1}``: ``α = mean|w|``, ``Q = sign(w)``, the closed
  form), ``'ternary'`` (``Q in {-1, 0, 1}``) or ``'power_of_two'`` (``Q in {0, ±1, ±2,
  ..., ±2^(levels-1)}``). Leng et al. alternate between ``α`` and ``Q`` (``Q`` by
  rounding ``w/α``, ``α = <w, Q>/<Q, Q>``), which can stop at a local minimum; here the
  ternary and power-of-two problems are solved exactly by a sweep over every interval of
  ``α`` with a fixed assignment (:func:`_exact_scale`), followed by one such ``α``
  step on the resulting assignment (which cannot increase the error). Per tensor, as in
  the paper. Computed in float32 on ``|w|`` scaled by the power of two at its max (exact;
  the projection is scale-equivariant), so extreme finite values stay finite.

  Args:
    w: float array.
    kind: one of ``'binary'``, ``'ternary'``, ``'power_of_two'``.
    levels: the number of powers of two (``power_of_two`` only), 1..16.

  Returns:
    ``(alpha, indices)``: ``alpha`` a float32 scalar ``>= 0`` (0 for an all-zero ``w``),
    ``indices`` ``int32`` into :func:`codebook_values` (``w``'s shape), so the projection
    is ``alpha * codebook_values(kind, levels)[indices]``.
  """
  a = jnp.abs(uniform.upcast(w)).astype(jnp.float32).reshape(-1)
  top = jnp.max(a)
  _, e = jnp.frexp(jnp.where(top > 0, top, 1.0))
  a = jnp.ldexp(a, -e)  # in [0, 1): sums of squares cannot overflow
  sign_neg = (w < 0).reshape(-1)
  if kind == "binary":
    alpha = jnp.mean(a)
    idx = jnp.where(sign_neg, 0, 1)
  else:
    pos = level_values(kind, levels)
    alpha = _exact_scale(a, pos)
    j = jnp.where(alpha > 0, _assign(a, alpha, pos), 0)  # an all-zero w: every code 0
    q = jnp.asarray((0.0, *pos), jnp.float32)[j]
    s2 = jnp.sum(q * q)
    alpha = jnp.where(s2 > 0, jnp.sum(a * q) / jnp.where(s2 > 0, s2, 1.0), 0.0)
    m = len(pos)
    idx = jnp.where(sign_neg, m - j, m + j)
  return jnp.ldexp(alpha, e), idx.reshape(w.shape).astype(jnp.int32)


def _codebook(alpha: jax.Array, kind: str, levels: int, dtype) -> jax.Array:
  return uniform.saturate(alpha * jnp.asarray(codebook_values(kind, levels)), dtype).astype(dtype)


class ADMMLeaf(NamedTuple):
  """Per-leaf state of :func:`admm`.

  Attributes:
    indices: ``int32[shape]``, ``G``'s codebook indices.
    alpha: ``float32`` scalar, ``G``'s scale, so ``G = alpha * codebook[indices]``.
    dual: the scaled dual variable ``U``, the weight's shape and dtype.
  """

  indices: jax.Array
  alpha: jax.Array
  dual: jax.Array


def admm(
  kind: str = "ternary",
  *,
  levels: int = 3,
  rho: float = 1e-2,
  frequency: int = 10,
  view: str = "weights",
  project_from: int | None = None,
  where: select.Where = None,
) -> Compressor:
  """ADMM low-bit training: ``min f(W)`` subject to ``W = G``, ``G`` in a scaled set.

  The augmented Lagrangian's W-part ``ρ/2 ||W - G + U||²`` (``U`` the scaled dual) is
  the ``penalty`` (summed over the selected leaves; ``G`` and ``U`` are constants of the
  state), so the optimizer's steps on the loss plus penalty are the W-step. Every
  ``frequency`` steps ``update`` runs the G-step ``G = Proj(W + U)`` (:func:`project`,
  with ``α`` solved, not guessed) and the dual step ``U <- U + W - G``. ``G`` starts at
  ``Proj(W)`` and ``U`` at 0. At the end the weights are ``G``: ``pack`` stores it as a
  :class:`~jaxcompress.export.CodebookArray` (``[-α, α]`` at 1 bit, ``[-α, 0, α]`` at 2
  bits, the ``2 levels + 1`` values ``α·{0, ±1, ..., ±2^(levels-1)}`` at
  ``ceil(log2(2 levels + 1))`` bits).

  ``view='weights'`` (the paper's W-step) lets the model see ``W``; ``'projection'``
  lets it see ``G`` (for evaluating the deployed network, or for training the loss at
  ``G`` with a straight-through gradient into ``W``, a variant); only under
  ``'projection'`` does ``apply`` equal what ``pack`` stores. ``project_from=n`` keeps
  the ``'weights'`` view before step ``n`` and shows ``G`` from step ``n`` on: give it
  the run's step count to train the paper's way and evaluate the deployed ``G`` at the
  end (``apply`` then equals ``pack``).

  Args:
    kind: ``'binary'``, ``'ternary'`` or ``'power_of_two'``.
    levels: powers of two per sign for ``'power_of_two'`` (3 gives the paper's 3-bit
      ``{0, ±α, ±2α, ±4α}``), 1..16; ignored otherwise.
    rho: the penalty parameter ``ρ > 0``.
    frequency: steps between G/U updates, ``>= 1``.
    view: ``'weights'`` or ``'projection'`` (above).
    project_from: with ``view='weights'``, the step (``update`` count) from which
      ``apply`` shows ``G``, ``>= 0``; ``None``: never.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` holding :class:`ADMMLeaf`.

  Raises:
    ValueError: on an unknown ``kind`` or ``view``, ``levels`` outside 1..16,
      ``rho <= 0``, ``frequency < 1`` or ``project_from < 0``; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Leng, Dou, Li, Zhu & Jin 2018, "Extremely Low Bit Neural Network: Squeeze the Last
    Bit Out with ADMM", https://arxiv.org/abs/1707.09870.

  Example:
    >>> import jax.numpy as jnp
    >>> c = admm('ternary', view='projection')
    >>> params, state = c.init({'w': jnp.array([[1.0, -3.0], [0.5, 3.2]])})
    >>> c.apply(params, state)['w'].tolist()  # alpha = (3 + 3.2) / 2
    [[0.0, -3.0999999046325684], [0.0, 3.0999999046325684]]
  """
  kind = validate.check_choice("kind", kind, KINDS)
  view = validate.check_choice("view", view, ("weights", "projection"))
  levels = validate.check_int("levels", levels, low=1, high=16) if kind == "power_of_two" else 1
  rho = validate.check_float("rho", rho, low=0.0, low_open=True)
  frequency = validate.check_int("frequency", frequency, low=1)
  if project_from is not None:
    project_from = validate.check_int("project_from", project_from, low=0)

  def g_of(w, leaf):
    return _codebook(leaf.alpha, kind, levels, w.dtype)[leaf.indices]

  def init_leaf(path, p):
    del path
    alpha, indices = project(p, kind, levels)
    return ADMMLeaf(indices=indices, alpha=alpha, dual=jnp.zeros_like(p))

  def init(params, *, masks=None):
    del masks
    return params, leafwise.LeafwiseState.start(leafwise.init_selected(params, where, init_leaf))

  def apply(params, state):
    if view == "weights" and project_from is None:
      return params

    def one(w, leaf):
      g = _ste.straight_through(w, g_of(w, leaf))
      return g if view == "projection" else jnp.where(state.count >= project_from, g, w)

    return leafwise.map_selected(one, params, state.leaves)

  def step_leaf(w, leaf):
    alpha, indices = project(w + leaf.dual, kind, levels)
    leaf = leaf._replace(indices=indices, alpha=alpha)
    return w, leaf._replace(dual=leaf.dual + w - g_of(w, leaf))

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    state = state.advance()
    due = state.count % frequency == 0
    _, leaves = leafwise.update_selected(
      lambda w, leaf: jax.lax.cond(due, step_leaf, lambda w, leaf: (w, leaf), w, leaf), params, state.leaves
    )
    return params, state._replace(leaves=leaves)

  def penalty(params, state):
    terms: list[jax.Array] = []

    def one(w, leaf):
      terms.append(jnp.sum(jnp.square(w - jax.lax.stop_gradient(g_of(w, leaf) - leaf.dual))))
      return w

    leafwise.map_selected(one, params, state.leaves)
    return (rho / 2) * sum(terms[1:], terms[0])

  def pack_leaf(p, leaf):
    w = jnp.asarray(export.materialize(p))
    return export.from_assignments(np.asarray(_codebook(leaf.alpha, kind, levels, w.dtype)), np.asarray(leaf.indices))

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack, penalty=penalty)
