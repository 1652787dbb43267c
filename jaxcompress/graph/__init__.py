"""See the model's computation: sites, rewriting, capture, FLOPs and channel dependencies."""

from jaxcompress.graph._deps import Group, Member, dependency_groups
from jaxcompress.graph._inputs import DenseInputs, dense_inputs
from jaxcompress.graph._rewrite import Rule, capture, rewrite, sown
from jaxcompress.graph._trace import Site, flops, macs, trace

__all__ = [
  "DenseInputs",
  "Group",
  "Member",
  "Rule",
  "Site",
  "capture",
  "dense_inputs",
  "dependency_groups",
  "flops",
  "macs",
  "rewrite",
  "sown",
  "trace",
]
