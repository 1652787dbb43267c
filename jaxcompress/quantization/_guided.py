"""Guided training (Zhuang et al. 2018, §3.3): a full-precision guide network trained
jointly with the low-bit network, each with its task loss plus a mutual loss.

Design. The guide is *trained*, unlike a distillation teacher, so its params belong in
the trainable tree: :func:`guided` wraps the low-bit network's compressor and its
trainable tree is ``Joint(inner_tree, {'guide': guide_params})``, updated by the same
optimizer in the same step. The mutual term needs the batch, so it comes in through the
loss: :func:`guided_loss` builds a :class:`GuidedLoss`, and ``guided``'s ``rewrite``
seam, given that loss, returns the joint objective

``L = task(z_low, y) + task(z_guide, y) + (beta / 2) * D(z_low, z_guide)``,

whose gradient with respect to the low-bit params is that of the paper's ``L_theta =
task(z_low) + (beta/2) D`` and with respect to the guide's that of ``L_W = task(z_guide)
+ (beta/2) D`` (each network's task loss does not depend on the other's params): one
gradient step of the sum is a simultaneous step of both losses, where the paper
alternates them. Given any other function (the model's apply at evaluation, a plain
loss) ``rewrite`` is the inner compressor's, so the deployed network is the low-bit one
and the guide never reaches ``pack``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core import validate
from jaxcompress.core._base import Compressor, Joint, split


def mutual_distance(z_low: jax.Array, z_guide: jax.Array) -> jax.Array:
  """``D``: the squared Euclidean distance between the two networks' outputs, summed over
  the features and averaged over the batch (first axis)."""
  d = (z_low - z_guide).astype(jnp.float32)
  return jnp.mean(jnp.sum(jnp.reshape(d * d, (d.shape[0], -1)), axis=-1))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass(frozen=True)
class GuidedLoss:
  """The loss of guided training (build it with :func:`guided_loss`).

  Called as ``loss(model_params, x, labels)`` it is the low-bit network's task loss
  alone; under :func:`guided`'s ``rewrite`` it becomes the joint objective.

  Attributes:
    apply_fn: ``apply_fn(params, x) -> outputs`` (logits), shared by both networks.
    task: ``task(outputs, labels) -> scalar``.
    beta: the mutual loss's weight, >= 0.
  """

  apply_fn: Callable[..., Any]
  task: Callable[[Any, Any], jax.Array]
  beta: float

  def __call__(self, params: Any, x: Any, labels: Any) -> jax.Array:
    return self.task(self.apply_fn(params, x), labels)

  def low_bit_terms(self, params: Any, x: Any, labels: Any, z_guide: jax.Array) -> jax.Array:
    """``task(z_low) + (beta / 2) D(z_low, z_guide)`` (the guide's outputs as an input)."""
    z = self.apply_fn(params, x)
    return self.task(z, labels) + 0.5 * self.beta * mutual_distance(z, z_guide)


def guided_loss(
  apply_fn: Callable[..., Any], *, beta: float = 1.0, task: Callable[[Any, Any], jax.Array] | None = None
) -> GuidedLoss:
  """The loss for :func:`guided` training: task losses of both networks plus the mutual loss.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``; both networks share it.
    beta: the weight of the mutual loss ``(beta / 2) * D``, >= 0 (``D``:
      :func:`mutual_distance` of the outputs).
    task: ``task(logits, labels) -> scalar``; default softmax cross-entropy with integer
      labels, batch-averaged.

  Returns:
    A :class:`GuidedLoss` (``loss(model_params, x, labels)``).

  Raises:
    ValueError: if ``beta`` is negative or not finite.

  References:
    Zhuang, Shen, Tan, Liu & Reid 2018, "Towards Effective Low-bitwidth Convolutional
    Neural Networks", §3.3, https://arxiv.org/abs/1711.00205.
  """
  beta = validate.check_float("beta", beta, low=0.0)
  return GuidedLoss(apply_fn, task or _cross_entropy, beta)


def guided(compressor: Compressor) -> Compressor:
  """Guided training of the low-bit network ``compressor`` makes, with a trained
  full-precision guide (see the module docstring for the design).

  ``init(params)`` starts the guide at ``params`` (the pre-trained float network, as the
  paper) and the low-bit network at ``compressor.init(params)``; the trainable tree is
  ``Joint(inner_tree, {'guide': params})``. ``apply``, ``update``, ``pack``, ``masks``,
  ``penalty``, ``restart`` and ``pull_masks`` are the inner compressor's on the inner tree (the guide is
  left to the optimizer). ``rewrite(fn, ...)`` of a :class:`GuidedLoss` is the joint
  objective: the guide runs its own forward on the closed-over (trained) guide params, in
  float, and the low-bit terms are the inner compressor's rewrite of
  :meth:`GuidedLoss.low_bit_terms`, the guide's outputs passed in as an input so the
  mutual loss's gradient reaches both networks. Any other ``fn`` gets the inner rewrite.

  Args:
    compressor: the low-bit network's compressor (for example
      ``chain(dorefa(stages), dorefa_activations(stages, where=...))``).

  Returns:
    A :class:`~jaxcompress.Compressor`; train it with a :func:`guided_loss`.

  References:
    Zhuang, Shen, Tan, Liu & Reid 2018, "Towards Effective Low-bitwidth Convolutional
    Neural Networks", §3.3, https://arxiv.org/abs/1711.00205.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcompress.quantization import dorefa
    >>> model = lambda p, x: x @ p['w']
    >>> c = guided(dorefa(2))
    >>> tree, state = c.init({'w': jnp.array([[0.5, -0.3], [0.2, 0.8]])})
    >>> loss = guided_loss(model, beta=0.0)
    >>> x, y = jnp.ones((1, 2)), jnp.array([0])
    >>> joint = c.rewrite(loss, tree, state)(c.apply(tree, state), x, y)
    >>> bool(jnp.isclose(joint, loss(c.apply(tree, state), x, y) + loss(tree.extra['guide'], x, y)))
    True
  """

  def init(params, *, masks=None):
    inner, state = compressor.init(params, masks=masks)
    return Joint(inner, {"guide": params}), state

  def inner_of(params):
    inner, extra = split(params)
    if extra is None or "guide" not in extra:
      raise ValueError("guided: pass the trainable tree that init returned (a Joint holding the guide)")
    return inner, extra["guide"]

  def apply(params, state):
    return compressor.apply(inner_of(params)[0], state)

  def update(params, state, *, grads=None, **extra):
    inner, guide = inner_of(params)
    inner_grads = None if grads is None else inner_of(grads)[0]
    inner, state = compressor.update(inner, state, grads=inner_grads, **extra)
    return Joint(inner, {"guide": guide}), state

  def pack(params, state):
    return compressor.pack(inner_of(params)[0], state)

  def penalty(params, state):
    return compressor.penalty(inner_of(params)[0], state)

  def rewrite(fn, params, state):
    inner, guide = inner_of(params)
    if not isinstance(fn, GuidedLoss):
      return compressor.rewrite(fn, inner, state)
    low = compressor.rewrite(fn.low_bit_terms, inner, state)

    def joint(model_params, x, labels):
      z_guide = fn.apply_fn(guide, x)
      return low(model_params, x, labels, z_guide) + fn.task(z_guide, labels)

    return joint

  def pull_masks(params, state, masks):
    inner, guide = inner_of(params)
    return Joint(compressor.pull_masks(inner, state, masks), {"guide": jax.tree.map(lambda _: None, guide)})

  return Compressor(
    init, apply, update, pack, compressor.masks, penalty, rewrite, compressor.restart, pull_masks=pull_masks
  )
