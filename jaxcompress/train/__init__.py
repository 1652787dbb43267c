"""Training integration: ``wrap_loss``, ``init`` and ``make_step``."""

from jaxcompress.train.step import TrainState, init, make_step, wrap_loss

__all__ = ["TrainState", "init", "make_step", "wrap_loss"]
