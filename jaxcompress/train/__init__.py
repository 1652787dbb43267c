"""Training integration: ``wrap_loss``, ``init`` and ``make_step`` (mask-aware)."""

from jaxcompress.train._masks import mask_tree, reset_pruned, trainable_masks
from jaxcompress.train._step import TrainState, init, make_step, wrap_loss

__all__ = ["TrainState", "init", "make_step", "mask_tree", "reset_pruned", "trainable_masks", "wrap_loss"]
