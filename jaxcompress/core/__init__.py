"""The protocol, selection, tree helpers, validation and accounting."""

from jaxcompress.core import accounting, leafwise, select, tree, validate
from jaxcompress.core.base import Compressor, EmptyState, chain, identity
from jaxcompress.core.tree import PyTree

__all__ = [
  "Compressor",
  "EmptyState",
  "PyTree",
  "accounting",
  "chain",
  "identity",
  "leafwise",
  "select",
  "tree",
  "validate",
]
