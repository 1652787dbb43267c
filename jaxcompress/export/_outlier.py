"""``OutlierArray``: a low-bit leaf with a few entries kept at high precision."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress.export._base import CompressedLeaf, materialize


@dataclasses.dataclass(frozen=True)
class OutlierArray(CompressedLeaf):
  """``where(outliers.present(), outliers, base)``: value-aware storage (Park et al. 2018).

  Attributes:
    base: the low-bit leaf (a :class:`~jaxcompress.export.QArray` of the small values,
      holding the zero code at the outliers' positions) or a dense array.
    outliers: a :class:`~jaxcompress.export.SparseArray` of the large values at high
      precision (float16 or float32), of the same dense shape.

  ``materialize`` returns ``base``'s dtype; ``nbytes`` is the codes, scale, outlier
  values and positions as stored.
  """

  base: Any
  outliers: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.outliers.shape)

  def materialize(self) -> jax.Array:
    dense = jnp.asarray(materialize(self.base))
    big = jnp.asarray(self.outliers.materialize()).astype(dense.dtype)
    return jnp.where(self.outliers.present(), big, dense)

  def prune(self, mask: Any) -> CompressedLeaf:
    """Prunes both parts: the base's own :meth:`prune` and the outliers' entries."""
    from jaxcompress.export._masked import prune

    return dataclasses.replace(self, base=prune(self.base, mask), outliers=self.outliers.prune(mask))


jax.tree_util.register_dataclass(OutlierArray, data_fields=["base", "outliers"], meta_fields=[])
