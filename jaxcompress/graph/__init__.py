"""See the model's computation: sites, rewriting, capture, FLOPs and channel dependencies."""

from jaxcompress.graph._dense import is_dense_site
from jaxcompress.graph._deps import Group, Member, dependency_groups
from jaxcompress.graph._hessian import (
  InputHessian,
  LayerReport,
  LayerResult,
  damped_inverse_cholesky,
  dense_sites,
  input_hessians,
  layerwise,
  output_error,
)
from jaxcompress.graph._inputs import DenseInputs, dense_inputs
from jaxcompress.graph._rewrite import Rule, capture, rewrite, sown
from jaxcompress.graph._trace import Site, flops, macs, trace

__all__ = [
  "DenseInputs",
  "Group",
  "InputHessian",
  "LayerReport",
  "LayerResult",
  "Member",
  "Rule",
  "Site",
  "capture",
  "damped_inverse_cholesky",
  "dense_inputs",
  "dense_sites",
  "dependency_groups",
  "flops",
  "input_hessians",
  "is_dense_site",
  "layerwise",
  "macs",
  "output_error",
  "rewrite",
  "sown",
  "trace",
]
