"""Shared pieces of the quantization recipes: calibrated activation quantization."""

from jaxcompress import graph, quantization


def calibrated_activations(params, trainer, bits=8):
  """A ``forward`` wrapper quantizing every matmul/conv input at ranges calibrated on
  eight training batches of the float baseline (min-max), and those ranges."""
  spec = quantization.QuantSpec(bits)
  ranges = quantization.calibration.calibrate_activations(
    trainer.model.apply, params, trainer.calibration_batches(), spec
  )
  return (lambda apply: graph.rewrite(apply, quantization.activation_rule(spec, ranges))), ranges
