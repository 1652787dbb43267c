"""See the model's computation: sites, rewriting, capture and FLOPs from the jaxpr."""

from jaxcompress.graph.rewrite import Rule, capture, rewrite
from jaxcompress.graph.trace import Site, flops, macs, trace

__all__ = ["Rule", "Site", "capture", "flops", "macs", "rewrite", "trace"]
