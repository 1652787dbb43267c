"""DoReFa-style quantizers with bit-width stages: Zhuang et al. 2018's two-stage
optimization and progressive quantization.

Numerics (one array): :func:`dorefa_weight` (tanh-normalized weights on ``2^k`` levels
in ``[-1, 1]``) and :func:`dorefa_activation` (``[0, 1]``-clipped activations on
``2^k`` levels); :func:`dorefa` and :func:`dorefa_activations` are the compressors. Their
``bits`` is a constant or a sequence of *stages* ``((start_step, bits), ...)``
(``bits = 32``: full precision), switched by the state's step count, so one run trains
each stage from the one before (the float weights carry over):

- two-stage optimization (TS): weights quantized from step 0, activations from step
  ``K``: ``chain(dorefa(4), dorefa_activations(((0, 32), (K, 4)), ...))``;
- progressive quantization (PQ): :func:`progressive_stages` ``32 -> 16 -> 8 -> 4 -> 2``
  for both.

Guided training is :func:`~jaxcompress.quantization.guided`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.graph._trace import Site
from jaxcompress.quantization import _activations as activations
from jaxcompress.quantization import _ste, uniform

FLOAT = 32
"""The bit-width that stands for full precision in a stage list."""

Stages = tuple[tuple[int, int], ...]


def progressive_stages(steps_per_stage: int, bits: Sequence[int] = (32, 16, 8, 4, 2)) -> Stages:
  """Zhuang et al.'s progressive quantization as stages: ``bits[j]`` from step ``j * steps_per_stage``.

  Args:
    steps_per_stage: steps per stage, >= 1.
    bits: the decreasing bit-widths (32: full precision).

  Returns:
    ``((0, bits[0]), (steps_per_stage, bits[1]), ...)``.

  Raises:
    ValueError: if ``steps_per_stage < 1`` or ``bits`` is empty or not decreasing.

  Example:
    >>> progressive_stages(100, (32, 8, 4))
    ((0, 32), (100, 8), (200, 4))
  """
  steps_per_stage = validate.check_int("steps_per_stage", steps_per_stage, low=1)
  bits = tuple(bits)
  if not bits or any(b <= c for b, c in zip(bits, bits[1:])):
    raise ValueError(f"bits must be a non-empty decreasing sequence, got {bits!r}")
  return tuple((j * steps_per_stage, b) for j, b in enumerate(bits))


def _check_stages(bits: int | Sequence[tuple[int, int]], low: int) -> Stages:
  if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
    stages: Any = ((0, int(bits)),)
  else:
    try:
      stages = tuple((int(s), int(b)) for s, b in bits)  # type: ignore[union-attr]
    except (TypeError, ValueError):
      raise ValueError(f"bits must be an int or a sequence of (start_step, bits) pairs, got {bits!r}") from None
  if not stages or stages[0][0] != 0:
    raise ValueError(f"bits stages must start at step 0, got {stages!r}")
  starts = [s for s, _ in stages]
  if any(a >= b for a, b in zip(starts, starts[1:])):
    raise ValueError(f"bits stages must start at increasing steps, got {stages!r}")
  for _, b in stages:
    if b != FLOAT:
      validate.check_bits("bits", b, low=low)
  return stages


def _stage_index(stages: Stages, count: jax.Array) -> jax.Array:
  starts = jnp.asarray([s for s, _ in stages[1:]], jnp.int32)
  return jnp.sum(count >= starts).astype(jnp.int32) if len(stages) > 1 else jnp.asarray(0, jnp.int32)


def _stage_at(stages: Stages, count: int) -> int:
  return [b for s, b in stages if s <= count][-1]


def _weight_codebook(bits: int, dtype: Any) -> jax.Array:
  n = 2**bits - 1
  return (2 * (jnp.arange(2**bits, dtype=jnp.float32) / n) - 1).astype(dtype)


def _normalized(w: jax.Array) -> jax.Array:
  """``tanh(w) / (2 max|tanh(w)|) + 1/2`` in ``[0, 1]``, in float32 for half types."""
  t = jnp.tanh(uniform.upcast(w))
  return t / (2 * uniform.floor_positive(jnp.max(jnp.abs(t)))) + 0.5


def _weight_indices(w: jax.Array, bits: int) -> jax.Array:
  n = 2**bits - 1
  return jnp.clip(jnp.round(_normalized(w) * n), 0, n).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("bits",))
def dorefa_weight(w: jax.Array, bits: int) -> jax.Array:
  """DoReFa's weight quantizer as Zhuang et al. use it: ``2 Q_k(z) - 1`` with
  ``z = tanh(w) / (2 max|tanh(w)|) + 1/2`` and ``Q_k(z) = round((2^k - 1) z) / (2^k - 1)``.

  Values: the ``2^k`` levels ``2 i / (2^k - 1) - 1`` in ``[-1, 1]`` (read from one
  codebook, so a packed :class:`~jaxcompress.export.CodebookArray` reproduces them bit
  for bit). Gradient: straight-through for the rounding, exact through the tanh
  normalization (its maximum included): ``dL/dw = 2 dz/dw^T g``.

  Args:
    w: float array.
    bits: 2..16.

  Returns:
    ``w``'s shape and dtype.

  References:
    Zhou, Wu, Ni, Zhou, Wen & Zou 2016, "DoReFa-Net", https://arxiv.org/abs/1606.06160;
    Zhuang, Shen, Tan, Liu & Reid 2018, https://arxiv.org/abs/1711.00205 (Eq. 2).
  """
  f = 2 * _normalized(w) - 1
  y = _weight_codebook(bits, f.dtype)[_weight_indices(w, bits)]
  return (y + (f - jax.lax.stop_gradient(f))).astype(w.dtype)  # the added term is exactly 0.0


def _activation_rule(x, n):
  codes = jnp.round(jnp.clip(x, 0, 1) * n)
  return (codes / n).astype(x.dtype), _ste.Local(mask=(x >= 0) & (x <= 1)), (None,)


@functools.partial(jax.jit, static_argnames=("bits",))
def dorefa_activation(x: jax.Array, bits: int) -> jax.Array:
  """DoReFa's activation quantizer: ``Q_k(clip(x, 0, 1))``, ``2^k`` levels ``i / (2^k - 1)``.

  Gradient: straight-through inside ``[0, 1]``, 0 outside (the clip's derivative).

  Args:
    x: float array.
    bits: 1..16.

  Returns:
    ``x``'s shape and dtype.

  References:
    Zhou et al. 2016, https://arxiv.org/abs/1606.06160; Zhuang et al. 2018, Eq. 3,
    https://arxiv.org/abs/1711.00205.
  """
  return _ste.surrogate(_activation_rule, x, jnp.asarray(2**bits - 1, x.dtype))


@functools.partial(jax.jit, static_argnames=("stages", "fn"))  # one compile per shape, eager calls included
def _staged(stages: Stages, fn: Callable[[jax.Array, int], jax.Array], x: jax.Array, count: jax.Array) -> jax.Array:
  branches = [(lambda v: v) if b == FLOAT else functools.partial(lambda v, k: fn(v, k), k=b) for _, b in stages]
  if len(branches) == 1:
    return branches[0](x)
  return jax.lax.switch(_stage_index(stages, count), branches, x)


def dorefa(bits: int | Sequence[tuple[int, int]] = 4, *, where: select.Where = None) -> Compressor:
  """DoReFa-style weight quantization (Zhuang et al. 2018) with optional bit-width stages.

  ``apply`` maps each selected weight to :func:`dorefa_weight` at the bit-width of the
  current stage (``32``: the float weight itself); the float weights are the trainable
  tree, so each stage starts from the weights the previous one trained (progressive
  quantization). ``pack`` stores the current stage: a
  :class:`~jaxcompress.export.CodebookArray` of the ``2^k`` levels and ``k``-bit indices
  (the levels ``2i/(2^k - 1) - 1`` have no integer zero point), or the float array at a
  full-precision stage.

  Args:
    bits: bits per weight, 2..16, or stages ``((0, b0), (s1, b1), ...)`` (start steps
      increasing from 0; ``32`` for full precision), e.g. :func:`progressive_stages`.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: for bits outside 2..16 (and not 32) or malformed stages; at ``init``, as
      :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Zhuang, Shen, Tan, Liu & Reid 2018, "Towards Effective Low-bitwidth Convolutional
    Neural Networks", https://arxiv.org/abs/1711.00205; Zhou et al. 2016, DoReFa-Net,
    https://arxiv.org/abs/1606.06160.

  Example:
    >>> import jax.numpy as jnp
    >>> c = dorefa(((0, 32), (1, 2)))  # float at step 0, 2 bits from step 1
    >>> params, state = c.init({'w': jnp.array([[0.5, -0.1], [-2.0, 0.05]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.5, -0.10000000149011612], [-2.0, 0.05000000074505806]]
    >>> [round(v, 4) for v in c.apply(params, state.advance())['w'].ravel().tolist()]
    [0.3333, -0.3333, -1.0, 0.3333]
  """
  stages = _check_stages(bits, low=2)

  def init(params, *, masks=None):
    del masks
    leaves = leafwise.init_selected(params, where, lambda path, leaf: leafwise.Selected())
    return params, leafwise.LeafwiseState.start(leaves)

  def apply(params, state):
    return leafwise.map_selected(lambda w, _: _staged(stages, dorefa_weight, w, state.count), params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(p, bits_now):
    w = jnp.asarray(export.materialize(p))
    if bits_now == FLOAT:
      return w
    codebook = np.asarray(_weight_codebook(bits_now, w.dtype))
    return export.from_assignments(codebook, np.asarray(_weight_indices(w, bits_now)))

  def pack(params, state):
    bits_now = _stage_at(stages, int(state.count))
    return leafwise.map_selected(lambda p, _: pack_leaf(p, bits_now), params, state.leaves)

  return Compressor(init, apply, update, pack)


def _passthrough_rule(extra, data):
  """The base rule of a site compressor whose own ``rewrite`` (reading the step count) replaces it."""
  del extra, data
  return lambda site, activation, weight: site.compute(activation, weight)


def dorefa_activations(bits: int | Sequence[tuple[int, int]] = 4, *, where: select.Where = None) -> Compressor:
  """DoReFa-style activation quantization (Zhuang et al. 2018) with optional bit-width stages.

  A model-side compressor: ``rewrite`` feeds each selected matmul/convolution
  :func:`dorefa_activation` of its input at the current stage's bit-width (``32``: the
  input as it is). No learned parameters. With stages ``((0, 32), (K, b))`` this is the
  second stage of Zhuang et al.'s two-stage optimization (weights quantized from the
  start, activations from step ``K``).

  Args:
    bits: bits per activation, 1..16, or stages as :func:`dorefa`.
    where: which sites, by weight path (default: all).

  Returns:
    A :class:`~jaxcompress.Compressor` (state
    :class:`~jaxcompress.quantization.SiteState`).

  Raises:
    ValueError: for bits outside 1..16 (and not 32) or malformed stages.

  References:
    Zhuang, Shen, Tan, Liu & Reid 2018, https://arxiv.org/abs/1711.00205.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = dorefa_activations(2)  # levels 0, 1/3, 2/3, 1
    >>> params, state = c.init({'w': jnp.ones((3, 1))})
    >>> c.rewrite(model, params, state)(c.apply(params, state), jnp.array([[0.3, 0.5, 4.0]])).round(4).tolist()
    [[2.0]]
  """
  stages = _check_stages(bits, low=1)
  base = activations.site_compressor(_passthrough_rule, init=lambda params: (None, None), where=where)

  def rewrite(fn, params, state):
    del params

    def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      return site.compute(_staged(stages, dorefa_activation, activation, state.count), weight)

    return graph.rewrite(fn, rule, where=where)

  return base._replace(rewrite=rewrite)
