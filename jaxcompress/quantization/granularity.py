"""Which elements share a scale: per tensor, per channel, or per group of a channel."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcompress.core import validate


@dataclasses.dataclass(frozen=True)
class Granularity:
  """How a tensor is split into blocks that share one scale (and zero point).

  Attributes:
    channel_axis: the axis whose slices get their own scale, or ``None`` (per tensor).
    group_axis: an axis cut into groups of ``group_size`` consecutive elements, each with
      its own scale (usually the contraction axis), or ``None``.
    group_size: elements per group along ``group_axis``.
  """

  channel_axis: int | None = None
  group_axis: int | None = None
  group_size: int | None = None

  def check(self, shape: tuple[int, ...], where: str) -> None:
    """Raises ``ValueError`` naming ``where`` if this granularity does not fit ``shape``."""
    ndim = len(shape)
    for name, axis in (("axis", self.channel_axis), ("group axis", self.group_axis)):
      if axis is not None and ndim == 0:
        raise ValueError(f"per-channel or per-group quantization of the scalar {where} is undefined")
      if axis is not None and not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for {where} of shape {shape}")
    if self.group_axis is not None and self.group_size is not None:
      n = shape[self.group_axis]
      if n % self.group_size:
        raise ValueError(
          f"group_size={self.group_size} does not divide axis {self.group_axis} of size {n} of {where} {shape}"
        )
    if (
      self.channel_axis is not None
      and self.group_axis is not None
      and self.channel_axis % ndim == self.group_axis % ndim
    ):
      raise ValueError(f"channel axis and group axis are both {self.channel_axis} for {where}")

  def blocked(self, x: jax.Array) -> jax.Array:
    """``x`` with the group axis split into ``(n_groups, group_size)``."""
    if self.group_axis is None or self.group_size is None:
      return x
    a = self.group_axis % x.ndim
    return x.reshape((*x.shape[:a], x.shape[a] // self.group_size, self.group_size, *x.shape[a + 1 :]))

  def reduce_axes(self, ndim: int) -> tuple[int, ...]:
    """Axes of the :meth:`blocked` view (original rank ``ndim``) that share a scale."""
    keep = set()
    if self.group_axis is not None:
      g = self.group_axis % ndim
      keep.add(g)  # the group index; g + 1 holds the elements of a group
    if self.channel_axis is not None:
      c = self.channel_axis % ndim
      if self.group_axis is not None and c > self.group_axis % ndim:
        c += 1
      keep.add(c)
    blocked_ndim = ndim + (self.group_axis is not None)
    return tuple(a for a in range(blocked_ndim) if a not in keep)

  def reduce(self, fn: Callable[..., jax.Array], x: jax.Array) -> jax.Array:
    """``fn(blocked_x, axis=shared_axes, keepdims=True)``: a statistic per block.

    Args:
      fn: a reduction such as ``jnp.mean`` or ``jnp.sum``.
      x: the array (not blocked).

    Returns:
      One value per block, keepdims on the :meth:`blocked` view (``x``'s rank without
      groups).
    """
    return fn(self.blocked(x), axis=self.reduce_axes(x.ndim), keepdims=True)

  def mean(self, x: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """The mean of ``x`` (over ``where`` when given) per block, keepdims on the blocked
    view, without overflow: where the plain mean overflows (sums of values near the
    dtype's largest finite number), each block is divided by its largest magnitude
    first. Exactly ``jnp.mean`` (or ``sum / count``) wherever that is finite.

    Args:
      x: float array.
      where: bool array of ``x``'s shape: only these elements count (a block with none
        gives 0); ``None`` for all.

    Returns:
      One finite value per block (for finite ``x``), ``x``'s dtype.
    """
    b, axes = self.blocked(x), self.reduce_axes(x.ndim)
    if where is None:
      v, count = b, None
      plain = jnp.mean(b, axis=axes, keepdims=True)
    else:
      keep = self.blocked(where)
      v = jnp.where(keep, b, jnp.zeros((), b.dtype))
      count = jnp.maximum(jnp.sum(keep, axis=axes, keepdims=True), 1).astype(b.dtype)
      plain = jnp.sum(v, axis=axes, keepdims=True) / count
    # Scale by the power of two at the largest magnitude (ldexp: exact, where dividing by
    # it would multiply by a reciprocal that flushes to zero near the dtype's max).
    _, e = jnp.frexp(jnp.max(jnp.abs(v), axis=axes, keepdims=True))
    z = jnp.ldexp(v, -e)
    rel = jnp.mean(z, axis=axes, keepdims=True) if count is None else jnp.sum(z, axis=axes, keepdims=True) / count
    return jnp.where(jnp.isfinite(plain), plain, jnp.ldexp(rel, e))

  def absmax(self, x: jax.Array) -> jax.Array:
    """``max |x|`` per block, keepdims on the blocked view."""
    return self.reduce(jnp.max, jnp.abs(x))

  def minmax(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(min, max)`` per block, keepdims on the blocked view."""
    b, axes = self.blocked(x), self.reduce_axes(x.ndim)
    return jnp.min(b, axis=axes, keepdims=True), jnp.max(b, axis=axes, keepdims=True)

  def apply(self, fn, x: jax.Array, *params: jax.Array) -> jax.Array:
    """Runs ``fn(blocked_x, *params)`` and restores ``x``'s shape."""
    return fn(self.blocked(x), *params).reshape(x.shape)


def from_args(
  *, per_channel: bool = False, axis: int = -1, group_size: int | None = None, group_axis: int = 0
) -> Granularity:
  """The granularity named by the arguments every quantizer with a scale or codebook shares.

  Args:
    per_channel: one scale (codebook) per slice along ``axis``; ``False``: one per tensor.
    axis: the channel axis; -1 is the output features of Flax Dense ``(in, out)`` and
      Conv ``(h, w, in, out)`` kernels.
    group_size: if given, one scale per ``group_size`` consecutive elements along
      ``group_axis``, per channel along ``axis`` (only quantizers with groups take it).
    group_axis: the axis cut into groups (0: a Dense kernel's contraction axis).

  Returns:
    The :class:`Granularity`; check it against each leaf with :meth:`Granularity.check`.

  Raises:
    ValueError: if ``per_channel`` is not a bool, ``axis`` or ``group_axis`` is not an
      integer, or ``group_size`` is below 1.

  Example:
    >>> from_args(per_channel=True)
    Granularity(channel_axis=-1, group_axis=None, group_size=None)
  """
  if not isinstance(per_channel, bool):
    raise ValueError(f"per_channel must be a bool, got {per_channel!r}")
  axis = validate.check_int("axis", axis)
  if group_size is not None:
    group_size = validate.check_int("group_size", group_size, low=1)
    group_axis = validate.check_int("group_axis", group_axis)
  return Granularity(
    channel_axis=axis if per_channel or group_size is not None else None,
    group_axis=group_axis if group_size is not None else None,
    group_size=group_size,
  )


def per_tensor() -> Granularity:
  """One scale for the whole tensor."""
  return Granularity()


def per_channel(axis: int = -1) -> Granularity:
  """One scale per slice along ``axis`` (Flax kernels: -1 is the output features)."""
  return Granularity(channel_axis=axis)


def per_group(group_size: int, *, axis: int = 0, channel_axis: int | None = -1) -> Granularity:
  """One scale per ``group_size`` consecutive elements along ``axis`` (the contraction axis
  of a Flax Dense kernel is 0), per output channel."""
  return Granularity(channel_axis=channel_axis, group_axis=axis, group_size=group_size)
