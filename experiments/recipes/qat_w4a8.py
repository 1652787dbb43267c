"""QAT W4A8: 4-bit per-channel weights (fake quantization, straight-through) and
8-bit activations at calibrated ranges, fine-tuned."""

from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  forward, _ = calibrated_activations(params, trainer)
  return FineTune(quantization.fake_quant(4, per_channel=True), epochs=trainer.epochs(15), lr=3e-4, forward=forward)


RECIPE = Recipe("qat_w4a8", build, order=36, description="QAT W4A8")
