"""``CodebookArray``: shared values plus a small index per weight."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.export.base import CompressedLeaf, materialize
from jaxcompress.export.qarray import store_codes


@dataclasses.dataclass(frozen=True)
class CodebookArray(CompressedLeaf):
  """``x = codebook[indices]``, weight sharing as in Deep Compression (Han, Mao & Dally
  2016, https://arxiv.org/abs/1510.00149, §3).

  Attributes:
    codebook: ``float[k]``, the shared values.
    indices: unsigned integer indices of ``shape``, stored at ``ceil(log2 k)`` bits (a
      bit-packed stream, a native ``uint8``/``uint16`` array, or a sparse array of
      indices when index 0 stands for pruned zeros).
  """

  codebook: Any
  indices: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.indices.shape)

  def materialize(self) -> jax.Array:
    idx = jnp.asarray(materialize(self.indices), jnp.int32)
    return jnp.asarray(self.codebook)[idx]


jax.tree_util.register_dataclass(CodebookArray, data_fields=["codebook", "indices"], meta_fields=[])


def index_bits(num_codes: int) -> int:
  """Bits needed to index ``num_codes`` entries (at least 1)."""
  return max(1, math.ceil(math.log2(num_codes)))


def from_assignments(codebook: Any, indices: Any) -> CodebookArray:
  """Packs a codebook and per-weight indices, storing indices at ``log2 k`` bits.

  Args:
    codebook: ``float[k]``, ``k >= 1``.
    indices: integer array in ``[0, k)`` of the weight tensor's shape.

  Returns:
    A :class:`CodebookArray`.

  Raises:
    ValueError: if the codebook is not 1-D and non-empty, or an index is out of range.
  """
  codebook = np.asarray(codebook)
  if codebook.ndim != 1 or codebook.size == 0:
    raise ValueError(f"codebook must be a non-empty 1-D array, got shape {codebook.shape}")
  bits = index_bits(codebook.size)
  indices = np.asarray(indices)
  if indices.size and (indices.min() < 0 or indices.max() >= codebook.size):
    raise ValueError(f"indices must lie in [0, {codebook.size}), got range [{indices.min()}, {indices.max()}]")
  return CodebookArray(codebook=codebook, indices=store_codes(indices, bits, signed=False))
