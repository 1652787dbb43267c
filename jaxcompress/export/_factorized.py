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


CONV_KINDS = ("spatial_svd", "tucker2", "cp")


def rebuild_conv(kind: str, factors: tuple[Any, ...]) -> jax.Array:
  """The dense Flax-layout conv kernel ``(h, w, in, out)`` of a decomposed one.

  Args:
    kind: ``'spatial_svd'``: ``(vertical [h, 1, in, r], horizontal [1, w, r, out])``;
      ``'tucker2'``: ``(first [in, r1], core [h, w, r1, r2], last [r2, out])``;
      ``'cp'``: ``(first [in, r], vertical [h, r], horizontal [w, r], last [r, out])``.
    factors: the factors, dense arrays (traced or concrete).

  Returns:
    The kernel ``(h, w, in, out)``; differentiable in the factors.

  Raises:
    ValueError: for an unknown ``kind`` or the wrong number of factors.
  """
  if kind not in CONV_KINDS or len(factors) != {"spatial_svd": 2, "tucker2": 3, "cp": 4}[kind]:
    raise ValueError(f"kind must be one of {CONV_KINDS} with its factors, got {kind!r} with {len(factors)}")
  if kind == "spatial_svd":
    vertical, horizontal = factors
    return jnp.einsum("hcr,wro->hwco", vertical[:, 0], horizontal[0])
  if kind == "tucker2":
    first, core, last = factors
    return jnp.einsum("ca,hwab,bo->hwco", first, core, last)
  first, vertical, horizontal, last = factors
  return jnp.einsum("cr,hr,wr,ro->hwco", first, vertical, horizontal, last)


@dataclasses.dataclass(frozen=True)
class ConvFactorized(CompressedLeaf):
  """A conv kernel ``(h, w, in, out)`` kept as the factors of its decomposition.

  Attributes:
    factors: the factors (see :func:`rebuild_conv`), each dense or itself a compressed
      leaf (for example quantized).
    kind: ``'spatial_svd'``, ``'tucker2'`` or ``'cp'``.
    dense_shape: the kernel's shape.
  """

  factors: tuple[Any, ...]
  kind: str
  dense_shape: tuple[int, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.dense_shape

  def materialize(self) -> jax.Array:
    return rebuild_conv(self.kind, tuple(jnp.asarray(materialize(f)) for f in self.factors))


jax.tree_util.register_dataclass(ConvFactorized, data_fields=["factors"], meta_fields=["kind", "dense_shape"])


def factorize_conv(kind: str, factors: tuple[Any, ...], shape: tuple[int, ...]) -> ConvFactorized:
  """Builds a :class:`ConvFactorized` after checking that the factors rebuild ``shape``.

  Raises:
    ValueError: for an unknown ``kind`` or factors whose product is not of ``shape``.
  """
  shape = tuple(int(d) for d in shape)
  abstract = tuple(jax.ShapeDtypeStruct(tuple(f.shape), jnp.float32) for f in factors)
  try:
    out = jax.eval_shape(lambda *fs: rebuild_conv(kind, fs), *abstract)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{kind} factors {[tuple(f.shape) for f in factors]} do not make a kernel: {e}") from None
  if tuple(out.shape) != shape:
    raise ValueError(f"{kind} factors {[tuple(f.shape) for f in factors]} make {tuple(out.shape)}, not {shape}")
  return ConvFactorized(factors=tuple(factors), kind=kind, dense_shape=shape)
