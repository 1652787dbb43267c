"""Pruning: delete redundant weights by an importance criterion."""

from jaxcompress.pruning.criteria import num_pruned, topk_mask
from jaxcompress.pruning.magnitude import MagnitudeState, magnitude
from jaxcompress.pruning.schedules import polynomial_sparsity

__all__ = ["MagnitudeState", "magnitude", "num_pruned", "polynomial_sparsity", "topk_mask"]
