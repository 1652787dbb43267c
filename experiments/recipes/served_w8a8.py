"""PTQ W8A8 served through real integer matmuls (int8 x int8 -> int32, then rescale):
``jaxcompress.quantization.serve``."""

from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  forward, ranges = calibrated_activations(params, trainer)
  return FineTune(
    quantization.fake_quant(8, per_channel=True),
    epochs=0,
    forward=forward,
    serve=lambda apply, packed: quantization.serve(apply, packed, act_ranges=ranges),
  )


RECIPE = Recipe("served_w8a8", build, order=29, description="W8A8 served with int8 matmuls")
