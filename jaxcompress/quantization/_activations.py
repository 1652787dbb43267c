"""Model-side compressors: techniques that act on the model's computation, not its params.

Weights live in the param tree, so weight quantizers transform params. Activations do
not, so quantizing them changes the model's function: a model-side compressor does it
through the protocol's ``rewrite`` seam, which transforms any function of the model's
params ``fn(model_params, *args)`` with :func:`jaxcompress.graph.rewrite` (the loss in
training, the model's apply in evaluation). Its ``apply`` and ``pack`` leave the params
alone, so it goes anywhere in a :func:`~jaxcompress.chain`, and one chain holds pruning,
weight quantization and activation quantization::

    c = jc.chain(
      jc.pruning.magnitude(0.9),
      jc.quantization.fake_quant(4, per_channel=True),
      jc.quantization.lsq_activations(model_apply, 8, inputs=(x_example,)),
    )
    state = jc.train.init(params, opt, c)              # one trainable tree, one optimizer
    step = jc.train.make_step(loss_fn, opt, c)         # the loss's matmuls see quantized inputs
    logits = c.rewrite(model_apply, state.params, state.cstate)(c.apply(state.params, state.cstate), x)

Learned parameters (LSQ's steps, PACT's clips) are trainable: the compressor's trainable
tree is a :class:`~jaxcompress.Joint` ``(params, extra)`` with ``extra = {site_key: node}``
(a dict of scalars such as ``{'step': s}``), trained by the same optimizer as the weights.
Sites are keyed by :attr:`jaxcompress.graph.Site.key` (the weight's path, with ``#k``
from its second use on), as calibrated ranges are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.core import select
from jaxcompress.core._base import Compressor, Joint, split
from jaxcompress.core.tree import PyTree
from jaxcompress.graph._trace import Site

QuantizeFn = Callable[[jax.Array, Any, Site], jax.Array]
"""``quantize(activation, node, site) -> fake-quantized activation`` (same shape, dtype)."""

InitNodeFn = Callable[[Site, jax.Array], Any]
"""``init_node(site, example_activation) -> node`` of learned parameters."""

RuleFn = Callable[[Any, Any], graph.Rule]
"""``rule(extra, data) -> graph.Rule``: the rewrite rule, given the learned parameters
(``None`` when there are none) and the compressor's data (calibrated ranges, ...)."""


class SiteState(NamedTuple):
  """State of a model-side compressor.

  Attributes:
    count: ``int32`` step counter.
    data: what the technique fixed at ``init`` (for example calibrated ranges
      ``{site_key: (xmin, xmax)}``), or ``None``.
  """

  count: jax.Array
  data: Any


def _is_range(value: Any) -> bool:
  return isinstance(value, (tuple, list)) and len(value) == 2


def activation_ranges(cstate: Any) -> dict[str, tuple[Any, Any]]:
  """The calibrated or observed activation ranges held anywhere in a compressor state.

  Finds every :class:`SiteState` in ``cstate`` (a chain's state nests its stages' states,
  and ``jc.train.compressor_state`` or an NNX ``Compressed.cstate`` give one) whose ``data``
  is ``{site.key: (xmin, xmax)}``, and merges them: what :func:`serving_extras` and
  :func:`serve`'s ``act_ranges`` take, without spelling out the chain's nesting
  (``cstate.stages[1].stages[1].data``).

  Args:
    cstate: a compressor state (any pytree containing ``SiteState`` nodes).

  Returns:
    ``{site.key: (xmin, xmax)}``, merged over the states found.

  Raises:
    ValueError: if no state holds ranges (dynamic ranges are computed per batch and kept
      nowhere), or if two states hold ranges for the same site.

  Example:
    >>> import jax.numpy as jnp
    >>> inner = SiteState(jnp.int32(0), {'fc1/kernel': (0.0, 2.0)})
    >>> activation_ranges({'stages': (None, {'stages': (None, inner)})})
    {'fc1/kernel': (0.0, 2.0)}
  """
  found: dict[str, tuple[Any, Any]] = {}
  nodes = jax.tree.leaves(cstate, is_leaf=lambda x: isinstance(x, SiteState))
  for node in nodes:
    if not isinstance(node, SiteState) or not isinstance(node.data, dict) or not node.data:
      continue
    if not all(_is_range(v) for v in node.data.values()):
      continue
    for key, (lo, hi) in node.data.items():
      if key in found:
        raise ValueError(f"two compressor states hold activation ranges for site {key!r}")
      found[key] = (lo, hi)
  if not found:
    raise ValueError(
      "no activation ranges in this compressor state: calibrate (apply_fn= and batches=) or use "
      "observer='moving_average'; dynamic ranges are computed per batch and stored nowhere"
    )
  return found


def site_predicate(where: select.Where) -> Callable[[str, Site], bool]:
  """``where`` over sites by their weight's path: a regex, a predicate ``(path, site)``, or ``None`` (all)."""
  return (lambda path, site: True) if where is None else select.as_predicate(where)


