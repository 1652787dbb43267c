"""Structured channel pruning that physically shrinks the network.

The channels to remove together come from :func:`jaxcompress.graph.dependency_groups`:
a conv's output channel, its bias, the next BatchNorm's entries and the next layer's
input channel form one group; a residual addition merges the groups of both branches; a
concatenation shifts the next layer's inputs by an offset; a depthwise conv passes
channels through; a flatten into a Dense maps each channel to its block of inputs.

Each prunable group keeps its most important channels (at least one). The result is
recorded per leaf as one boolean vector per axis (``kept``), from which

- :func:`channel_prune`'s compressor trains the *smaller* tree (its ``init``
  restructures the trainable tree; ``apply`` re-expands with zeros so the original
  model definition still runs; ``pack`` stores the smaller dense arrays as
  :class:`~jaxcompress.export.SlicedArray`);
- :func:`shrink` slices any tree that mirrors the params (for example an optax state);
- :func:`narrow_nnx` returns a Flax NNX module with the smaller Variables and feature
  counts, so the deployed network really is narrower and faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import export
from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import PyTree, is_packed_leaf, leaves_with_paths, map_with_path
from jaxcompress.graph._deps import Group, dependency_groups
from jaxcompress.pruning import _criteria as criteria
from jaxcompress.pruning import _masking as masking

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


class ChannelState(NamedTuple):
  """State of :func:`channel_prune`.

  Attributes:
    count: ``int32`` step counter.
    kept: per leaf of the original tree, ``None`` if untouched, else a tuple with one
      entry per axis: ``None`` (axis unchanged) or a ``bool`` vector over the original
      axis, True where the position is kept.
  """

  count: jax.Array
  kept: Any


# --- numerics -------------------------------------------------------------------------------


def member_values(leaf: jax.Array, axis: int, index_map: np.ndarray, reduce: Callable) -> jax.Array:
  """Reduces ``leaf`` over every axis but ``axis``, then sums each channel's positions.

  Returns:
    A float32 vector with one value per channel (``index_map.shape[0]``).
  """
  moved = jnp.moveaxis(jnp.asarray(leaf, jnp.float32), axis, 0).reshape(leaf.shape[axis], -1)
  per_position = reduce(moved)
  return per_position[jnp.asarray(index_map)].sum(axis=-1)


def group_importance(values: PyTree, group: Group, criterion: str, grads: PyTree | None = None) -> jax.Array:
  """Importance of each channel of ``group`` (higher = keep).

  - ``'l1'`` / ``'l2'``: the L1 / L2 norm of the weights producing the channel (kernel
    members on their last, output axis; all kernel members if the group has none),
    Li et al. 2017.
  - ``'bn_scale'``: ``|gamma|`` of the BatchNorm scale members (1-D leaves named
    ``scale``), Liu et al. 2017.
  - ``'taylor'``: ``(sum over every member of w * g)**2``, the first-order Taylor
    estimate of the loss change when the channel is removed, Molchanov et al. 2019.

  Raises:
    ValueError: if the group lacks the members the criterion needs.
  """
  leaves = dict(leaves_with_paths(values))
  members = [m for m in group.members if m.path in leaves]
  if criterion in ("l1", "l2"):
    kernels = [m for m in members if leaves[m.path].ndim >= 2]
    producing = [m for m in kernels if m.axis == leaves[m.path].ndim - 1] or kernels
    if not producing:
      raise ValueError(f"criterion={criterion!r}: the group of {group.paths()} has no kernel member")
    if criterion == "l1":
      return _total(member_values(leaves[m.path], m.axis, m.index_map, lambda x: jnp.abs(x).sum(-1)) for m in producing)
    squares = _total(member_values(leaves[m.path], m.axis, m.index_map, lambda x: (x * x).sum(-1)) for m in producing)
    return jnp.sqrt(squares)
  if criterion == "bn_scale":
    scales = [m for m in members if leaves[m.path].ndim == 1 and m.path.split("/")[-1] == "scale"]
    if not scales:
      raise ValueError(f"criterion='bn_scale': the group of {group.paths()} has no BatchNorm 'scale' member")
    return _total(member_values(leaves[m.path], m.axis, m.index_map, lambda x: jnp.abs(x).sum(-1)) for m in scales)
  if grads is None:
    raise ValueError("criterion='taylor' needs grads=")
  gleaves = dict(leaves_with_paths(grads))
  total = jnp.zeros(group.size, jnp.float32)
  for m in members:
    if m.path in gleaves and gleaves[m.path] is not None:
      wg = jnp.asarray(leaves[m.path], jnp.float32) * jnp.asarray(gleaves[m.path], jnp.float32)
      total = total + member_values(wg, m.axis, m.index_map, lambda x: x.sum(-1))
  return total**2


def _total(values: Iterable[jax.Array]) -> jax.Array:
  """The sum of arrays (at least one)."""
  values = list(values)
  out = values[0]
  for v in values[1:]:
    out = out + v
  return out


def plan(
  values: PyTree,
  groups: Sequence[Group],
  sparsity: float,
  criterion: str,
  *,
  grads: PyTree | None = None,
  where: select.Where = None,
  scope: str = "layer",
) -> tuple[PyTree, dict[tuple[str, int], int]]:
  """Chooses the channels to keep in every prunable group selected by ``where``.

  A group is pruned when it is prunable and ``where`` selects at least one of its
  members. With ``scope='layer'`` each group keeps ``max(1, size - round(sparsity * size))``
  channels, its most important by ``criterion`` (ties keep the earlier channel). With
  ``scope='global'`` one ranking runs over the channels of all those groups (one
  threshold, as network slimming's percentile of all ``|gamma|``): ``total -
  round(sparsity * total)`` channels are kept overall, each group's most important
  channel always among them (so no group loses all its channels), ties keeping the
  earlier group, then the earlier channel.

  Returns:
    ``(kept, sizes)``: ``kept`` as in :class:`ChannelState`, and the kept length of
    every changed ``(path, axis)`` (static ints).

  Raises:
    ValueError: if nothing is pruned, or with ``scope='global'`` on traced values (the
      kept widths depend on the values and must be static: call ``init`` outside ``jit``).
  """
  pred = select.as_predicate(where)
  flat = leaves_with_paths(values)
  leaves = dict(flat)
  chosen = [
    g for g in groups if g.prunable and any(m.path in leaves and pred(m.path, leaves[m.path]) for m in g.members)
  ]
  importance = [group_importance(values, g, criterion, grads) for g in chosen]
  if scope == "global" and chosen:
    if any(isinstance(v, jax.core.Tracer) for v in importance):
      raise ValueError(
        "channel_prune(scope='global') sets each group's width from the values, which must be concrete: "
        "call init outside jit (or use scope='layer')"
      )
    total = sum(g.size for g in chosen)
    keep_total = max(len(chosen), total - int(criteria.num_pruned(sparsity, total)))
    # each group's best channel ranks first, so every group keeps at least one
    boosted = [jnp.where(jnp.arange(v.shape[0]) == jnp.argmax(v), jnp.inf, v) for v in importance]
    flat_keep = criteria.keep_top(jnp.concatenate(boosted), keep_total)
    starts = np.cumsum([0] + [g.size for g in chosen])
    channel_keeps = [flat_keep[a:b] for a, b in zip(starts[:-1], starts[1:])]
    keeps = [int(np.sum(np.asarray(k))) for k in channel_keeps]
  else:
    keeps = [max(1, g.size - int(criteria.num_pruned(sparsity, g.size))) for g in chosen]
    channel_keeps = [criteria.keep_top(v, k) for v, k in zip(importance, keeps)]
  axis_keep: dict[tuple[str, int], jax.Array] = {}
  removed: dict[tuple[str, int], int] = {}
  for group, keep, channel_keep in zip(chosen, keeps, channel_keeps):
    if keep == group.size:
      continue
    for m in group.members:
      if m.path not in leaves:
        continue
      key = (m.path, m.axis)
      full = leaves[m.path].shape[m.axis]
      current = axis_keep.get(key, jnp.ones(full, bool))
      positions = jnp.asarray(m.index_map.reshape(-1))
      per_position = jnp.repeat(channel_keep, m.index_map.shape[1])
      axis_keep[key] = current.at[positions].set(current[positions] & per_position)
      removed[key] = removed.get(key, 0) + (group.size - keep) * m.index_map.shape[1]
  if not axis_keep:
    raise ValueError(f"no prunable channel group is selected by where={where!r} (or sparsity={sparsity} removes none)")
  sizes = {key: leaves[key[0]].shape[key[1]] - n for key, n in removed.items()}

  def one(path, leaf):
    axes = [axis_keep.get((path, a)) for a in range(np.ndim(leaf))]
    return None if all(k is None for k in axes) else tuple(axes)

  kept = map_with_path(one, values)
  return kept, sizes


def slice_leaf(x: jax.Array, kept: tuple[Any, ...], sizes: Sequence[int | None]) -> jax.Array:
  """Keeps the positions ``kept`` marks along each axis (``sizes``: how many, static)."""
  for axis, (k, n) in enumerate(zip(kept, sizes)):
    if k is not None:
      x = jnp.take(x, jnp.nonzero(k, size=n)[0], axis=axis)
  return x


def expand_leaf(x: jax.Array, kept: tuple[Any, ...]) -> jax.Array:
  """Inverse of :func:`slice_leaf`: scatters ``x`` into zeros of the original shape."""
  for axis, k in enumerate(kept):
    if k is not None:
      idx = jnp.nonzero(k, size=x.shape[axis])[0]
      shape = list(x.shape)
      shape[axis] = k.shape[0]
      index = (slice(None),) * axis + (idx,)
      x = jnp.zeros(shape, x.dtype).at[index].set(x, unique_indices=True)
  return x


def check_sliced(params: PyTree, kept: PyTree) -> None:
  """Raises ``ValueError`` if a leaf is not the sliced tree ``init`` returned.

  The kept flags are data, so this check runs only where they are concrete (outside
  ``jit``); the original, unsliced params would otherwise be scattered into garbage.
  """
  flat_p = leaves_with_paths(params)
  flat_k = jax.tree.structure(params, is_leaf=is_packed_leaf).flatten_up_to(kept)
  for (path, x), k in zip(flat_p, flat_k):
    for axis, flags in enumerate(k or ()):
      if flags is None or isinstance(flags, jax.core.Tracer):
        continue
      # NumPy on the concrete flags: a jnp reduction would be staged out inside a trace
      # (make_step traces update to see whether it reads the gradients) and have no value
      count = int(np.count_nonzero(np.asarray(flags)))
      if count != x.shape[axis]:
        raise ValueError(
          f"leaf {path!r} has {x.shape[axis]} entries on axis {axis} but channel pruning kept "
          f"{count}: pass the smaller tree that init returned"
        )


# --- plumbing -------------------------------------------------------------------------------


def _kept_map(kept: PyTree, params: PyTree) -> dict[str, tuple[Any, ...]]:
  treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
  flat = treedef.flatten_up_to(kept)
  return {path: k for (path, _), k in zip(leaves_with_paths(params), flat) if k is not None}


def _sizes_of(kept: tuple[Any, ...], like: Any) -> list[int | None]:
  return [None if k is None else int(np.asarray(k).sum()) for k in kept] if like is None else list(like)


def shrink(optimizer: optax.GradientTransformation, opt_state: optax.OptState, state: ChannelState) -> optax.OptState:
  """Slices an optimizer state built on the full-size params to match the pruned ones.

  The optimizer-state entries that belong to a parameter (Adam's ``mu``/``nu``, momentum)
  are found exactly by ``optax.tree_map_params`` (the optimizer rebuilds its own state's
  structure), never by name; each is sliced like its parameter. Runs on concrete arrays
  (the kept counts are read from ``state``).

  Args:
    optimizer: the optax transformation that built ``opt_state``.
    opt_state: its state, on the full-size params.
    state: the :class:`ChannelState` from :func:`channel_prune`'s ``init``.

  Returns:
    The state as ``optimizer.init`` would build it on the smaller params, holding the
    kept entries of the full-size state.
  """

  def one(leaf, kept):
    if kept is None or len(kept) != np.ndim(leaf):
      return leaf
    return slice_leaf(leaf, kept, _sizes_of(kept, None))

  return optax.tree_map_params(optimizer.init, one, opt_state, state.kept)


def narrow_nnx(model: Any, state: ChannelState | None = None, params: PyTree = None) -> Any:
  """A narrower copy of a Flax NNX module: smaller Variables and feature counts.

  Every Variable whose path (``'conv1/kernel'``, ``'layers/0/bias'``) was pruned is
  replaced by its sliced value, and the feature attributes of the standard layers are
  set from the new shapes: ``Linear.in_features/out_features``, ``Conv.in_features/
  out_features/feature_group_count/kernel_shape`` (a depthwise conv keeps
  ``feature_group_count == in_features``), ``BatchNorm/LayerNorm.num_features``.
  Custom modules that store widths elsewhere must be rebuilt by their owner.

  From a file alone: ``narrow_nnx(model, params=export.load(path))`` with no ``state``
  rebuilds the deployed module from the packed tree ``export.save`` wrote, each
  :class:`~jaxcompress.export.SlicedArray` giving its kept block (dequantized if it holds
  quantized codes) and every other compressed leaf its dense value.

  Args:
    model: the original module (left unchanged).
    state: the :class:`ChannelState` from :func:`channel_prune`, or ``None`` when
      ``params`` is already at the narrow shapes (a packed or loaded tree).
    params: the params whose values the narrow module gets, by path: the full-size tree
      the compressor was initialized on, the pruned trainable tree (after fine-tuning), or
      a packed tree. Variables it does not hold keep the module's values.

  Returns:
    The narrower module; ``narrow(x)`` equals the original model under ``channel_prune``'s
    ``apply`` of those params, up to float rounding (XLA sums a narrower contraction in
    another order: about 1e-6 relative).

  Raises:
    ValueError: if ``params`` is not given.
  """
  from flax import nnx

  if params is None:
    raise ValueError("narrow_nnx needs params= (the pruned trainable tree, or a packed/loaded one)")
  params = export.materialize_tree(export.narrowed(params))
  kept = {} if state is None else _kept_map(state.kept, params)
  values = dict(leaves_with_paths(params))
  model = nnx.clone(model)
  for path, node in list(nnx.iter_graph(model)):
    name = "/".join(str(p) for p in path)
    if not isinstance(node, nnx.Variable) or name not in values:
      continue
    value, full = values[name], tuple(np.shape(node.get_value()))
    if name in kept and tuple(np.shape(value)) == full:
      k = kept[name]
      value = slice_leaf(value, k, _sizes_of(k, None))
    node.set_value(jnp.asarray(value))
  for _, module in list(nnx.iter_graph(model)):
    if isinstance(module, nnx.Linear):
      module.in_features, module.out_features = module.kernel.get_value().shape
    elif isinstance(module, nnx.Conv):
      shape = module.kernel.get_value().shape
      depthwise = module.feature_group_count > 1 and module.feature_group_count == module.in_features
      multiplier = module.out_features // module.in_features if depthwise else 1
      module.out_features = shape[-1]
      module.in_features = shape[-1] // multiplier if depthwise else shape[-2] * module.feature_group_count
      if depthwise:
        module.feature_group_count = module.in_features
      module.kernel_shape = tuple(shape)  # pyrefly: ignore[bad-assignment]
    elif isinstance(module, (nnx.BatchNorm, nnx.LayerNorm)) and module.scale is not None:
      module.num_features = module.scale.get_value().shape[0]
  return model


def narrow_linen(module: Any) -> Callable[..., Any]:
  """The Flax Linen counterpart of :func:`narrow_nnx`: runs ``module`` at the pruned widths.

  Linen layers read their widths from their fields (``Dense.features``,
  ``Conv.features``) and check every parameter's shape against them, so a narrower
  Linen model is the same module definition with smaller feature counts. The returned
  function applies ``module`` with a method interceptor that, for each ``nn.Dense`` and
  ``nn.Conv`` call, sets ``features`` from the kernel it is given (and a depthwise
  conv's ``feature_group_count`` from its input's channels) while that call runs; norm
  layers take their sizes from their inputs already. Modules that store widths in other
  fields of their own must be rebuilt by their owner.

  Args:
    module: the original Linen module (left unchanged).

  Returns:
    ``apply(variables, *args, **kwargs)``: ``module.apply`` on the smaller variables
    (the tree :func:`channel_prune`'s ``init`` returns, or :func:`shrink` of the
    originals); its output equals the original model under ``channel_prune``'s
    ``apply``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import linen as nn
    >>> module = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(1)])
    >>> x = jnp.ones((1, 3))
    >>> variables = module.init(jax.random.key(0), x)
    >>> c = channel_prune(0.5, apply_fn=module.apply, inputs=[x])
    >>> small, state = c.init(variables)
    >>> small['params']['layers_0']['kernel'].shape
    (3, 2)
    >>> bool(jnp.allclose(narrow_linen(module)(small, x), module.apply(c.apply(small, state), x)))
    True
  """
  from flax import linen as nn

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name != "__call__" or not isinstance(m, (nn.Dense, nn.Conv)):
      return next_fun(*args, **kwargs)
    if not m.has_variable("params", "kernel"):
      return next_fun(*args, **kwargs)
    kernel = m.get_variable("params", "kernel")
    changes = {"features": kernel.shape[-1]}
    if isinstance(m, nn.Conv) and m.feature_group_count > 1 and kernel.shape[-2] == 1:
      changes["feature_group_count"] = args[0].shape[-1]  # depthwise: one group per input channel
    old = {k: getattr(m, k) for k in changes}
    for k, v in changes.items():
      object.__setattr__(m, k, v)  # Linen modules are frozen; restored right after the call
    try:
      return next_fun(*args, **kwargs)
    finally:
      for k, v in old.items():
        object.__setattr__(m, k, v)

  def apply(variables: PyTree, *args: Any, **kwargs: Any) -> Any:
    with nn.intercept_methods(interceptor):
      return module.apply(variables, *args, **kwargs)

  return apply


def slimming_penalty(params: PyTree, strength: float, *, where: select.Where = r"(.*/)?scale") -> jax.Array:
  """Network slimming's sparsity term: ``strength * sum |gamma|`` over BatchNorm scales.

  Add it to the training loss so that unimportant channels' scales shrink toward 0,
  then prune with ``channel_prune(..., criterion='bn_scale')`` (one global threshold on
  ``|gamma|`` over all BatchNorm layers, as in the paper).

  Args:
    params: the param tree.
    strength: ``lambda`` (1e-4 to 1e-5 in the paper), >= 0.
    where: which leaves are BatchNorm scales (default: leaves named ``scale``).

  Returns:
    A float32 scalar, differentiable.

  Raises:
    ValueError: if ``strength`` is negative or not finite, or ``where`` selects nothing.

  References:
    Liu, Li, Shen, Huang, Yan & Zhang 2017, "Learning Efficient Convolutional Networks
    through Network Slimming", https://arxiv.org/abs/1708.06519.

  Example:
    >>> import jax.numpy as jnp
    >>> float(slimming_penalty({'bn': {'scale': jnp.array([1.0, -2.0])}}, 0.5))
    1.5
  """
  strength = validate.check_float("strength", strength, low=0.0)
  pred = select.as_predicate(where)
  chosen = [x for p, x in leaves_with_paths(params) if pred(p, x)]
  if not chosen:
    select.explain(where, params)
  return strength * _total(jnp.abs(jnp.asarray(x, jnp.float32)).sum() for x in chosen)


def slimming(strength: validate.ScalarOrSchedule, *, where: select.Where = r"(.*/)?scale") -> Compressor:
  """Network slimming's training phase as a compressor: the L1 term on BatchNorm scales.

  Its ``penalty`` is :func:`slimming_penalty` (``strength * sum |gamma|``), which
  ``jaxcompress.train`` adds to the loss; ``apply``, ``update`` and ``pack`` leave the params
  alone. Train with it, then prune the channels whose scales shrank:
  ``channel_prune(..., criterion='bn_scale')``, which ranks all BatchNorm scales together
  (``scope='global'``, the paper's single threshold; ``scope='layer'`` prunes the same
  fraction of every layer).

  Args:
    strength: ``lambda`` (1e-4 to 1e-5 in the paper), >= 0, or a schedule of the step.
    where: which leaves are BatchNorm scales (default: leaves named ``scale``).

  Returns:
    A :class:`~jaxcompress.Compressor` whose state is the step count.

  Raises:
    ValueError: if ``strength`` is negative or not finite; at ``init``, if ``where``
      selects nothing.

  References:
    Liu, Li, Shen, Huang, Yan & Zhang 2017, "Learning Efficient Convolutional Networks
    through Network Slimming", https://arxiv.org/abs/1708.06519.

  Example:
    >>> import jax.numpy as jnp
    >>> c = slimming(0.5)
    >>> params, state = c.init({'bn': {'scale': jnp.array([1.0, -2.0])}})
    >>> float(c.penalty(params, state))
    1.5
  """
  schedule = validate.as_schedule("strength", strength, lambda name, v: validate.check_float(name, v, low=0.0))

  def init(params, *, masks=None):
    del masks
    slimming_penalty(params, 0.0, where=where)  # raises if where selects nothing
    return params, jnp.asarray(0, jnp.int32)

  def apply(params, state):
    del state
    return params

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state + 1

  def pack(params, state):
    del state
    return params

  def penalty(params, state):
    return schedule(state) * slimming_penalty(params, 1.0, where=where)

  return Compressor(init, apply, update, pack, penalty=penalty)


def default_scope(criterion: str) -> str:
  """The scope of ``criterion``'s paper: ``'global'`` for ``'bn_scale'`` (Liu et al. 2017's
  single threshold) and ``'taylor'`` (Molchanov et al. 2019 rank globally), ``'layer'``
  for ``'l1'`` and ``'l2'`` (Li et al. 2017 prune each layer)."""
  return "global" if criterion in ("bn_scale", "taylor") else "layer"


def channel_prune(
  sparsity: float,
  *,
  apply_fn: Callable[..., Any],
  inputs: Sequence[Any],
  criterion: str = "l1",
  grads: PyTree | None = None,
  where: select.Where = None,
  scope: str | None = None,
) -> Compressor:
  """Removes whole channels (filters, hidden units) and trains the smaller network.

  ``init`` finds the dependency groups of ``apply_fn(params, *inputs)``, scores each
  channel by ``criterion`` (see :func:`group_importance`), keeps the most important
  channels of the prunable groups selected by ``where`` (see ``scope``), and returns the **smaller** param tree as the trainable tree (so the
  optimizer state is built on it). ``apply`` scatters it back into zeros of the
  original shapes, so the original model runs and its output equals that of the
  narrower model from :func:`narrow_nnx`; removing channels whose weights are all zero
  leaves the output unchanged. ``update`` only advances the count. ``pull_masks`` takes a
  mask over the full view to the kept channels (as ``apply``'s transpose takes its
  gradient), so in ``chain(channel_prune(...), magnitude(...))`` the weights magnitude
  prunes inside the kept channels are zeroed in the narrowed trainable arrays and kept
  off the optimizer (moments, weight decay). ``pack`` stores
  each pruned leaf as a :class:`~jaxcompress.export.SlicedArray` (the smaller dense
  array plus one bit per original position of each axis). One-shot: prune a trained
  model, then fine-tune.

  All members of a pruned group are sliced, biases and BatchNorm entries included (so
  a pruned model's biases differ from the dense one's, by design). Pass every leaf the
  groups touch (BatchNorm statistics too) in the compressed tree, with ``apply_fn``
  reading them from it.

  Args:
    sparsity: fraction of the channels of each pruned group removed, in [0, 1).
    apply_fn: ``apply_fn(params, *inputs) -> outputs`` in inference mode.
    inputs: example inputs (their shapes are used for tracing).
    criterion: ``'l1'``, ``'l2'``, ``'bn_scale'`` or ``'taylor'``.
    grads: gradients of the loss at the params (a tree like them), for ``'taylor'``.
    where: a group is pruned if ``where`` selects one of its members (default:
      floating leaves with ``ndim >= 2``, so every prunable group with a kernel).
    scope: ``'global'``: one ranking over the channels of all pruned groups removes
      ``round(sparsity * total)`` channels overall, so a layer of unimportant channels
      loses more and one of important channels may lose none; each group keeps at least
      its most important channel (Liu et al.'s single threshold on all ``|gamma|``;
      Molchanov et al. 2019 also rank globally). ``'layer'``: every group keeps
      ``max(1, size - round(sparsity * size))`` (Li et al. 2017 prune per layer).
      ``None`` (default): each criterion's paper, ``'global'`` for ``'bn_scale'`` and
      ``'taylor'``, ``'layer'`` for ``'l1'`` and ``'l2'``. A group's importance is the
      sum over its members (a residual group sums its BatchNorms' ``|gamma|``), and
      global ranking compares these sums as they are (no per-layer normalization).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`ChannelState`.

  Raises:
    ValueError: for a sparsity outside [0, 1), an unknown ``criterion`` or ``scope``,
      ``'taylor'`` without ``grads``; at ``init``, if ``grads`` does not match the
      params, no prunable group is selected, a group lacks what the criterion needs, or
      ``scope='global'`` runs under ``jit`` (the widths depend on the values).

  References:
    Li, Kadav, Durdanovic, Samet & Graf 2017, "Pruning Filters for Efficient ConvNets",
    https://arxiv.org/abs/1608.08710; Liu et al. 2017, "Network Slimming",
    https://arxiv.org/abs/1708.06519; Molchanov, Mallya, Tyree, Frosio & Kautz 2019,
    "Importance Estimation for Neural Network Pruning", https://arxiv.org/abs/1906.10771;
    Fang, Ma, Song, Mi & Wang 2023, "DepGraph: Towards Any Structural Pruning",
    https://arxiv.org/abs/2301.12900.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> f = lambda p, x: jax.nn.relu(x @ p['a']) @ p['b']
    >>> params = {'a': jnp.array([[1.0, 0.1, 2.0, 0.2]]), 'b': jnp.ones((4, 1))}
    >>> c = channel_prune(0.5, apply_fn=f, inputs=[jnp.ones((1, 1))])
    >>> small, state = c.init(params)
    >>> small['a'].tolist(), small['b'].shape
    ([[1.0, 2.0]], (2, 1))
    >>> c.apply(small, state)['a'].tolist()
    [[1.0, 0.0, 2.0, 0.0]]
  """
  sparsity = validate.check_sparsity("sparsity", sparsity)
  validate.check_choice("criterion", criterion, CRITERIA)
  scope = masking.check_scope(default_scope(criterion) if scope is None else scope)
  if criterion == "taylor" and grads is None:
    raise ValueError("criterion='taylor' needs grads= (the loss gradient at the params)")
  inputs = tuple(inputs)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    if grads is not None:
      masking.check_grads(params, grads, "channel_prune")
    for path, leaf in leaves_with_paths(params):
      validate.check_finite_if_concrete(path, leaf)
    groups = dependency_groups(apply_fn, params, *inputs)
    kept, sizes = plan(params, groups, sparsity, criterion, grads=grads, where=where, scope=scope)
    treedef = jax.tree.structure(params, is_leaf=is_packed_leaf)
    small = [
      x if k is None else slice_leaf(x, k, [sizes.get((path, a)) for a in range(np.ndim(x))])
      for (path, x), k in zip(leaves_with_paths(params), treedef.flatten_up_to(kept))
    ]
    return treedef.unflatten(small), ChannelState(jnp.asarray(0, jnp.int32), kept)

  def apply(params, state):
    check_sliced(params, state.kept)
    return jax.tree.map(
      lambda x, k: x if k is None else expand_leaf(x, k), params, state.kept, is_leaf=lambda x: x is None
    )

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state._replace(count=state.count + 1)

  def pack(params, state):
    return jax.tree.map(
      lambda x, k: x if k is None else export.sliced_from_parts(np.asarray(x), k),
      params,
      state.kept,
      is_leaf=lambda x: x is None,
    )

  def pull_masks(params, state, masks):
    # the transpose of apply's scatter: a mask over the full view, at the kept channels
    def one(x, k, m):
      if m is None:
        return None
      if k is not None:
        m = slice_leaf(m, k, [None if flags is None else x.shape[a] for a, flags in enumerate(k)])
      return m if jnp.shape(m) == jnp.shape(x) else None

    return jax.tree.map(one, params, state.kept, masks, is_leaf=lambda x: x is None)

  return Compressor(init, apply, update, pack, pull_masks=pull_masks)
