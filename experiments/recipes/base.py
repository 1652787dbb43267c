"""What a recipe is: a named way to compress a trained dense baseline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jaxcompress as jc


@dataclasses.dataclass(frozen=True)
class FineTune:
  """A compressor and how to fine-tune under it.

  Attributes:
    compressor: applied to the trained baseline's params.
    epochs: fine-tuning epochs (0: pack the baseline as it is, e.g. post-training).
    lr: adam's peak learning rate (cosine-decayed).
    serve: ``serve(apply, packed, cstate) -> fn(x)``: evaluate the packed model through
      this deployment path (for example ``jaxcompress.quantization.serve``'s integer
      matmuls) instead of the compressor's own view of it.
    flops: ``flops(apply, packed, x) -> int``: FLOPs of the packed model as served on
      the batch ``x`` (for example ``graph.flops`` of ``lowrank.factorized(apply)``);
      ``None``: ``graph.flops`` of the dense view.
    loss: ``loss(apply) -> loss_fn(params, x, y)``: the fine-tuning loss built from the
      model's apply (for example a ``jaxcompress.distill.loss`` with a teacher); ``None``
      for the cross-entropy every other recipe trains with.
    first: an earlier phase, trained first from the baseline; this phase then starts from
      its model view (``first.compressor.apply``), as Deep Compression prunes, then
      clusters the pruned model. Its packed file is reported as a stage of the row.
    stage: this phase's name in the per-stage table (``'pruned'``, ``'quantized'``); the
      table is reported for rows with a ``first`` phase or ``huffman``.
    huffman: ``None``, or Huffman-code the packed tree (``export.huffman(packed,
      min_saving=huffman)``) and report that file as the row's final stage (and as the row).
    from_init: train from the model's initialization for this seed (the baseline's own
      starting point) instead of the trained baseline: a from-scratch row, as a distilled
      student and its cross-entropy control are (Hinton et al. 2015).
    start: ``start(params) -> params``, applied to the starting params (the initialization
      or the baseline) before this phase: a pre-training stage such as FitNets' hint
      training; its time is not in the row's train seconds.
    huffman_block: ``export.huffman``'s ``block``: 1 (one symbol at a time, the paper's), 2
      (pairs) or ``'auto'`` (the smaller per stream; the report then shows both codes).
  """

  compressor: jc.Compressor
  epochs: int = 0
  lr: float = 1e-4
  serve: Callable[[Callable[..., Any], Any, Any], Callable[..., Any]] | None = None
  flops: Callable[[Callable[..., Any], Any, Any], int] | None = None
  loss: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
  first: FineTune | None = None
  stage: str = ""
  huffman: int | None = None
  from_init: bool = False
  start: Callable[[Any], Any] | None = None
  huffman_block: int | str = 1


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One row family of the results table.

  Attributes:
    name: the technique's name in the table.
    build: ``build(baseline_params, trainer) -> FineTune``; ``trainer`` is an
      :class:`experiments.training.Trainer` (``steps_per_epoch``, ``epochs(full)``).
    models: the model names it applies to.
    order: position in the table (lower first).
    description: one line for the report.
    full_only: run only under ``--full`` (the default run must stay under 10 minutes on
      2 cores; a row whose method is slow or whose claim needs the full budget goes here).
  """

  name: str
  build: Callable[[Any, Any], FineTune]
  models: tuple[str, ...] = ("lenet300100", "lenet5")
  order: int = 50
  description: str = ""
  full_only: bool = False
