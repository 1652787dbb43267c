"""Quantization: represent weights (and later activations and gradients) with fewer bits."""

from jaxcompress.quantization.fake_quant import FakeQuantState, fake_quant
from jaxcompress.quantization.uniform import qmax, quantize, symmetric_scale

__all__ = ["FakeQuantState", "fake_quant", "qmax", "quantize", "symmetric_scale"]