def site_compressor(
  rule: RuleFn,
  *,
  init: Callable[[PyTree], tuple[dict[str, Any] | None, Any]],
  update: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
  penalty: Callable[[dict[str, Any], jax.Array], Any] | None = None,
  where: select.Where = None,
) -> Compressor:
  """Builds a model-side :class:`~jaxcompress.Compressor` (see the module docstring).

  Args:
    rule: builds the :func:`jaxcompress.graph.rewrite` rule from the learned parameters
      and the data.
    init: ``init(model_params) -> (extra, data)``: the learned parameters ``{site_key:
      node}`` (or ``None``) and the fixed data kept in :class:`SiteState`.
    update: keeps the learned parameters valid after an optimizer step.
    penalty: ``penalty(extra, step)``: a loss term over the learned parameters at the
      state's step count (for scheduled coefficients).
    where: which sites, by weight path.

  Returns:
    A compressor whose ``apply``/``pack`` pass the params through, whose ``rewrite`` runs
    ``rule`` at the selected sites and whose trainable tree is :class:`~jaxcompress.Joint`
    when there are learned parameters.
  """
  site_predicate(where)  # a bad where fails here, at construction

  def init_(params, *, masks=None):
    del masks
    extra, data = init(params)
    return (params if extra is None else Joint(params, extra)), SiteState(jnp.asarray(0, jnp.int32), data)

  def apply(params, state):
    del state
    return split(params)[0]

  def update_(params, state, *, grads=None, **extra_kw):
    del grads, extra_kw
    tree, extra = split(params)
    if extra is not None and update is not None:
      extra = update(extra)
    return (tree if extra is None else Joint(tree, extra)), state._replace(count=state.count + 1)

  def pack(params, state):
    del state
    return split(params)[0]

  def penalty_(params, state):
    extra = split(params)[1]
    return None if penalty is None or extra is None else penalty(extra, state.count)

  def rewrite(fn, params, state):
    # graph.rewrite takes the user's regex or predicate as it is, and names it in its errors
    return graph.rewrite(fn, rule(split(params)[1], state.data), where=where)

  return Compressor(init_, apply, update_, pack, penalty=penalty_, rewrite=rewrite)


def features_per_example(site: Site) -> int:
  """Elements of the site's activation per example (the first axis is the batch): LSQ's
  ``N_F`` (in features for a matmul, ``H * W * C`` for an NHWC convolution)."""
  shape = site.activation_shape
  n = 1
  for d in shape[1:] if len(shape) > 1 else shape:
    n *= d
  return n


def capture_inputs(
  apply_fn: Callable[..., Any], params: PyTree, inputs: Sequence[Any], where: select.Where
) -> dict[str, tuple[Site, jax.Array]]:
  """The selected sites and the (flattened) activation feeding each on example inputs.

  Raises:
    ValueError: if ``where`` selects no site, or a selected site lies inside a
      ``scan``/``while``/``cond`` (its activations cannot be captured).
  """
  pred = site_predicate(where)
  all_sites = graph.trace(apply_fn, params, *inputs)
  sites = [s for s in all_sites if pred(s.path, s)]
  if not sites:
    raise ValueError(f"where={where!r} selects no site of this model (sites: {[s.key for s in all_sites][:20]})")
  _, captured = graph.capture(apply_fn, where=pred)(params, *inputs)
  out = {}
  for site in sites:
    if site.key not in captured:
      raise ValueError(f"site {site.key!r} lies inside {site.scopes}: its activations cannot be captured")
    out[site.key] = (site, jnp.ravel(captured[site.key]["input"]))
  return out


def site_quantizer(
  apply_fn: Callable[..., Any],
  *,
  inputs: Sequence[Any],
  init_node: InitNodeFn,
  quantize: QuantizeFn,
  update: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
  penalty: Callable[[dict[str, Any], jax.Array], Any] | None = None,
  where: select.Where = None,
) -> Compressor:
  """A model-side compressor with learned parameters at each selected site (LSQ, PACT).

  Args:
    apply_fn: ``apply_fn(params, *inputs)``; the first axis of every activation is the
      batch.
    inputs: example positional inputs of ``apply_fn``; ``init`` runs the model on them
      (with the params it is given: the view of the earlier stages of a chain) and
      builds each site's node from the activation that feeds it.
    init_node: builds a site's node from its :class:`~jaxcompress.graph.Site` and the
      example activation (flattened).
    quantize: fake-quantizes an activation with its node.
    update: keeps the nodes valid after an optimizer step.
    penalty: ``penalty(nodes, step)``: a loss term over the nodes at the step count.
    where: which sites, by weight path (regex or ``(path, site) -> bool``); ``None``
      for all.

  Returns:
    A :class:`~jaxcompress.Compressor` (see :func:`site_compressor`).

  Raises:
    ValueError: at ``init``, as :func:`capture_inputs`.
  """
  inputs = tuple(inputs)

  def init(params):
    found = capture_inputs(apply_fn, params, inputs, where)
    for key, (_, x) in found.items():
      if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"the example activation feeding site {key!r} is not finite: check `inputs`")
    return {key: init_node(site, x) for key, (site, x) in found.items()}, None

  def rule(extra, data):
    del data

    def one(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      if site.key not in extra:
        raise ValueError(f"no activation parameters for site {site.key!r} (have {sorted(extra)})")
      return site.compute(quantize(activation, extra[site.key], site), weight)

    return one

  return site_compressor(rule, init=init, update=update, penalty=penalty, where=where)
