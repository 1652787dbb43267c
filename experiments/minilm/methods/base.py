"""What a MiniLM method is, what it is given (:class:`Context`) and what it returns (:class:`Result`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxcompress as jc

DENSE = r"layers/\d+/(attention/(query|key|value|output)|intermediate|output)/kernel"
"""``where=`` selecting the 36 Dense kernels (no embeddings, LayerNorms or biases)."""
MLP = r"layers/\d+/(intermediate|output)/kernel"
"""``where=`` selecting the 12 MLP kernels."""
ATTENTION = r"layers/\d+/attention/(query|key|value|output)/kernel"
"""``where=`` selecting the 24 attention kernels (q, k, v and the output projection)."""

Batch = tuple[np.ndarray, np.ndarray]  # (input_ids int32[B, T], attention_mask int32[B, T])


class Unavailable(Exception):
  """Raised by a method that cannot run here (an optional dependency is absent); the row is skipped with the message."""


def flatten_tokens(x: Any, attention_mask: Any) -> np.ndarray:
  """A site's activation ``[B, T, ..., F]`` as ``float32[tokens, F]``: the rows of the real tokens only.

  Padding positions (``attention_mask == 0``) are dropped, so statistics (Hessians
  ``XᵀX``, channel norms, ranges) see only real tokens.

  Raises:
    ValueError: if the leading axes are not ``attention_mask``'s ``[B, T]``.
  """
  x = np.asarray(x, np.float32)
  m = np.asarray(attention_mask).astype(bool)
  if x.shape[:2] != m.shape:
    raise ValueError(f"activation shape {x.shape} does not start with attention_mask's {m.shape}")
  return x[m].reshape(-1, x.shape[-1])


@dataclasses.dataclass(frozen=True)
class Context:
  """Everything a method gets.

  Attributes:
    graphdef: the NNX graphdef (``nnx.merge(graphdef, nnx.State(params))`` is the module).
    params: the float32 params as a plain nested dict (paths ``layers/0/attention/query/kernel``).
    apply: ``apply(params, input_ids, attention_mask) -> float32[B, 384]``, pure; ``params``
      may be any tree of arrays with the same structure (no compressed leaves: materialize first).
    calibration: calibration batches, tuples ``(input_ids, attention_mask)`` of ``int32[B, T]``.
    where: the default selection of leaves to compress, :data:`DENSE`.
    seed: a seed for methods that draw random numbers.
  """

  graphdef: Any
  params: dict
  apply: Callable[..., jax.Array]
  calibration: tuple[Batch, ...]
  where: str = DENSE
  seed: int = 0

  @functools.cached_property
  def sites(self) -> list[jc.graph.Site]:
    """The Dense sites selected by :attr:`where`, in execution order (36 for MiniLM)."""
    ids, mask = self.calibration[0]
    pred = jc.core.select.as_predicate(self.where)
    return [s for s in jc.graph.trace(self.apply, self.params, ids, mask) if pred(s.path, s)]

  def capture(self, params: Any = None, where: Any = None) -> list[dict[str, dict[str, jax.Array]]]:
    """``graph.capture`` of every calibration batch: one ``{site.key: {'input', 'output'}}`` per batch.

    Args:
      params: the (dense) params to run (default: the float ones), e.g. with earlier layers
        already compressed, for sequential methods.
      where: which sites (default :attr:`where`).
    """
    fn = _capture_fn(self.apply, self.where if where is None else where)
    params = self.params if params is None else params
    return [fn(params, ids, mask)[1] for ids, mask in self.calibration]

  def site_inputs(self, params: Any = None, where: Any = None) -> dict[str, np.ndarray]:
    """Each selected site's input over all calibration batches as ``float32[tokens, features]``, padding dropped."""
    per_batch = self.capture(params, where)
    out: dict[str, np.ndarray] = {}
    for key in per_batch[0]:
      out[key] = np.concatenate(
        [flatten_tokens(b[key]["input"], mask) for b, (_, mask) in zip(per_batch, self.calibration)]
      )
    return out

  def embed(self, packed: Any, apply: Callable[..., Any] | None = None) -> Callable[[Any, Any], jax.Array]:
    """``embed(input_ids, attention_mask)``: jitted ``apply(packed, ...)`` with ``packed`` as an argument.

    Args:
      packed: the packed tree.
      apply: ``apply(packed, input_ids, attention_mask)``; default: the float model on
        ``export.materialize_tree(packed)`` (the dense view: dequantized, zeros where pruned).
    """
    if apply is None:
      apply = lambda p, ids, mask: self.apply(jc.export.materialize_tree(p), ids, mask)
    run = jax.jit(apply)
    return lambda ids, mask: run(packed, jnp.asarray(ids), jnp.asarray(mask))

  def compress(self, compressor: jc.Compressor) -> Result:
    """One-shot: ``init`` on the float params, ``pack``, served as the dense view. For data-free compressors."""
    trainable, state = compressor.init(self.params)
    packed = compressor.pack(trainable, state)
    return Result(packed, self.embed(packed))


@functools.lru_cache(maxsize=8)
def _capture_fn(apply, where):
  return jax.jit(jc.graph.capture(apply, where=where))


@dataclasses.dataclass(frozen=True)
class Result:
  """What a method returns.

  Attributes:
    packed: the tree to count (``accounting.report(packed).bytes``) and save (``export.save``).
    embed: ``embed(input_ids, attention_mask) -> float[B, 384]``, the compressed model's
      embeddings through the technique's deployment path (jitted; timed against float32).
    notes: a short remark for the table (optional).
  """

  packed: Any
  embed: Callable[[Any, Any], jax.Array]
  notes: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the MiniLM table.

  Attributes:
    name: the row's name.
    run: ``run(ctx: Context) -> Result``; its wall time is the method's seconds.
    order: position in the table (lower first).
    description: one line.
    quick: part of the ``--quick`` smoke run.
  """

  name: str
  run: Callable[[Context], Result]
  order: int = 50
  description: str = ""
  quick: bool = False


def names(methods: Sequence[Method]) -> list[str]:
  """The methods' names."""
  return [m.name for m in methods]
