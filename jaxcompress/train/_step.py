"""Training integration: a loss over the trainable tree and a jit/pmap/sharding-safe step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import PyTree
from jaxcompress.train._masks import hold_masks, mask_tree, reset_pruned


def _all_finite(tree: PyTree) -> jax.Array:
  """Whether every floating leaf of ``tree`` is finite (a ``bool`` scalar)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.asarray(True)


def _reads(fn: Callable[[Any], Any], tree: PyTree) -> bool:
  """Whether ``fn(tree)`` reads ``tree`` at all (any of its leaves feeds an operation of
  ``fn``'s jaxpr or its output), decided at trace time."""
  jaxpr = jax.make_jaxpr(fn)(tree).jaxpr
  used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
  return any(id(v) in used for v in jaxpr.invars)


class TrainState(NamedTuple):
  """What a compressed training step threads from one step to the next.

  Attributes:
    params: the trainable tree (``Compressor.init``'s first output).
    opt_state: the optax optimizer's state.
    cstate: the compressor's state.
  """

  params: PyTree
  opt_state: optax.OptState
  cstate: Any


def wrap_loss(loss_fn: Callable[..., Any], compressor: Compressor, *, has_aux: bool = False) -> Callable[..., Any]:
  """Turns a loss over the model's params into a loss over the trainable tree.

  The compressor enters through its three seams: ``apply`` gives the model's params,
  ``rewrite`` transforms the loss's computation (quantized activations, integer matmuls),
  and ``penalty`` adds its loss term (network slimming's L1, PACT's L2 on its clip).

  Args:
    loss_fn: ``loss_fn(model_params, *args, **kwargs) -> loss`` (or ``(loss, aux)``).
    compressor: the compressor.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)`` (the penalty is added to ``loss``).

  Returns:
    ``loss(params, cstate, *args, **kwargs) = rewrite(loss_fn)(apply(params, cstate), *args,
    **kwargs) + penalty(params, cstate)``, differentiable in ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcompress import quantization
    >>> c = quantization.fake_quant(2)  # levels -4, 0, 4 for these weights
    >>> params, cstate = c.init({'w': jnp.array([[1.0, -3.0], [0.5, 4.0]])})
    >>> loss = wrap_loss(lambda p: p['w'].sum(), c)
    >>> float(loss(params, cstate))  # the model sees [[0, -4], [0, 4]]
    0.0
    >>> jax.grad(loss)(params, cstate)['w'].tolist()  # straight through the rounding
    [[1.0, 1.0], [1.0, 1.0]]
  """

  def loss(params, cstate, *args, **kwargs):
    out = compressor.rewrite(loss_fn, params, cstate)(compressor.apply(params, cstate), *args, **kwargs)
    term = compressor.penalty(params, cstate)
    if term is None:
      return out
    return (out[0] + term, out[1]) if has_aux else out + term

  return loss


def init(params: PyTree, optimizer: optax.GradientTransformation, compressor: Compressor) -> TrainState:
  """Initializes the compressor, then the optimizer on the trainable tree.

  Weakly typed leaves (``jnp.full(n, 0.1)`` is one) are made strongly typed first:
  the optimizer returns strong types, and a step whose input types change between the
  first and second call compiles twice.

  Args:
    params: the model's params.
    optimizer: an optax transformation.
    compressor: the compressor.

  Returns:
    A :class:`TrainState`.

  Raises:
    Whatever ``compressor.init`` raises for a bad selection or bad leaves.
  """
  params = jax.tree.map(lambda x: jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x, params)
  params, cstate = compressor.init(params)
  return TrainState(params=params, opt_state=optimizer.init(params), cstate=cstate)


