"""PTQ W8A8: int8 per-channel weights and int8 activations at calibrated ranges, no training."""

import jaxcompress as jc
from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(jc.chain(quantization.fake_quant(8, per_channel=True), calibrated_activations(trainer)), epochs=0)


RECIPE = Recipe("ptq_w8a8", build, order=28, description="PTQ W8A8, calibrated activations")
