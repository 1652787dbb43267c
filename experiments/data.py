"""The handwritten digits of scikit-learn (8x8 images, bundled, no download).

A fixed, seeded, stratified train/test split, standardized with train statistics only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclasses.dataclass(frozen=True)
class Digits:
  """A standardized split of the digits data.

  Attributes:
    train_images, test_images: ``float32[N, 8, 8, 1]``.
    train_labels, test_labels: ``int32[N]`` in 0..9.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  @property
  def train_flat(self) -> np.ndarray:
    """``float32[N, 64]`` view of the train images."""
    return self.train_images.reshape(len(self.train_images), -1)

  @property
  def test_flat(self) -> np.ndarray:
    """``float32[N, 64]`` view of the test images."""
    return self.test_images.reshape(len(self.test_images), -1)


def load(*, test_size: float = 0.2, split_seed: int = 0, std_floor: float = 1.0) -> Digits:
  """Loads, splits and standardizes the digits.

  Args:
    test_size: fraction held out for testing (stratified by class).
    split_seed: ``random_state`` of the split; fixed so every run sees the same split.
    std_floor: lower bound on the per-pixel standard deviation, in raw pixel units
      (0..16). Border pixels are constant (std 0) or nearly so in the train set; the
      floor keeps them finite and stops a rare test value from exploding.

  Returns:
    A :class:`Digits`.
  """
  raw = load_digits()
  x = raw.images.astype(np.float32)
  y = raw.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=split_seed)
  mean = x_tr.mean(axis=0)
  std = np.maximum(x_tr.std(axis=0), std_floor)
  norm = lambda a: ((a - mean) / std)[..., None].astype(np.float32)
  return Digits(norm(x_tr), y_tr, norm(x_te), y_te)


def batches(
  x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of shuffled minibatches; the ragged tail is dropped so shapes are static.

  Args:
    x, y: inputs and labels with the same leading size.
    batch_size: examples per batch.
    rng: the generator that shuffles; pass the same one every epoch for a seeded,
      different order each epoch.
  """
  order = rng.permutation(len(x))
  for start in range(0, len(x) - batch_size + 1, batch_size):
    idx = order[start : start + batch_size]
    yield x[idx], y[idx]
