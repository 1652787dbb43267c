"""The Compressor protocol, ``identity`` and ``chain``.

A compressor is a ``NamedTuple`` of four pure functions built by a factory, in the
spirit of optax's ``GradientTransformation``:

- ``init(params) -> (params, state)``: returns the *trainable* tree (which may differ
  from the model's, for example low-rank factors) and the compressor's state;
- ``apply(params, state) -> params``: the dense view the model sees; it is the only
  thing that enters the loss and it is differentiable;
- ``update(params, state, *, grads=None, **extra) -> (params, state)``: runs once per
  step after the optimizer: advances the step count, refreshes masks on schedule,
  projects params (pruned weights to exactly zero, ...). Unused keywords are ignored;
- ``pack(params, state) -> packed``: the deployable tree, whose compressed leaves
  (``jaxcompress.export``) report their true storage in ``nbytes``.

``pack`` runs on concrete arrays (its output sizes depend on the values, for example the
number of nonzeros); the other three are jit-, grad-, vmap- and shard-safe.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from jaxcompress.core.tree import PyTree


class InitFn(Protocol):
  """``init(params) -> (trainable_params, state)``."""

  def __call__(self, params: PyTree) -> tuple[PyTree, Any]: ...


class ApplyFn(Protocol):
  """``apply(params, state) -> model_params``; differentiable in ``params``."""

  def __call__(self, params: PyTree, state: Any) -> PyTree: ...


class UpdateFn(Protocol):
  """``update(params, state, *, grads=None, **extra) -> (params, state)``, once per step."""

  def __call__(
    self, params: PyTree, state: Any, *, grads: PyTree | None = None, **extra: Any
  ) -> tuple[PyTree, Any]: ...


class PackFn(Protocol):
  """``pack(params, state) -> packed_tree`` of compressed leaves; runs on concrete arrays."""

  def __call__(self, params: PyTree, state: Any) -> PyTree: ...


class Compressor(NamedTuple):
  """A compression technique as four pure functions (see the module docstring).

  Attributes:
    init: ``(params) -> (trainable_params, state)``.
    apply: ``(params, state) -> model_params``, differentiable.
    update: ``(params, state, *, grads=None, **extra) -> (params, state)``.
    pack: ``(params, state) -> packed_tree`` of compressed leaves.
  """

  init: InitFn
  apply: ApplyFn
  update: UpdateFn
  pack: PackFn


class EmptyState(NamedTuple):
  """The state of a compressor that keeps none."""


def identity() -> Compressor:
  """A compressor that changes nothing; the neutral element of :func:`chain`.

  Returns:
    A :class:`Compressor` whose ``apply`` and ``pack`` return the params unchanged.

  Example:
    >>> import jax.numpy as jnp
    >>> c = identity()
    >>> params, state = c.init({'w': jnp.ones(2)})
    >>> c.apply(params, state)['w'].tolist()
    [1.0, 1.0]
  """

  def init(params):
    return params, EmptyState()

  def apply(params, state):
    del state
    return params

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state

  def pack(params, state):
    del state
    return params

  return Compressor(init, apply, update, pack)


def chain(*compressors: Compressor) -> Compressor:
  """Composes compressors into one.

  ``init`` runs left to right, each stage on the tree the previous one returned.
  ``apply``, ``update`` and ``pack`` run right to left, so the model sees
  ``c1.apply(c2.apply(p, s2), s1)`` and the params after ``update`` are what ``apply``
  shows: ``chain(prune, quantize)`` quantizes, then masks. A stage that restructures the
  trainable tree (low-rank factors, codebooks) belongs leftmost, so every later stage
  works on the restructured tree.

  Args:
    *compressors: the stages.

  Returns:
    A :class:`Compressor` whose state is the tuple of the stages' states.

  Raises:
    TypeError: if a stage is not a :class:`Compressor`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import pruning, quantization
    >>> c = chain(pruning.magnitude(0.5), quantization.fake_quant(2))  # levels -4, 0, 4
    >>> params, state = c.init({'w': jnp.array([[0.1, -3.0], [0.3, 4.0]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.0, -4.0], [0.0, 4.0]]
  """
  for i, c in enumerate(compressors):
    if not isinstance(c, Compressor):
      raise TypeError(f"chain argument {i} is not a Compressor: {c!r}")

  def init(params):
    states = []
    for c in compressors:
      params, state = c.init(params)
      states.append(state)
    return params, tuple(states)

  def apply(params, state):
    _check_chain_state(state)
    for c, s in zip(reversed(compressors), reversed(state)):
      params = c.apply(params, s)
    return params

  def update(params, state, *, grads=None, **extra):
    _check_chain_state(state)
    new_states = []
    for c, s in zip(reversed(compressors), reversed(state)):
      params, s = c.update(params, s, grads=grads, **extra)
      new_states.append(s)
    return params, tuple(reversed(new_states))

  def pack(params, state):
    _check_chain_state(state)
    for c, s in zip(reversed(compressors), reversed(state)):
      params = c.pack(params, s)
    return params

  def _check_chain_state(state):
    if not isinstance(state, tuple) or len(state) != len(compressors):
      raise ValueError(
        f"chain of {len(compressors)} compressors expects a tuple of {len(compressors)} "
        f"states, got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}"
      )

  return Compressor(init, apply, update, pack)
