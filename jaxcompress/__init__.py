"""jaxcompress: model compression for JAX as pure functions over parameter pytrees.

Every technique is a :class:`Compressor` built by a factory; ``chain`` composes them,
``jaxcompress.train`` threads them through an optax training step, and ``pack`` turns
trained params into compressed leaves whose bytes are real.
"""

from jaxcompress import compact, distill, export, graph, lowrank, pruning, quantization, sharing, train
from jaxcompress.core import accounting, select
from jaxcompress.core._base import Compressor, EmptyState, Joint, identity
from jaxcompress.core._chain import ChainState, chain

__all__ = [
  "ChainState",
  "Compressor",
  "EmptyState",
  "Joint",
  "accounting",
  "chain",
  "compact",
  "distill",
  "export",
  "graph",
  "identity",
  "lowrank",
  "pruning",
  "quantization",
  "select",
  "sharing",
  "train",
]
