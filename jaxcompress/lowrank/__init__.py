"""Low-rank: Dense kernels by truncated SVD, conv kernels by spatial SVD, Tucker-2 or CP; LoRA."""

from jaxcompress.lowrank._common import LeafReport, LowRankState, report
from jaxcompress.lowrank._cp import CPFactors, cp, cp_als
from jaxcompress.lowrank._lora import LoRAFactors, lora
from jaxcompress.lowrank._serve import factorized, serve
from jaxcompress.lowrank._spatial import SpatialFactors, spatial_factors, spatial_matrix, spatial_svd
from jaxcompress.lowrank._svd import SVDFactors, svd, svd_rank, truncated_svd
from jaxcompress.lowrank._tucker import Tucker2Factors, tucker2, tucker2_factors, vbmf_rank

__all__ = [
  "CPFactors",
  "LeafReport",
  "LoRAFactors",
  "LowRankState",
  "SVDFactors",
  "SpatialFactors",
  "Tucker2Factors",
  "cp",
  "cp_als",
  "factorized",
  "lora",
  "report",
  "serve",
  "spatial_factors",
  "spatial_matrix",
  "spatial_svd",
  "svd",
  "svd_rank",
  "truncated_svd",
  "tucker2",
  "tucker2_factors",
  "vbmf_rank",
]
