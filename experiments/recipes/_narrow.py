"""FLOPs of a channel-pruned row as served: the narrowed module rebuilt from the packed file
(``pruning.narrow_nnx``), not the zero-masked view at the original widths."""

from typing import Any

from flax import nnx

import jaxcompress as jc


def flops(model: Any) -> Any:
  """A ``FineTune.flops`` for ``model`` (an ``experiments.models.Functional``): counts
  ``graph.flops`` of the narrow NNX module that ``narrow_nnx`` builds from the packed tree."""

  def count(apply: Any, packed: Any, x: Any) -> int:
    del apply  # the full-width function; the narrow module is rebuilt from the packed tree
    small = jc.pruning.narrow_nnx(nnx.merge(model.graphdef, model.template, model.rest), params=packed)
    graphdef, params, rest = nnx.split(small, (nnx.Param, nnx.BatchStat), ...)
    return int(jc.graph.flops(lambda p, x: nnx.merge(graphdef, p, rest)(x), params, x)["flops"])

  return count
