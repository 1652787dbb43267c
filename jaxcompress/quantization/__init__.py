"""Quantization: represent weights, activations and gradients with fewer bits."""

from jaxcompress.quantization import calibration, gradient_compression, granularity, uniform
from jaxcompress.quantization._activation_quant import activation_rule
from jaxcompress.quantization._activations import SiteState, site_compressor, site_quantizer
from jaxcompress.quantization._admm import admm
from jaxcompress.quantization._awq import awq, awq_scales
from jaxcompress.quantization._backward import quantized_backward, stochastic_quantize, value_aware_backward
from jaxcompress.quantization._batchnorm import (
  BatchNormFold,
  FoldState,
  batchnorm_fold,
  batchnorm_statistics,
  find_batchnorms,
  fold_batchnorm,
  identity_variance,
  strip_batchnorm,
)
from jaxcompress.quantization._binary import (
  binary_activation,
  binary_activation_rule,
  binary_activations,
  binary_connect,
  xnor_net,
)
from jaxcompress.quantization._elq import elq
from jaxcompress.quantization._fake_quant import fake_quant, weight_spec
from jaxcompress.quantization._gptq import GPTQResult, gptq, gptq_layer
from jaxcompress.quantization._inq import inq
from jaxcompress.quantization._kmeans import kmeans
from jaxcompress.quantization._lsq import lsq, lsq_activations
from jaxcompress.quantization._mixed import (
  allocate_bits,
  choose_bits,
  hawq_sensitivity,
  hessian_trace,
  leaf_bytes,
  loss_sensitivity,
  quantization_perturbation,
)
from jaxcompress.quantization._pact import pact, pact_activations
from jaxcompress.quantization._power_of_two import power_of_two
from jaxcompress.quantization._ptq import QuantizedModel, ptq
from jaxcompress.quantization._qat import qat, quantize_activations
from jaxcompress.quantization._serve import serve
from jaxcompress.quantization._smoothing import SmoothedModel, scaled_apply
from jaxcompress.quantization._smoothquant import smooth, smoothquant, smoothquant_scales
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization._ternary import ttq, twn
from jaxcompress.quantization._value_aware import value_aware
from jaxcompress.quantization.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress.quantization.uniform import cast_float8, qmax, quantize, symmetric_scale

__all__ = [
  "BatchNormFold",
  "FoldState",
  "GPTQResult",
  "Granularity",
  "QuantSpec",
  "QuantizedModel",
  "SiteState",
  "SmoothedModel",
  "activation_rule",
  "admm",
  "allocate_bits",
  "awq",
  "awq_scales",
  "batchnorm_fold",
  "batchnorm_statistics",
  "binary_activation",
  "binary_activation_rule",
  "binary_activations",
  "binary_connect",
  "calibration",
  "cast_float8",
  "choose_bits",
  "elq",
  "fake_quant",
  "find_batchnorms",
  "fold_batchnorm",
  "gptq",
  "gptq_layer",
  "gradient_compression",
  "granularity",
  "hawq_sensitivity",
  "hessian_trace",
  "identity_variance",
  "inq",
  "kmeans",
  "leaf_bytes",
  "loss_sensitivity",
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
  "quantization_perturbation",
  "quantize",
  "quantize_activations",
  "quantized_backward",
  "scaled_apply",
  "serve",
  "site_compressor",
  "site_quantizer",
  "smooth",
  "smoothquant",
  "smoothquant_scales",
  "stochastic_quantize",
  "strip_batchnorm",
  "symmetric_scale",
  "ttq",
  "twn",
  "uniform",
  "value_aware",
  "value_aware_backward",
  "weight_spec",
  "xnor_net",
]
