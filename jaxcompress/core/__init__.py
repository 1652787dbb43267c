"""The protocol, selection, tree helpers, validation and accounting."""

from jaxcompress.core import accounting, leafwise, select, tree, validate
from jaxcompress.core._base import Compressor, EmptyState, Joint, identity
from jaxcompress.core._chain import ChainState, chain
from jaxcompress.core.tree import PyTree

__all__ = [
  "ChainState",
  "Compressor",
  "EmptyState",
  "Joint",
  "PyTree",
  "accounting",
  "chain",
  "identity",
  "leafwise",
  "select",
  "tree",
  "validate",
]
