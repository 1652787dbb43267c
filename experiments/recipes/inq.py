"""Incremental Network Quantization at 5 and 3 bits: powers of two or zero, frozen in stages.

Zhou et al. 2017, https://arxiv.org/abs/1702.03044: 50%, 75%, 87.5%, 100% of each
kernel quantized (largest magnitudes first) and frozen at the start of each quarter of
fine-tuning; the free weights retrain in between. Paper: 5-bit ResNet-18 68.98% vs
68.27% float top-1.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def _build(bits):
  def build(params, trainer):
    del params
    epochs = trainer.epochs(20)
    n = epochs * trainer.steps_per_epoch
    steps = (0, n // 4, n // 2, (3 * n) // 4)
    return FineTune(quantization.inq(bits, steps=steps), epochs=epochs, lr=3e-4)

  return build


RECIPES = [
  Recipe(f"inq{b}", _build(b), order=64, description=f"INQ {b}-bit power-of-two kernels, 4 stages", full_only=b == 3)
  for i, b in enumerate((5, 3))
]
