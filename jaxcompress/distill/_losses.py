"""Distillation losses: pure functions of student and teacher outputs.

Logit losses take float arrays ``(batch, classes)`` and integer labels ``(batch,)``; feature
losses take feature arrays (``(batch, h, w, c)`` for attention transfer, any
``(batch, ..., c)`` for FitNets hints). Every loss is averaged over the batch and returns a
float scalar, so it can be the whole of a ``loss_fn`` or one term of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core import validate

_EPS = 1e-8  # Pearson's and attention maps' guard against a zero norm (DIST's official code uses 1e-8)


def _check_temperature(temperature: Any) -> float:
  return validate.check_float("temperature", temperature, low=0.0, low_open=True)


def _check_logits(student_logits: Any, teacher_logits: Any, labels: Any = None) -> tuple[jax.Array, jax.Array]:
  """Checks two logit arrays ``(batch, classes)`` of equal shape (and labels ``(batch,)``)."""
  s, t = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
  for name, x in (("student_logits", s), ("teacher_logits", t)):
    if x.ndim != 2:
      raise ValueError(f"{name} must have shape (batch, classes), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be a floating array, got dtype {x.dtype}")
  if s.shape[0] != t.shape[0]:
    raise ValueError(f"student and teacher batch sizes differ: student {s.shape[0]}, teacher {t.shape[0]}")
  if s.shape[1] != t.shape[1]:
    raise ValueError(f"student and teacher class counts differ: student {s.shape[1]}, teacher {t.shape[1]}")
  if labels is not None:
    y = jnp.asarray(labels)
    if y.shape != (s.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"labels must be integers of shape ({s.shape[0]},), got {y.dtype} of shape {y.shape}")
  return s, t


def _check_weight(name: str, value: Any) -> float:
  return validate.check_float(name, value, low=0.0)


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Per-example ``KL(softmax(t/T) ‖ softmax(s/T))``, summed over the classes.

  Args:
    student_logits: float ``(batch, classes)``.
    teacher_logits: float ``(batch, classes)``, the target distribution's logits.
    temperature: ``T > 0``, dividing both logits.

  Returns:
    Float ``(batch,)``: ``sum_c p_t (log p_t - log p_s)``, without the ``T²`` factor.

  Raises:
    ValueError: if ``temperature <= 0`` or the shapes are not two equal ``(batch, classes)``.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[1.0, 2.0, 3.0]])
    >>> kl_divergence(z, z).tolist()
    [0.0]
  """
  temperature = _check_temperature(temperature)
  s, t = _check_logits(student_logits, teacher_logits)
  log_ps = jax.nn.log_softmax(s / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(t / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def hinton_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array | None = None,
  *,
  temperature: float = 4.0,
  soft_weight: float = 0.9,
) -> jax.Array:
  """Knowledge distillation: the teacher's softened distribution plus the hard labels.

  ``soft_weight · T² · mean_batch KL(softmax(t/T) ‖ softmax(s/T)) + (1 - soft_weight) · CE(s, labels)``.
  The ``T²`` factor keeps the soft term's gradient magnitude the same at every
  temperature (its gradient in the student's logits is ``T (p_s - p_t)``, about
  ``(s - t) / classes`` at large ``T``), so changing ``T`` does not retune the weights.

  Paper: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
  https://arxiv.org/abs/1503.02531. The paper takes "a weighted average" of the two terms
  with "a considerably lower weight" on the hard one; the weights here sum to 1
  (``soft_weight`` and ``1 - soft_weight``) and the hard cross-entropy is at ``T = 1``.

  Args:
    student_logits: float ``(batch, classes)``.
    teacher_logits: float ``(batch, classes)`` (treated as a constant target: wrap it in
      ``jax.lax.stop_gradient`` if it depends on trainable params; :func:`loss` does).
    labels: int ``(batch,)`` class indices, or ``None`` for the soft term alone (then
      ``soft_weight`` still scales it).
    temperature: ``T > 0`` (Hinton et al. use 1..20; 4 is a common default).
    soft_weight: the soft term's weight in ``[0, 1]``; the hard term gets the rest.

  Returns:
    A float scalar.

  Raises:
    ValueError: if ``temperature <= 0``, ``soft_weight`` is outside ``[0, 1]``, the logits
      differ in batch size or class count, or the labels have the wrong shape.

  Example:
    >>> import jax.numpy as jnp
    >>> s = jnp.array([[2.0, 0.0, 0.0]])
    >>> float(hinton_loss(s, s, jnp.array([0]), soft_weight=1.0))  # a student equal to its teacher
    0.0
  """
  temperature = _check_temperature(temperature)
  soft_weight = validate.check_float("soft_weight", soft_weight, low=0.0, high=1.0)
  s, t = _check_logits(student_logits, teacher_logits, labels)
  soft = temperature**2 * jnp.mean(kl_divergence(s, t, temperature=temperature))
  if labels is None:
    return soft_weight * soft
  hard = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(s, jnp.asarray(labels)))
  return soft_weight * soft + (1.0 - soft_weight) * hard


