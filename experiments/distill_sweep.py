"""Picks the distillation rows' temperature and soft weight on a validation split.

Run ``python -m experiments.distill_sweep [--models mlp64,lenet300100] [--seeds 2]
[--temperatures 1,2.5,4,8,20] [--soft-weights 0.5,0.9,0.99] [--epochs N]``. The digits' *train* split is
split again (stratified, 20% held out, fixed seed); the wide teacher of
``experiments/recipes/_teacher.py`` trains on the rest, and each student trains from its
initialization on the same schedule as its baseline (``experiments.digits.BASELINE``) with
plain cross-entropy (the control) and with Hinton KD at every (T, soft weight) of the grid.
It prints validation accuracy averaged over seeds; the test split is never read. The
distillation recipe (``experiments/recipes/distill.py``) uses the best cell of this table.

Hinton, Vinyals & Dean 2015, https://arxiv.org/abs/1503.02531: T = 20 for the MNIST
1200-1200 → 800-800 student, "temperatures in the range 2.5 to 4" for 30-unit students,
and "a considerably lower weight" on the hard term.
"""

from __future__ import annotations

import argparse
import functools
import itertools

import numpy as np
from sklearn.model_selection import train_test_split

import jaxcompress as jc
from experiments import data, models
from experiments.recipes import _teacher
from experiments.training import Trainer
from jaxcompress import distill

BASELINE = {"lenet300100": (50, 1e-3), "mlp64": (50, 3e-3)}  # experiments.digits.BASELINE


def validation_split(digits: data.Digits, *, fraction: float = 0.2, seed: int = 0) -> data.Digits:
  """The train split re-split into train and validation (the validation part as ``test_*``)."""
  idx = np.arange(len(digits.train_labels))
  tr, va = train_test_split(idx, test_size=fraction, stratify=digits.train_labels, random_state=seed)
  x, y = digits.train_images, digits.train_labels
  return data.Digits(x[tr], y[tr], x[va], y[va])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mlp64,lenet300100")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--temperatures", default="1,2.5,4,8,20")
  parser.add_argument("--soft-weights", default="0.5,0.9,0.99")
  parser.add_argument("--epochs", type=int, default=None, help="every run's epochs (default: the baseline's)")
  args = parser.parse_args(argv)
  split = validation_split(data.load())
  temperatures = [float(t) for t in args.temperatures.split(",")]
  weights = [float(w) for w in args.soft_weights.split(",")]
  teacher = None
  for name in args.models.split(","):
    epochs, lr = BASELINE[name]
    epochs = args.epochs or epochs
    results: dict[str, list[float]] = {}
    for seed in range(args.seeds):
      _, fn, init = models.build(name, seed)
      trainer = Trainer(fn, split, progress=False)
      if teacher is None:
        teacher, val = _teacher.trained(Trainer(fn, split, progress=False))
        print(f"teacher validation accuracy {val:.2%}")
      fit = trainer.fit(init, jc.identity(), epochs=epochs, lr=lr, seed=seed + 1000)
      results.setdefault("ce", []).append(trainer.accuracy(fit.state.params))
      for t, w in itertools.product(temperatures, weights):
        criterion = functools.partial(distill.hinton_loss, temperature=t, soft_weight=w)
        loss = functools.partial(
          distill.loss, teacher_apply=_teacher.eval_apply, teacher_params=teacher, criterion=criterion
        )
        fit = trainer.fit(init, jc.identity(), epochs=epochs, lr=lr, seed=seed + 1000, loss=loss)
        results.setdefault(f"T={t:g} w={w:g}", []).append(trainer.accuracy(fit.state.params))
      print(f"{name} seed {seed} done", flush=True)
    print(f"\n{name}: validation accuracy (mean over {args.seeds} seeds, {len(split.test_labels)} examples)")
    for key, accs in sorted(results.items(), key=lambda kv: -np.mean(kv[1])):
      print(f"  {key:16s} {np.mean(accs):.2%}  ({', '.join(f'{a:.2%}' for a in accs)})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
