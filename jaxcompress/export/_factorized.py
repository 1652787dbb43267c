"""``Factorized``: a matrix kept as the product of two thin factors."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress.export._base import CompressedLeaf, materialize


@dataclasses.dataclass(frozen=True)
class Factorized(CompressedLeaf):
  """``x = reshape(u @ v, shape)``: low-rank factors of a kernel.

  Attributes:
    u: ``[m, rank]`` (dense or itself a compressed leaf, for example quantized).
    v: ``[rank, n]``.
    dense_shape: the kernel's shape; ``m * n`` must equal its size (a conv kernel
      ``(h, w, in, out)`` is factorized as ``(h*w*in, out)``).
  """

  u: Any
  v: Any
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  @property
  def rank(self) -> int:
    return int(self.u.shape[-1])

  def materialize(self) -> jax.Array:
    u = jnp.asarray(materialize(self.u))
    v = jnp.asarray(materialize(self.v))
    return (u @ v).reshape(self.dense_shape)


jax.tree_util.register_dataclass(Factorized, data_fields=["u", "v"], meta_fields=["dense_shape"])


def factorize(u: Any, v: Any, shape: tuple[int, ...]) -> Factorized:
  """Builds a :class:`Factorized` after checking that ``u @ v`` reshapes to ``shape``.

  Raises:
    ValueError: if the inner dimensions differ or ``u.shape[0] * v.shape[-1]`` is not
      the size of ``shape``.
  """
  shape = tuple(int(d) for d in shape)
  size = 1
  for d in shape:
    size *= d
  if u.shape[-1] != v.shape[0] or u.shape[0] * v.shape[-1] != size:
    raise ValueError(f"factors {tuple(u.shape)} @ {tuple(v.shape)} do not make shape {shape}")
  return Factorized(u=u, v=v, dense_shape=shape)