def _masked_kl(log_pt: jax.Array, log_ps: jax.Array, keep: jax.Array) -> jax.Array:
  """``sum over keep of p_t (log p_t - log p_s)``; entries outside ``keep`` (possibly -inf) add 0."""
  log_pt = jnp.where(keep, log_pt, 0.0)
  log_ps = jnp.where(keep, log_ps, 0.0)
  return jnp.sum(jnp.where(keep, jnp.exp(log_pt) * (log_pt - log_ps), 0.0), axis=-1)


def dkd_terms(
  student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *, temperature: float = 4.0
) -> tuple[jax.Array, jax.Array]:
  """Decoupled KD's two parts, per example: target-class KD and non-target-class KD.

  With ``p = softmax(z/T)``, ``b = [p_target, 1 - p_target]`` and ``p̂`` the softmax of the
  non-target logits alone: ``TCKD = KL(b_t ‖ b_s)`` and ``NCKD = KL(p̂_t ‖ p̂_s)``, so that
  the classical KD divergence is ``KL = TCKD + (1 - p_target^teacher) · NCKD``
  (Zhao et al. 2022, Eq. 4).

  Paper: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation",
  https://arxiv.org/abs/2203.08679.

  Args:
    student_logits: float ``(batch, classes)``, ``classes >= 2``.
    teacher_logits: float ``(batch, classes)``.
    labels: int ``(batch,)``, the target classes.
    temperature: ``T > 0``.

  Returns:
    ``(tckd, nckd)``, each float ``(batch,)``, without the ``T²`` factor.

  Raises:
    ValueError: as :func:`dkd_loss`.

  Example:
    >>> import jax.numpy as jnp
    >>> s, t, y = jnp.array([[1.0, 0.0, -1.0]]), jnp.array([[2.0, 0.5, 0.0]]), jnp.array([0])
    >>> tckd, nckd = dkd_terms(s, t, y, temperature=1.0)
    >>> p_t = float(jnp.exp(t[0, 0]) / jnp.exp(t[0]).sum())
    >>> bool(jnp.allclose(tckd + (1 - p_t) * nckd, kl_divergence(s, t)))
    True
  """
  temperature = _check_temperature(temperature)
  s, t = _check_logits(student_logits, teacher_logits, labels)
  if s.shape[1] < 2:
    raise ValueError(f"decoupled KD needs at least 2 classes, got {s.shape[1]}")
  target = jax.nn.one_hot(jnp.asarray(labels), s.shape[1], dtype=bool)

  def binary(z):  # log [p_target, 1 - p_target], computed from the logits without cancellation
    z = z / temperature
    lse = jax.nn.logsumexp(z, axis=-1)
    log_target = jnp.sum(jnp.where(target, z, 0.0), axis=-1) - lse
    log_rest = jax.nn.logsumexp(jnp.where(target, -jnp.inf, z), axis=-1) - lse
    return jnp.stack([log_target, log_rest], axis=-1)

  ones = jnp.ones((s.shape[0], 2), bool)
  tckd = _masked_kl(binary(t), binary(s), ones)
  nontarget = ~target

  def log_nontarget(z):
    return jax.nn.log_softmax(jnp.where(target, -jnp.inf, z / temperature), axis=-1)

  nckd = _masked_kl(log_nontarget(t), log_nontarget(s), nontarget)
  return tckd, nckd


