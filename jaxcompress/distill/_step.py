"""Teacher-student training through ``jaxcompress.train.make_step``: a loss, not a second step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxcompress.core.tree import PyTree
from jaxcompress.distill._losses import hinton_loss


def loss(
  student_apply: Callable[..., Any],
  *,
  teacher_apply: Callable[..., Any] | None = None,
  teacher_params: PyTree | None = None,
  criterion: Callable[[Any, Any, Any], jax.Array] = hinton_loss,
) -> Callable[..., jax.Array]:
  """A distillation ``loss_fn(model_params, x, labels)`` for :func:`jaxcompress.train.make_step`.

  The teacher is closed over and evaluated under ``jax.lax.stop_gradient``: its params are
  not an argument of the loss, so they are not in the trainable tree, get no gradient and
  no optimizer state, and no compressor sees them (``rewrite`` transforms only the
  computation of the model's params: a quantized student's teacher stays float). Because
  it is an ordinary loss, every compressor, ``chain``, ``jit``, ``pmap`` with
  ``axis_name`` and sharded ``jit`` work as they do for any loss:
  ``train.make_step(distill.loss(apply, teacher_apply=..., teacher_params=...), opt,
  chain(pruning.magnitude(0.9), quantization.fake_quant(4)))`` is distillation, pruning
  and quantization-aware training in one step.

  The teacher must run in inference mode: pass the *eval-mode* apply (Linen
  ``model.apply(variables, x, train=False)`` with ``BatchNorm(use_running_average=True)``
  and ``Dropout(deterministic=True)`` and no ``mutable=``; for NNX, a module put in
  ``.eval()`` before ``nnx.split``). A train-mode teacher would draw dropout noise and
  use (or try to update) batch statistics inside the student's step. Closed-over teacher
  params are constants of the compiled step; for a teacher too large to embed, or to
  reuse one teacher pass over many epochs, precompute its outputs and use the second form.

  Args:
    student_apply: ``student_apply(model_params, x) -> out``: logits ``(batch, classes)``
      for the logit criteria, or whatever ``criterion`` reads (features, a tuple).
    teacher_apply: ``teacher_apply(teacher_params, x) -> out`` in inference mode, or ``None``
      for precomputed teacher outputs passed as a batch input.
    teacher_params: the teacher's params or variables (Linen ``{'params', 'batch_stats'}``);
      required with ``teacher_apply``, forbidden without it.
    criterion: ``criterion(student_out, teacher_out, labels) -> scalar``, averaged over the
      batch; :func:`hinton_loss` by default. Bind hyperparameters with
      ``functools.partial(dkd_loss, beta=8.0)``.

  Returns:
    With a teacher: ``loss_fn(model_params, x, labels)``. Without: ``loss_fn(model_params, x,
    labels, teacher_out)``, with ``teacher_out`` a batch input sharded like ``x``.

  Raises:
    ValueError: if exactly one of ``teacher_apply`` and ``teacher_params`` is given, or an
      argument that must be callable is not.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import jaxcompress as jc
    >>> teacher = {'w': jnp.array([[2.0, -2.0], [-2.0, 2.0]])}
    >>> apply = lambda p, x: x @ p['w']
    >>> kd = loss(apply, teacher_apply=apply, teacher_params=teacher)
    >>> opt, c = optax.sgd(0.1), jc.identity()  # any compressor or chain
    >>> state = jc.train.init({'w': jnp.array([[1.0, 0.1], [0.2, 1.0]])}, opt, c)
    >>> step = jax.jit(jc.train.make_step(kd, opt, c))
    >>> state, value = step(state, jnp.eye(2), jnp.array([0, 1]))
    >>> sorted(state.params)  # the student's params only: the teacher is not trained
    ['w']
    >>> precomputed = loss(apply)  # or: teacher logits as the fourth batch input
    >>> step = jax.jit(jc.train.make_step(precomputed, opt, c))
  """
  if not callable(student_apply):
    raise ValueError(f"student_apply must be callable, got {student_apply!r}")
  if not callable(criterion):
    raise ValueError(f"criterion must be callable, got {criterion!r}")
  if (teacher_apply is None) != (teacher_params is None):
    given = "teacher_apply" if teacher_apply is not None else "teacher_params"
    raise ValueError(
      f"pass teacher_apply and teacher_params together (got only {given}), or neither for precomputed teacher outputs"
    )
  if teacher_apply is not None and not callable(teacher_apply):
    raise ValueError(f"teacher_apply must be callable, got {teacher_apply!r}")

  if teacher_apply is None:

    def precomputed_loss(model_params: PyTree, x: Any, labels: Any, teacher_out: Any) -> jax.Array:
      return criterion(student_apply(model_params, x), jax.lax.stop_gradient(teacher_out), labels)

    return precomputed_loss

  frozen = teacher_params

  def distill_loss(model_params: PyTree, x: Any, labels: Any) -> jax.Array:
    teacher_out = jax.lax.stop_gradient(teacher_apply(jax.lax.stop_gradient(frozen), x))
    return criterion(student_apply(model_params, x), teacher_out, labels)

  return distill_loss
