"""Mixed precision chosen by HAWQ-v2 under the bytes of uniform bit-widths, fine-tuned like int4
QAT, beside the uniform rows at the same bytes.

Each layer's sensitivity is its average Hessian trace (Hutchinson's estimator, 64 Rademacher
samples on 512 training examples) times ``‖Q_b(W) - W‖²``; the bits per layer minimize the
sum under the packed bytes of uniform ``b``-bit per-channel weights (codes and scales), an
exact knapsack (``jaxcompress.quantization.allocate_bits``). ``mixed_loss_*`` uses the
measured-loss criterion instead (the loss increase when only that layer is quantized).

Dong et al. 2020, https://arxiv.org/abs/1911.03852.
"""

import jax

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

CANDIDATES = (2, 3, 4, 5, 6, 8)
EPOCHS, LR = 15, 3e-4  # as the int4 row


def _batch(trainer, count=512):
  x = trainer._inputs("train")[:count]
  return x, trainer.data.train_labels[:count]


def uniform(bits):
  def build(params, trainer):
    del params
    return FineTune(quantization.fake_quant(bits, per_channel=True), epochs=trainer.epochs(EPOCHS), lr=LR)

  return build


def mixed(budget_bits, criterion="hessian"):
  def build(params, trainer):
    sizes = quantization.leaf_bytes(params, CANDIDATES)
    if budget_bits in CANDIDATES:
      budget = sum(s[budget_bits] for s in sizes.values())
    else:  # between two bit-widths: the mean of their bytes
      lo, hi = int(budget_bits), int(budget_bits) + 1
      budget = sum((s[lo] + s[hi]) // 2 for s in sizes.values())
    bits = quantization.choose_bits(
      trainer.loss_of(trainer.model.apply),
      params,
      _batch(trainer),
      budget,
      candidates=CANDIDATES,
      criterion=criterion,
      key=jax.random.PRNGKey(0),
      samples=64,
    )
    return FineTune(quantization.fake_quant(bits, per_channel=True), epochs=trainer.epochs(EPOCHS), lr=LR)

  return build


def _label(b):
  return f"{b:g}bit"


RECIPES = (
  Recipe("int3", uniform(3), order=41, description="fake-quant int3 per-channel, QAT"),
  Recipe("int2", uniform(2), order=42, description="fake-quant int2 (ternary) per-channel, QAT", full_only=True),
  Recipe("mixed_hawq_3bit", mixed(3), order=43, description="HAWQ-v2 mixed precision at uniform int3 bytes, QAT"),
  Recipe("mixed_hawq_4bit", mixed(4), order=44, description="HAWQ-v2 mixed precision at uniform int4 bytes, QAT"),
  *(
    Recipe(f"mixed_hawq_{_label(b)}", mixed(b), order=45, description="HAWQ-v2 sweep point", full_only=True)
    for b in (2.5, 3.5, 5)
  ),
  *(
    Recipe(
      f"mixed_loss_{_label(b)}",
      mixed(b, "loss"),
      order=46,
      description="measured-loss mixed precision, QAT",
      full_only=True,
    )
    for b in (3, 4)
  ),
)