def dkd_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array,
  *,
  alpha: float = 1.0,
  beta: float = 8.0,
  temperature: float = 4.0,
  ce_weight: float = 1.0,
) -> jax.Array:
  """Decoupled knowledge distillation: ``T² · mean(α·TCKD + β·NCKD) + ce_weight · CE``.

  Classical KD couples the non-target term to the teacher's confidence
  (``KD = TCKD + (1 - p_target) NCKD``); DKD weighs the two parts independently
  (:func:`dkd_terms`). With ``α = 1`` and ``β = 1 - p_target`` per example it is KD again.

  Paper: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation",
  https://arxiv.org/abs/2203.08679 (Eq. 7). The defaults are the paper's CIFAR-100
  settings (``α = 1``, ``β = 8``, ``T = 4``, cross-entropy weight 1); the ``T²`` factor is
  the authors' code's (the paper's equations omit it). The authors' linear warm-up of the
  DKD term over the first epochs is left to the caller (scale the loss by a schedule).

  Args:
    student_logits: float ``(batch, classes)``, ``classes >= 2``.
    teacher_logits: float ``(batch, classes)``.
    labels: int ``(batch,)``, the target classes (DKD needs them to split the classes).
    alpha: TCKD's weight, ``>= 0``.
    beta: NCKD's weight, ``>= 0``.
    temperature: ``T > 0``.
    ce_weight: the hard-label cross-entropy's weight, ``>= 0``.

  Returns:
    A float scalar.

  Raises:
    ValueError: if ``temperature <= 0``, a weight is negative, the logits differ in batch
      size or class count, or the labels have the wrong shape.

  Example:
    >>> import jax.numpy as jnp
    >>> s = jnp.array([[3.0, 0.0, 0.0]])
    >>> float(dkd_loss(s, s, jnp.array([0]), ce_weight=0.0))
    0.0
  """
  alpha, beta, ce_weight = (
    _check_weight(n, v) for n, v in (("alpha", alpha), ("beta", beta), ("ce_weight", ce_weight))
  )
  tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature=temperature)
  kd = temperature**2 * jnp.mean(alpha * tckd + beta * nckd)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(student_logits), jnp.asarray(labels)))
  return kd + ce_weight * ce


def pearson_distance(u: jax.Array, v: jax.Array, *, axis: int = -1) -> jax.Array:
  """``1 - Pearson correlation`` of ``u`` and ``v`` along ``axis`` (DIST's relation ``d_p``).

  It is invariant to positive affine maps of either argument: ``d(a·u + b, v) = d(u, v)``
  for ``a > 0``. A constant vector has zero spread; a small epsilon (``1e-8``, as in the
  authors' code) keeps the result finite there.

  Paper: Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger
  Teacher", https://arxiv.org/abs/2205.10536 (Eq. 5).

  Args:
    u: a float array.
    v: a float array of ``u``'s shape.
    axis: the axis the correlation runs along.

  Returns:
    Float array of ``u``'s shape without ``axis``, in ``[0, 2]``.

  Raises:
    ValueError: if the shapes differ.

  Example:
    >>> import jax.numpy as jnp
    >>> u = jnp.array([1.0, 2.0, 4.0])
    >>> abs(float(pearson_distance(3 * u + 1, u))) < 1e-6
    True
  """
  u, v = jnp.asarray(u), jnp.asarray(v)
  if u.shape != v.shape:
    raise ValueError(f"pearson_distance needs equal shapes, got {u.shape} and {v.shape}")
  u = u - jnp.mean(u, axis=axis, keepdims=True)
  v = v - jnp.mean(v, axis=axis, keepdims=True)
  norms = jnp.maximum(jnp.linalg.norm(u, axis=axis) * jnp.linalg.norm(v, axis=axis), _EPS)
  return 1.0 - jnp.sum(u * v, axis=axis) / norms