def make_step(
  loss_fn: Callable[..., Any],
  optimizer: optax.GradientTransformation,
  compressor: Compressor,
  *,
  axis_name: str | None = None,
  reduce_gradients: bool = True,
  has_aux: bool = False,
) -> Callable[..., tuple[TrainState, Any]]:
  """Builds one training step: grad through ``apply``, the optimizer, then ``update``.

  The loss is :func:`wrap_loss`'s (``apply``, ``rewrite`` and ``penalty``). When the
  compressor prunes (``compressor.masks(cstate)`` is not ``None``), the optimizer moments
  of pruned coordinates are zeroed before each optimizer update (so a weight pruned at
  one step loses its history at the next, and a regrown weight starts from zero moments;
  :func:`~jaxcompress.train._masks.reset_pruned` maps the optimizer state to the params
  exactly), and the gradients and updates there are zeroed: no weight is moved or revived
  by momentum or weight decay. ``update`` still receives the unmasked gradients (RigL
  regrows by them). Without masks it is the plain step. Where ``compressor.restart(cstate)``
  is True after an ``update`` (a lottery ticket's rewind), the optimizer state is
  replaced by ``optimizer.init(params)``: moments and step count start afresh.
  Coordinates in ``compressor.frozen(cstate)`` get the same treatment from the optimizer
  as pruned ones (zeroed gradients, updates and moments) but keep their values.

  The step is a pure function ``step(state, *batch) -> (state, loss)`` (or
  ``(state, (loss, aux))`` with ``has_aux``); jitting is the caller's choice. It works
  under ``jax.jit``, under ``jax.pmap`` with ``axis_name`` (gradients and loss are
  averaged over that axis before the optimizer), and under ``jit`` with a
  ``NamedSharding`` mesh (shard the batch; XLA inserts the reductions).

  Every replica's compressor sees the same gradients: with ``reduce_gradients=False``
  the optimizer reduces its own copy (a compressed all-reduce) and a compressor whose
  ``update`` reads the gradients gets their ``pmean`` (one uncompressed all-reduce), so
  RigL, movement and saliency masks never differ between replicas. For such a compressor
  a step whose gradients are not all finite leaves its params and state as they were
  (``update`` is skipped; pair it with ``optax.apply_if_finite`` to skip the optimizer's
  part too). Whether ``update`` reads the gradients is decided from its jaxpr when the
  step is traced; one that does not (magnitude pruning, weight quantizers) runs as usual,
  since its state cannot take NaN from them, and pays for neither the check nor the
  all-reduce.

  Args:
    loss_fn: ``loss_fn(model_params, *batch) -> scalar loss`` (``(loss, aux)`` with
      ``has_aux``), averaged over the batch.
    optimizer: an optax transformation.
    compressor: the compressor; its ``update`` runs after each optimizer step with
      ``grads=`` the (averaged) gradients and ``batch=`` the step's ``batch`` tuple (a QAT
      range observer runs the model on it; other compressors ignore it).
    axis_name: the ``pmap`` axis to average the gradients and the loss over (``aux`` is
      left per device), or ``None``.
    reduce_gradients: average the gradients over ``axis_name`` (``pmean``). Set it to
      False when the optimizer does the reduction itself, for example a compressed
      all-reduce from :mod:`jaxcompress.quantization.gradient_compression`.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    The step function.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxcompress import pruning
    >>> c = pruning.magnitude(0.5)
    >>> opt = optax.sgd(0.1)
    >>> state = init({'w': jnp.array([[1.0, 2.0], [3.0, 4.0]])}, opt, c)
    >>> step = jax.jit(make_step(lambda p, x: (x @ p['w']).sum(), opt, c))
    >>> state, loss = step(state, jnp.ones((1, 2)))
    >>> state.params['w'].tolist()
    [[0.0, 0.0], [2.9000000953674316, 3.9000000953674316]]
  """
  grad_fn = jax.value_and_grad(wrap_loss(loss_fn, compressor, has_aux=has_aux), has_aux=has_aux)

  def step(state: TrainState, *batch: Any) -> tuple[TrainState, Any]:
    out, grads = grad_fn(state.params, state.cstate, *batch)
    if axis_name is not None:
      if reduce_gradients:
        grads = jax.lax.pmean(grads, axis_name)
      # the loss is averaged; aux (predictions, counts) is each device's own
      out = (jax.lax.pmean(out[0], axis_name), out[1]) if has_aux else jax.lax.pmean(out, axis_name)
    # frozen coordinates (INQ's quantized portion) are kept off the optimizer like pruned ones
    model_masks = hold_masks(compressor.masks(state.cstate), compressor.frozen(state.cstate))
    opt_state = state.opt_state
    masks = None if model_masks is None else compressor.pull_masks(state.params, state.cstate, model_masks)
    if masks is not None:
      # Zero the moments of pruned coordinates before the optimizer reads them (this fuses
      # into its update): a newly pruned weight drops its history, and a regrown one
      # starts from zeros. Gradients and updates there are zeroed too.
      opt_state = reset_pruned(optimizer, opt_state, masks)
      grads_in = mask_tree(grads, masks)
    else:
      grads_in = grads
    updates, opt_state = optimizer.update(grads_in, opt_state, state.params)
    if masks is not None:
      updates = mask_tree(updates, masks)
    params = optax.apply_updates(state.params, updates)
    sync = axis_name is not None and not reduce_gradients

    def update(p, s, g):
      if sync:
        # The optimizer reduced its own (compressed) copy; the compressor must see the same
        # gradients on every replica, or masks drift apart.
        g = jax.lax.pmean(g, axis_name)
      return compressor.update(p, s, grads=g, batch=batch)

    if not _reads(lambda g: update(params, state.cstate, g), grads):
      params, cstate = compressor.update(params, state.cstate, grads=grads, batch=batch)  # nothing to guard or sync
    else:
      # A step with non-finite gradients (skipped by optax.apply_if_finite) must not reach
      # the compressor's state either: scores and masks computed from NaN are lost for good.
      finite = _all_finite(grads)
      if sync:  # every replica takes the same branch
        finite = jax.lax.pmin(finite.astype(jnp.int32), axis_name).astype(bool)
      params, cstate = jax.lax.cond(finite, update, lambda p, s, g: (p, s), params, state.cstate, grads)
    restart = compressor.restart(cstate)
    if restart is not None:  # e.g. a lottery ticket rewound: retrain it with a fresh optimizer
      fresh = optimizer.init(params)
      opt_state = jax.tree.map(lambda f, o: jnp.where(restart, f, o), fresh, opt_state)
    return TrainState(params, opt_state, cstate), out

  return step
