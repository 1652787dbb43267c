"""Incremental Network Quantization at 5 and 3 bits: powers of two or zero, frozen in stages.

Zhou et al. 2017, https://arxiv.org/abs/1702.03044: 50%, 75%, 87.5%, 100% of each
kernel quantized (largest magnitudes first) and frozen at the start of each quarter of
fine-tuning; the free weights retrain in between. Paper: 5-bit ResNet-18 68.98% vs
68.27% float top-1.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

# adam's peak rate by bit-width. At 3 bits a weight sits on {0, ±2^(n1-1), ±2^n1}, so freezing a portion
# moves it far and the free weights must move far to compensate: at 3e-4 (cosine-decayed over 440 steps) they
# cannot (lenet5 inq3 80.8%); one seed, lenet5 inq3: 3e-4 / 3e-3 / 1e-2: 80.8 / 91.1 / 93.3%. 5 bits keeps 3e-4.
LR = {5: 3e-4, 3: 1e-2}


def _build(bits):
  def build(params, trainer):
    del params
    epochs = trainer.epochs(20)
    n = epochs * trainer.steps_per_epoch
    steps = (0, n // 4, n // 2, (3 * n) // 4)
    return FineTune(quantization.inq(bits, steps=steps), epochs=epochs, lr=LR[bits])

  return build


RECIPES = [
  Recipe(f"inq{b}", _build(b), order=64, description=f"INQ {b}-bit power-of-two kernels, 4 stages", full_only=b == 3)
  for i, b in enumerate((5, 3))
]