def dist_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array | None = None,
  *,
  beta: float = 1.0,
  gamma: float = 1.0,
  temperature: float = 1.0,
  ce_weight: float = 1.0,
) -> jax.Array:
  """DIST: match the teacher's *relations* between predictions, not the predictions.

  With ``p = softmax(z/T)`` of shape ``(batch, classes)``: the inter-class relation is
  ``mean_i d_p(p_s[i, :], p_t[i, :])`` (each example's ranking of the classes) and the
  intra-class relation ``mean_j d_p(p_s[:, j], p_t[:, j])`` (each class's ranking of the
  examples), where ``d_p`` is :func:`pearson_distance`. The loss is
  ``T² (β·inter + γ·intra) + ce_weight · CE(s, labels)``.

  Paper: Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger
  Teacher", https://arxiv.org/abs/2205.10536 (Eqs. 6-8). The relations are taken on the
  softmax outputs (the paper's ``Y``); the ``T²`` factor is the authors' code's. The
  intra-class term is a statistic of the batch: under ``pmap`` each device's term sees its
  own shard, so it is not the full batch's.

  Args:
    student_logits: float ``(batch, classes)``.
    teacher_logits: float ``(batch, classes)``.
    labels: int ``(batch,)``, or ``None`` for no cross-entropy term.
    beta: the inter-class term's weight, ``>= 0``.
    gamma: the intra-class term's weight, ``>= 0``.
    temperature: ``T > 0``.
    ce_weight: the hard-label cross-entropy's weight, ``>= 0`` (ignored without labels).

  Returns:
    A float scalar.

  Raises:
    ValueError: if ``temperature <= 0``, a weight is negative, the logits differ in batch
      size or class count, or the labels have the wrong shape.

  Example:
    >>> import jax.numpy as jnp
    >>> s = jnp.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    >>> round(float(dist_loss(s, s)), 6)
    0.0
  """
  temperature = _check_temperature(temperature)
  beta, gamma, ce_weight = (
    _check_weight(n, v) for n, v in (("beta", beta), ("gamma", gamma), ("ce_weight", ce_weight))
  )
  s, t = _check_logits(student_logits, teacher_logits, labels)
  ps, pt = jax.nn.softmax(s / temperature, axis=-1), jax.nn.softmax(t / temperature, axis=-1)
  inter = jnp.mean(pearson_distance(ps, pt, axis=1))
  intra = jnp.mean(pearson_distance(ps, pt, axis=0))
  out = temperature**2 * (beta * inter + gamma * intra)
  if labels is None:
    return out
  return out + ce_weight * jnp.mean(optax.softmax_cross_entropy_with_integer_labels(s, jnp.asarray(labels)))


def _safe_norm(x: jax.Array) -> jax.Array:
  """Row-wise L2 norm whose gradient at 0 is 0, not NaN (a student equal to its teacher)."""
  sq = jnp.sum(x * x, axis=-1)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def attention_map(features: jax.Array, *, p: float = 2.0) -> jax.Array:
  """Spatial attention of a feature map: ``sum_c |A_c|^p``, flattened and L2-normalized.

  Paper: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
  https://arxiv.org/abs/1612.03928 (Eq. 2's ``Q / ‖Q‖₂``, with the paper's ``F^p_sum``).

  Args:
    features: float ``(batch, h, w, c)`` (channels last).
    p: the exponent, ``> 0`` (the paper uses 2).

  Returns:
    Float ``(batch, h·w)``, each row of unit L2 norm (zero rows stay zero).

  Raises:
    ValueError: if ``features`` is not 4-D or ``p <= 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> attention_map(jnp.ones((1, 2, 2, 3))).tolist()
    [[0.5, 0.5, 0.5, 0.5]]
  """
  p = validate.check_float("p", p, low=0.0, low_open=True)
  a = jnp.asarray(features)
  if a.ndim != 4:
    raise ValueError(f"features must have shape (batch, h, w, c), got shape {a.shape}")
  q = jnp.sum(jnp.abs(a) ** p, axis=-1).reshape(a.shape[0], -1)
  return q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), _EPS)


