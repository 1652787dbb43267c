"""MobileNetV2-small with int8 QAT: 8-bit per-channel weights and 8-bit activations at
calibrated ranges, fine-tuned with integer forward convs (depthwise ones included), then
served through ``jaxcompress.quantization.serve``'s int8 x int8 -> int32 ops."""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  compressor = quantization.qat(8, 8, apply_fn=trainer.model.apply, batches=trainer.calibration_batches())
  return FineTune(
    compressor,
    epochs=trainer.epochs(10),
    lr=3e-4,
    serve=lambda apply, packed, cstate: quantization.serve(apply, packed, act_ranges=cstate.stages[1].data),
  )


RECIPE = Recipe(
  "qat_w8a8",
  build,
  models=("mobilenet_v2_small",),
  order=37,
  description="QAT W8A8 (int8 forward), served int8",
  full_only=True,
)
