"""Quantization: represent weights, activations and gradients with fewer bits."""

from jaxcompress.quantization import calibration, gradient_compression, granularity, uniform
from jaxcompress.quantization._activation_quant import activation_rule
from jaxcompress.quantization._activations import SiteState, activation_ranges, site_compressor, site_quantizer
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
from jaxcompress.quantization._dorefa import (
  dorefa,
  dorefa_activation,
  dorefa_activations,
  dorefa_weight,
  progressive_stages,
)
from jaxcompress.quantization._elq import elq
from jaxcompress.quantization._fake_quant import fake_quant, weight_spec
from jaxcompress.quantization._gptq import GPTQResult, gptq, gptq_layer
from jaxcompress.quantization._guided import GuidedLoss, guided, guided_loss, mutual_distance
from jaxcompress.quantization._hwgq import half_normal_levels, hwgq_activations, hwgq_quantize, positive_rms
from jaxcompress.quantization._inq import inq
from jaxcompress.quantization._kmeans import kmeans
from jaxcompress.quantization._lr_nets import lr_nets, ternary_init_logits, ternary_moments, ternary_probabilities
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
from jaxcompress.quantization._observer import OutlierRangeWarning
from jaxcompress.quantization._pact import pact, pact_activations
from jaxcompress.quantization._power_of_two import power_of_two
from jaxcompress.quantization._ptq import QuantizedModel, ptq
from jaxcompress.quantization._qat import qat, quantize_activations
from jaxcompress.quantization._relaxed import (
  relaxed_activations,
  relaxed_log_probabilities,
  relaxed_quantization,
  relaxed_round,
  relaxed_sample,
)
from jaxcompress.quantization._serve import serve, serve_file, serving_extras
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
  "GuidedLoss",
  "OutlierRangeWarning",
  "QuantSpec",
  "QuantizedModel",
  "SiteState",
  "SmoothedModel",
  "activation_ranges",
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
  "dorefa",
  "dorefa_activation",
  "dorefa_activations",
  "dorefa_weight",
  "elq",
  "fake_quant",
  "find_batchnorms",
  "fold_batchnorm",
  "gptq",
  "gptq_layer",
  "gradient_compression",
  "granularity",
  "guided",
  "guided_loss",
  "half_normal_levels",
  "hawq_sensitivity",
  "hessian_trace",
  "hwgq_activations",
  "hwgq_quantize",
  "identity_variance",
  "inq",
  "kmeans",
  "leaf_bytes",
  "loss_sensitivity",
  "lr_nets",
  "lsq",
  "lsq_activations",
  "mutual_distance",
  "pact",
  "pact_activations",
  "per_channel",
  "per_group",
  "per_tensor",
  "positive_rms",
  "power_of_two",
  "progressive_stages",
  "ptq",
  "qat",
  "qmax",
  "quantization_perturbation",
  "quantize",
  "quantize_activations",
  "quantized_backward",
  "relaxed_activations",
  "relaxed_log_probabilities",
  "relaxed_quantization",
  "relaxed_round",
  "relaxed_sample",
  "scaled_apply",
  "serve",
  "serve_file",
  "serving_extras",
  "site_compressor",
  "site_quantizer",
  "smooth",
  "smoothquant",
  "smoothquant_scales",
  "stochastic_quantize",
  "strip_batchnorm",
  "symmetric_scale",
  "ternary_init_logits",
  "ternary_moments",
  "ternary_probabilities",
  "ttq",
  "twn",
  "uniform",
  "value_aware",
  "value_aware_backward",
  "weight_spec",
  "xnor_net",
]