def attention_transfer_loss(
  student_features: jax.Array | Sequence[jax.Array],
  teacher_features: jax.Array | Sequence[jax.Array],
  *,
  beta: float = 1000.0,
  p: float = 2.0,
) -> jax.Array:
  """Attention transfer: ``β/2 · Σ_j mean_batch ‖Q_s^j/‖Q_s^j‖ - Q_t^j/‖Q_t^j‖‖₂``.

  ``Q = sum_c |A_c|^p`` is each feature map's spatial attention (:func:`attention_map`);
  the student and teacher maps of a pair must share ``h`` and ``w`` (channels may differ).

  Paper: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention",
  https://arxiv.org/abs/1612.03928 (Eq. 2 with ``p = 2``). The paper's distance is the
  L2 *norm* of the difference (not its square, which the authors' code uses), averaged
  here over the batch; ``β = 1000`` is the paper's value.

  Args:
    student_features: one float ``(batch, h, w, c_s)`` map, or a sequence of them (pairs ``j``).
    teacher_features: the teacher's maps, ``(batch, h, w, c_t)``, as many as the student's.
    beta: the weight, ``>= 0``.
    p: the attention exponent, ``> 0``.

  Returns:
    A float scalar.

  Raises:
    ValueError: if the number of maps, their batch sizes or their spatial sizes differ,
      or a map is not 4-D.

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.arange(16.0).reshape(1, 2, 2, 4)
    >>> float(attention_transfer_loss(a, jnp.concatenate([a, 3 * a], axis=-1))) < 1e-4  # same map, 8 channels
    True
  """
  beta = _check_weight("beta", beta)
  pairs_s = [student_features] if not isinstance(student_features, (list, tuple)) else list(student_features)
  pairs_t = [teacher_features] if not isinstance(teacher_features, (list, tuple)) else list(teacher_features)
  if len(pairs_s) != len(pairs_t):
    raise ValueError(f"student has {len(pairs_s)} feature maps, teacher {len(pairs_t)}")
  total = jnp.asarray(0.0)
  for j, (fs, ft) in enumerate(zip(pairs_s, pairs_t)):
    fs, ft = jnp.asarray(fs), jnp.asarray(ft)
    if fs.ndim == 4 and ft.ndim == 4 and fs.shape[:3] != ft.shape[:3]:
      raise ValueError(
        f"feature map {j}: student (batch, h, w) {fs.shape[:3]} differs from the teacher's {ft.shape[:3]}"
      )
    diff = attention_map(fs, p=p) - attention_map(ft, p=p)
    total = total + jnp.mean(_safe_norm(diff))
  return beta / 2 * total


def fitnets_loss(
  student_features: jax.Array,
  teacher_features: jax.Array,
  regressor: jax.Array | Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """FitNets hint loss: ``mean_batch ½ ‖teacher_features - r(student_features)‖²``.

  The regressor ``r`` maps the student's (guided) layer to the teacher's (hint) layer's
  width and is trained with the student: keep its kernel in the student's params so the
  optimizer (and any compressor's ``where=``) sees it.

  Paper: Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin
  Deep Nets", https://arxiv.org/abs/1412.6550 (Eq. 3). The paper's regressor is a
  convolution followed by the teacher's nonlinearity; an array regressor here is a linear
  map of the channel axis (a 1×1 convolution for feature maps, with no nonlinearity); pass
  a callable for anything else.

  Args:
    student_features: float ``(batch, ..., c_s)``.
    teacher_features: float ``(batch, ..., c_t)``.
    regressor: ``None`` (identity: the shapes must match), a float ``(c_s, c_t)`` kernel
      applied to the last axis, or a callable ``r(student_features) -> teacher-shaped``.

  Returns:
    A float scalar.

  Raises:
    ValueError: if the regressed student features and the teacher's differ in shape.

  Example:
    >>> import jax.numpy as jnp
    >>> s, w = jnp.ones((2, 3)), jnp.full((3, 4), 0.5)
    >>> float(fitnets_loss(s, jnp.full((2, 4), 1.5), w))
    0.0
  """
  s, t = jnp.asarray(student_features), jnp.asarray(teacher_features)
  if regressor is None:
    r = s
  elif callable(regressor):
    r = jnp.asarray(regressor(s))
  else:
    kernel = jnp.asarray(regressor)
    if kernel.ndim != 2 or kernel.shape[0] != s.shape[-1]:
      raise ValueError(f"regressor kernel must have shape ({s.shape[-1]}, c_teacher), got shape {kernel.shape}")
    r = s @ kernel
  if r.shape != t.shape:
    raise ValueError(f"regressed student features have shape {r.shape}, the teacher's {t.shape}")
  return jnp.mean(0.5 * jnp.sum((t - r).reshape(t.shape[0], -1) ** 2, axis=-1))
