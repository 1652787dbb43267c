"""Knowledge distillation from a wide teacher (``_teacher.py``, 64-1200-1200-10 with dropout)
into LeNet-300-100 and a tiny 64-30-10 MLP, alone and with int4 QAT or 90% pruning, beside
controls that fine-tune on the same schedule with plain cross-entropy (the ``ce_*`` rows).

Every row fine-tunes the trained baseline (as every recipe here does), so the gain is what
a teacher adds to an already trained student. The distillation loss is
``jaxcompress.distill.loss``, trained through the ordinary ``jaxcompress.train`` step, so
``kd_int4`` and ``kd_prune90`` are distillation + compression in one step.

Hinton, Vinyals & Dean 2015, https://arxiv.org/abs/1503.02531 (KD, T = 4, soft weight 0.9);
Zhao et al. 2022, https://arxiv.org/abs/2203.08679 (DKD, the paper's α = 1, β = 8, T = 4);
Huang et al. 2022, https://arxiv.org/abs/2205.10536 (DIST, β = γ = 1, T = 1).
"""

import functools

import optax

import jaxcompress as jc
from experiments.recipes import _teacher
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import distill, pruning, quantization

STUDENTS = ("lenet300100", "mlp64")

CRITERIA = {
  "kd": functools.partial(distill.hinton_loss, temperature=4.0, soft_weight=0.9),
  "dkd": functools.partial(distill.dkd_loss, alpha=1.0, beta=8.0, temperature=4.0),
  "dist": functools.partial(distill.dist_loss, beta=1.0, gamma=1.0, temperature=1.0),
}

# (compressor factory, epochs, lr): the same schedule with and without a teacher
COMPRESSIONS = {
  "": (jc.identity, 30, 3e-4),
  "_int4": (lambda: quantization.fake_quant(4, per_channel=True), 15, 3e-4),
  "_prune90": (lambda: pruning.magnitude(0.9), 60, 3e-3),
}

ROWS = [("ce", ""), ("kd", ""), ("dkd", ""), ("dist", ""), ("ce", "_int4"), ("kd", "_int4")]
ROWS += [("ce", "_prune90"), ("kd", "_prune90")]


def _cross_entropy(apply):
  return lambda params, x, y: optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


def build(criterion, compression, params, trainer):
  del params
  factory, epochs, lr = COMPRESSIONS[compression]
  if criterion == "ce":
    loss = _cross_entropy
  else:
    teacher, _ = _teacher.trained(trainer)
    loss = functools.partial(
      distill.loss, teacher_apply=_teacher.eval_apply, teacher_params=teacher, criterion=CRITERIA[criterion]
    )
  return FineTune(factory(), epochs=trainer.epochs(epochs), lr=lr, loss=loss)


def _describe(criterion, compression):
  what = {"ce": "cross-entropy control", "kd": "Hinton KD", "dkd": "decoupled KD", "dist": "DIST"}[criterion]
  extra = {"": "", "_int4": " + int4 QAT", "_prune90": " + magnitude 90%"}[compression]
  return f"{what}{extra}, fine-tune from the wide teacher" if criterion != "ce" else f"{what}{extra}, same schedule"


RECIPES = tuple(
  Recipe(
    f"{criterion}{compression}",
    functools.partial(build, criterion, compression),
    models=STUDENTS,
    order=80 + i,
    description=_describe(criterion, compression),
    full_only=(criterion, compression) not in (("ce", ""), ("kd", "")),  # the default run: KD against its control
  )
  for i, (criterion, compression) in enumerate(ROWS)
)
