"""Activation quantization through :mod:`jaxcompress.graph`: learned parameters per site.

Weights live in the param tree, so weight quantizers are compressors; activations do
not, so quantizing them changes the model's function. An :class:`ActivationQuantizer`
does it for any ``apply_fn(params, *inputs)`` without special layers:

- ``init(params, *inputs)`` traces the model (:func:`jaxcompress.graph.trace`), runs it
  once on example ``inputs`` (:func:`jaxcompress.graph.capture`) and returns the
  *activation tree* ``{site_key: node}``: one node of learned parameters (a dict of
  scalars such as ``{'step': s}`` for LSQ or ``{'alpha': a}`` for PACT; plain dicts, so
  the tree saves with :func:`jaxcompress.export.save`) for each selected site,
  initialized from the activation that feeds it;
- ``apply(params, act_params, *inputs)`` is ``apply_fn`` with the activation operand of
  every selected matmul/convolution fake-quantized with its node
  (:func:`jaxcompress.graph.rewrite`). It is differentiable in both trees.

- ``update(act_params) -> act_params`` keeps the parameters valid after an optimizer
  step (LSQ's step and PACT's clip stay positive).

Train the weights and the activation tree together, with one optimizer, as the joint
tree ``{'params': params, 'activations': act_params}`` (:func:`joint`): the model is
:func:`joint_apply`, and :func:`with_activations` lifts a weight compressor to the
joint tree (it compresses ``'params'`` and runs the quantizer's ``update`` on
``'activations'``); given the initial activation tree, its ``init`` also accepts the
model's params and builds the joint tree itself::

    aq = lsq_activations(model_apply, bits=4, where='(fc2|fc3)/kernel')
    c = with_activations(lsq(4), aq, aq.init(params, x_example))
    loss = lambda t, x, y: ce(joint_apply(aq)(t, x), y)
    state = jc.train.init(params, opt, c)       # trainable: {'params', 'activations'}
    step = jc.train.make_step(loss, opt, c)

Nodes are keyed by :attr:`jaxcompress.graph.Site.key` (the weight's path, with ``#k``
from its second use on), as calibrated ranges are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core import select
from jaxcompress.core.base import Compressor
from jaxcompress.core.tree import PyTree
from jaxcompress.graph.trace import Site

QuantizeFn = Callable[[jax.Array, Any, Site], jax.Array]
"""``quantize(activation, node, site) -> fake-quantized activation`` (same shape, dtype)."""

InitNodeFn = Callable[[Site, jax.Array], Any]
"""``init_node(site, example_activation) -> node`` of learned parameters."""


class ActivationQuantizer(NamedTuple):
  """A model transformation that fake-quantizes activations with learned parameters.

  Attributes:
    init: ``(params, *inputs) -> act_params``, ``{site_key: node}``.
    apply: ``(params, act_params, *inputs) -> outputs`` of the quantized model.
    update: ``(act_params) -> act_params``, run after each optimizer step.
  """

  init: Callable[..., PyTree]
  apply: Callable[..., Any]
  update: Callable[[PyTree], PyTree]


def joint(params: PyTree, act_params: PyTree) -> dict[str, PyTree]:
  """The trainable tree ``{'params': params, 'activations': act_params}``."""
  return {"params": params, "activations": act_params}


def joint_apply(quantizer: ActivationQuantizer) -> Callable[..., Any]:
  """The quantized model as a function of the joint tree: ``fn(tree, *inputs)``."""
  return lambda tree, *inputs: quantizer.apply(tree["params"], tree["activations"], *inputs)


class JointState(NamedTuple):
  """State of :func:`with_activations`.

  Attributes:
    params: the weight compressor's state.
  """

  params: Any


def with_activations(
  compressor: Compressor, quantizer: ActivationQuantizer, act_params: PyTree | None = None
) -> Compressor:
  """Lifts a weight compressor to the joint tree ``{'params', 'activations'}``.

  ``init``, ``apply`` and ``pack`` run ``compressor`` on ``tree['params']`` and pass
  ``tree['activations']`` through (the steps or clips are plain arrays, which
  inference needs, so they are packed as they are); ``update`` runs
  ``compressor.update`` on ``'params'`` (with the ``'params'`` part of ``grads``) and
  ``quantizer.update`` on ``'activations'``. ``apply`` returns the joint tree, the
  input of :func:`joint_apply`.

  Args:
    compressor: the weight compressor (``jaxcompress.identity()`` for activations only).
    quantizer: the activation quantizer.
    act_params: the initial activation tree (``quantizer.init(params, *inputs)``); with
      it, ``init`` accepts the model's params and returns the joint tree.

  Returns:
    A :class:`~jaxcompress.Compressor` over the joint tree, with :class:`JointState`.

  Raises:
    ValueError: at ``init``, if the tree is not ``{'params': ..., 'activations': ...}``
      and no ``act_params`` were given.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress.core.base import identity
    >>> from jaxcompress.quantization.lsq import lsq_activations
    >>> aq = lsq_activations(lambda p, x: x @ p["w"], 2, init_step=0.5)
    >>> params, x = {'w': jnp.ones((2, 1))}, jnp.array([[0.5, 1.5]])
    >>> c = with_activations(identity(), aq)
    >>> tree, state = c.init(joint(params, aq.init(params, x)))
    >>> joint_apply(aq)(c.apply(tree, state), x).tolist()
    [[2.0]]
  """

  def split(tree):
    if not isinstance(tree, dict) or set(tree) != {"params", "activations"}:
      keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
      raise ValueError(f"with_activations expects the tree {{'params': ..., 'activations': ...}}, got {keys}")
    return tree["params"], tree["activations"]

  def init(params):
    is_joint = isinstance(params, dict) and set(params) == {"params", "activations"}
    tree = params if is_joint or act_params is None else joint(params, act_params)
    params, acts = split(tree)
    params, state = compressor.init(params)
    return joint(params, acts), JointState(state)

  def apply(params, state):
    params, acts = split(params)
    return joint(compressor.apply(params, state.params), acts)

  def update(params, state, *, grads=None, **extra):
    params, acts = split(params)
    params, inner = compressor.update(params, state.params, grads=None if grads is None else grads["params"], **extra)
    return joint(params, quantizer.update(acts)), JointState(inner)

  def pack(params, state):
    params, acts = split(params)
    return joint(compressor.pack(params, state.params), acts)

  return Compressor(init, apply, update, pack)


def features_per_example(site: Site) -> int:
  """Elements of the site's activation per example (the first axis is the batch): LSQ's
  ``N_F`` (in features for a matmul, ``H * W * C`` for an NHWC convolution)."""
  shape = site.activation_shape
  n = 1
  for d in shape[1:] if len(shape) > 1 else shape:
    n *= d
  return n


def site_quantizer(
  apply_fn: Callable[..., Any],
  *,
  init_node: InitNodeFn,
  quantize: QuantizeFn,
  update: Callable[[PyTree], PyTree] = lambda act_params: act_params,
  where: select.Where = None,
) -> ActivationQuantizer:
  """Builds an :class:`ActivationQuantizer` from a per-site quantizer.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``; the first axis of every activation is the
      batch.
    init_node: builds a site's node from its :class:`~jaxcompress.graph.Site` and the
      activation that fed it on the example inputs (flattened).
    quantize: fake-quantizes an activation with its node.
    update: keeps the activation tree valid after an optimizer step.
    where: which sites, by weight path (regex or ``(path, site) -> bool``); ``None``
      for all.

  Returns:
    An :class:`ActivationQuantizer`.

  Raises:
    ValueError: at ``init``, if ``where`` selects no site, or a selected site lies
      inside a ``scan``/``while``/``cond`` (its activations cannot be captured).
  """

  def init(params: PyTree, *inputs: Any) -> dict[str, Any]:
    pred = (lambda path, site: True) if where is None else select.as_predicate(where)
    sites = [s for s in graph.trace(apply_fn, params, *inputs) if pred(s.path, s)]
    if not sites:
      raise ValueError(f"where={where!r} selects no site of this model")
    _, captured = graph.capture(apply_fn, where=where)(params, *inputs)
    nodes = {}
    for site in sites:
      if site.key not in captured:
        raise ValueError(f"site {site.key!r} lies inside {site.scopes}: its activations cannot be captured")
      nodes[site.key] = init_node(site, jnp.ravel(captured[site.key]["input"]))
    return nodes

  def apply(params: PyTree, act_params: dict[str, Any], *inputs: Any) -> Any:
    def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      if site.key not in act_params:
        raise ValueError(f"no activation parameters for site {site.key!r} (have {sorted(act_params)})")
      return site.compute(quantize(activation, act_params[site.key], site), weight)

    return graph.rewrite(apply_fn, rule, where=where)(params, *inputs)

  return ActivationQuantizer(init, apply, update)
