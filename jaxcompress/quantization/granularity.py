"""Which elements share a scale: per tensor, per channel, or per group of a channel."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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

  def absmax(self, x: jax.Array) -> jax.Array:
    """``max |x|`` per block, keepdims on the blocked view."""
    return jnp.max(jnp.abs(self.blocked(x)), axis=self.reduce_axes(x.ndim), keepdims=True)

  def minmax(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(min, max)`` per block, keepdims on the blocked view."""
    b, axes = self.blocked(x), self.reduce_axes(x.ndim)
    return jnp.min(b, axis=axes, keepdims=True), jnp.max(b, axis=axes, keepdims=True)

  def apply(self, fn, x: jax.Array, *params: jax.Array) -> jax.Array:
    """Runs ``fn(blocked_x, *params)`` and restores ``x``'s shape."""
    return fn(self.blocked(x), *params).reshape(x.shape)


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
