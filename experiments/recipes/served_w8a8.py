"""PTQ W8A8 served through real integer matmuls (int8 x int8 -> int32, then rescale):
``jaxcompress.quantization.serve`` with the ranges the activation stage calibrated."""

import jaxcompress as jc
from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(
    jc.chain(quantization.fake_quant(8, per_channel=True), calibrated_activations(trainer)),
    epochs=0,
    serve=lambda apply, packed, cstate: quantization.serve(apply, packed, act_ranges=cstate.stages[1].data),
  )


RECIPE = Recipe("served_w8a8", build, order=29, description="W8A8 served with int8 matmuls")
