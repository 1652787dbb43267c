"""Low-rank: Dense kernels by truncated SVD, conv kernels by spatial SVD, Tucker-2 or CP."""

from jaxcompress.lowrank._common import LeafReport, report
from jaxcompress.lowrank._svd import SVDFactors, svd, svd_rank, truncated_svd

__all__ = [
  "LeafReport",
  "SVDFactors",
  "report",
  "svd",
  "svd_rank",
  "truncated_svd",
]
