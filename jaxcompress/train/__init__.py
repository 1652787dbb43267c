"""Training integration: ``wrap_loss``, ``init`` and ``make_step`` (mask-aware); the same step
as an optax transformation (``masked_optimizer``, for Flax ``TrainState``) and for Flax NNX
(``Compressed`` with ``Optimizer``, an ``nnx.Optimizer``)."""

from jaxcompress.train._masks import mask_tree, reset_pruned, trainable_masks
from jaxcompress.train._nnx import Compressed, CompressorState, Optimizer
from jaxcompress.train._optimizer import (
  MaskedState,
  compressor_state,
  masked_optimizer,
  masked_update,
  train_state_step,
  update_mutable,
)
from jaxcompress.train._step import TrainState, init, make_step, wrap_loss

__all__ = [
  "Compressed",
  "CompressorState",
  "MaskedState",
  "Optimizer",
  "TrainState",
  "compressor_state",
  "init",
  "make_step",
  "mask_tree",
  "masked_optimizer",
  "masked_update",
  "reset_pruned",
  "train_state_step",
  "trainable_masks",
  "update_mutable",
  "wrap_loss",
]
