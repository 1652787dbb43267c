"""The training helper shared by the baselines and the recipes: adam, cross-entropy,
a jitted ``jaxcompress.train`` step, seeded batches, and test accuracy."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxcompress as jc
from experiments.data import Digits, batches
from experiments.models import Functional


@dataclasses.dataclass(frozen=True)
class Fit:
  """The outcome of :meth:`Trainer.fit`.

  Attributes:
    state: the final ``jaxcompress.train.TrainState``.
    seconds: wall time of the training loop, compilation excluded.
    compile_seconds: time to compile the step.
  """

  state: jc.train.TrainState
  seconds: float
  compile_seconds: float


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Trains one model on the digits.

  Attributes:
    model: the model's functional view.
    data: the digits split.
    batch_size: examples per step.
    budget: multiplies every epoch count (1.0 for the full run, small for ``--quick``).
    progress: show tqdm bars.
  """

  model: Functional
  data: Digits
  batch_size: int = 64
  budget: float = 1.0
  progress: bool = True

  @property
  def steps_per_epoch(self) -> int:
    return len(self.data.train_labels) // self.batch_size

  def epochs(self, full: int) -> int:
    """The epoch count to use for a schedule written for the full run."""
    return max(1, round(full * self.budget))

  def _inputs(self, split: str) -> np.ndarray:
    images = getattr(self.data, f"{split}_images")
    return images.reshape(len(images), -1) if self.model.inputs == "flat" else images

  def loss_of(self, apply: Any) -> Any:
    """Mean softmax cross-entropy of ``apply(params, x)``'s logits."""

    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
      return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

    return loss

  def example_inputs(self, count: int = 1) -> np.ndarray:
    """The first ``count`` test inputs, shaped for the model (for FLOP counts)."""
    return self._inputs("test")[:count]

  def calibration_batches(self, count: int = 8) -> list[np.ndarray]:
    """The first ``count`` training batches (inputs only), for calibration."""
    x = self._inputs("train")
    return [x[i * self.batch_size : (i + 1) * self.batch_size] for i in range(count)]

  def fit(
    self,
    params: Any,
    compressor: jc.Compressor,
    *,
    epochs: int,
    lr: float,
    seed: int,
    desc: str = "",
    loss: Any = None,
  ) -> Fit:
    """Trains ``compressor.apply(params)`` with adam for ``epochs`` epochs.

    Args:
      params: the starting model params (a pure dict).
      compressor: what to train under (``jc.identity()`` for plain training).
      epochs: passes over the train set (0 returns the initialized state).
      lr: adam's learning rate, cosine-decayed to 0 over the run.
      seed: seeds the batch order.
      desc: the progress bar's label.
      loss: ``loss(apply) -> loss_fn(params, x, y)`` to train with instead of
        :meth:`loss_of` (cross-entropy), e.g. a distillation loss.
    """
    steps = max(1, epochs * self.steps_per_epoch)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))
    state = jc.train.init(params, optimizer, compressor)
    if epochs == 0:
      return Fit(state, 0.0, 0.0)
    x, y = self._inputs("train"), self.data.train_labels
    start = time.perf_counter()
    loss_fn = (loss or self.loss_of)(self.model.apply)
    step = jax.jit(jc.train.make_step(loss_fn, optimizer, compressor))
    step = step.lower(state, x[: self.batch_size], y[: self.batch_size]).compile()
    compile_seconds = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not self.progress):
      for xb, yb in batches(x, y, self.batch_size, rng):
        state, _ = step(state, xb, yb)
    jax.block_until_ready(state)
    return Fit(state, time.perf_counter() - start, compile_seconds)

  @functools.cached_property
  def _eval(self) -> Any:
    return jax.jit(self.model.apply)

  def accuracy(self, params: Any, predict: Any = None) -> float:
    """Test accuracy (fraction) of the model under ``params``.

    ``predict(params, x) -> logits`` replaces the model's jitted apply (the compressor's
    ``rewrite`` of it, or a served model that ignores ``params``).
    """
    logits = (predict or self._eval)(params, self._inputs("test"))
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == self.data.test_labels))
