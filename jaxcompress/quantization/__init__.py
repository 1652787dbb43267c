"""Quantization: represent weights, activations and gradients with fewer bits."""

from jaxcompress.quantization import calibration, granularity, uniform
from jaxcompress.quantization.activation_quant import activation_rule
from jaxcompress.quantization.backward import quantized_backward, stochastic_quantize
from jaxcompress.quantization.fake_quant import FakeQuantState, fake_quant, weight_spec
from jaxcompress.quantization.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress.quantization.ptq import QuantizedModel, ptq
from jaxcompress.quantization.serve import serve
from jaxcompress.quantization.spec import QuantSpec
from jaxcompress.quantization.uniform import cast_float8, qmax, quantize, symmetric_scale

__all__ = [
  "FakeQuantState",
  "Granularity",
  "QuantSpec",
  "QuantizedModel",
  "activation_rule",
  "calibration",
  "cast_float8",
  "fake_quant",
  "granularity",
  "per_channel",
  "per_group",
  "per_tensor",
  "ptq",
  "qmax",
  "quantize",
  "quantized_backward",
  "serve",
  "stochastic_quantize",
  "symmetric_scale",
  "uniform",
  "weight_spec",
]
