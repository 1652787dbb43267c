"""Quantization: represent weights, activations and gradients with fewer bits."""

from jaxcompress.quantization import calibration, gradient_compression, granularity, uniform
from jaxcompress.quantization.activation_quant import activation_rule
from jaxcompress.quantization.activations import ActivationQuantizer, joint, joint_apply, with_activations
from jaxcompress.quantization.backward import quantized_backward, stochastic_quantize
from jaxcompress.quantization.binary import binary_activation, binary_activation_rule, binary_connect, xnor_net
from jaxcompress.quantization.fake_quant import FakeQuantState, fake_quant, weight_spec
from jaxcompress.quantization.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress.quantization.kmeans import kmeans
from jaxcompress.quantization.lsq import lsq, lsq_activations
from jaxcompress.quantization.pact import pact, pact_activations
from jaxcompress.quantization.power_of_two import power_of_two
from jaxcompress.quantization.ptq import QuantizedModel, ptq
from jaxcompress.quantization.qat import QAT, qat
from jaxcompress.quantization.serve import serve
from jaxcompress.quantization.spec import QuantSpec
from jaxcompress.quantization.ternary import ttq, twn
from jaxcompress.quantization.uniform import cast_float8, qmax, quantize, symmetric_scale

__all__ = [
  "QAT",
  "ActivationQuantizer",
  "FakeQuantState",
  "Granularity",
  "QuantSpec",
  "QuantizedModel",
  "activation_rule",
  "binary_activation",
  "binary_activation_rule",
  "binary_connect",
  "calibration",
  "cast_float8",
  "fake_quant",
  "gradient_compression",
  "granularity",
  "joint",
  "joint_apply",
  "kmeans",
  "lsq",
  "lsq_activations",
  "pact",
  "pact_activations",
  "per_channel",
  "per_group",
  "per_tensor",
  "power_of_two",
  "ptq",
  "qat",
  "qmax",
  "quantize",
  "quantized_backward",
  "serve",
  "stochastic_quantize",
  "symmetric_scale",
  "ttq",
  "twn",
  "uniform",
  "weight_spec",
  "with_activations",
  "xnor_net",
]
