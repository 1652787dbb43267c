"""QAT W2A8: 2-bit per-channel weights (fake quantization, straight-through) and
8-bit activations at calibrated ranges, fine-tuned."""

from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  forward, _ = calibrated_activations(params, trainer)
  return FineTune(quantization.fake_quant(2, per_channel=True), epochs=trainer.epochs(15), lr=3e-4, forward=forward)


RECIPE = Recipe("qat_w2a8", build, order=38, description="QAT W2A8")
