"""Post-training W8A8: int8 per-channel weights, int8 activations at min-max ranges
calibrated on eight training batches."""

from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  forward, _ = calibrated_activations(params, trainer)
  return FineTune(quantization.fake_quant(8, per_channel=True), epochs=0, forward=forward)


RECIPE = Recipe("ptq_w8a8", build, order=28, description="PTQ W8A8, calibrated activations")
