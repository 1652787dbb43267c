"""Shared piece of the quantization recipes: activations calibrated on training batches."""

from jaxcompress import quantization


def calibrated_activations(trainer, bits=8):
  """8-bit activations at every matmul/conv input, at ranges calibrated (min-max) on eight
  training batches with the stage's input weights in place."""
  return quantization.quantize_activations(bits, apply_fn=trainer.model.apply, batches=trainer.calibration_batches())
