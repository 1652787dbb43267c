"""Shared piece of the LSQ recipes: learned steps for weights and activations."""

import numpy as np

import jaxcompress as jc
from experiments.recipes.base import FineTune
from jaxcompress import quantization


def hidden(params) -> str:
  """``where`` for every matmul/conv input except the first layer's (the image), as in the
  papers: conv1 on the conv nets, fc1 on the MLPs (on LeNet-5 fc1 is a hidden layer)."""
  first = "conv1" if "conv1" in params else "fc1"
  return f"(?!{first}/).*kernel"


def lsq_wa(params, trainer, bits: int, epochs: int, lr: float) -> FineTune:
  """LSQ W{bits}A{bits}: every kernel at ``bits`` with a learned step, and the input of
  every layer but the first at ``bits`` unsigned with a learned step (initialized on
  the first training batches)."""
  example = (np.concatenate(trainer.calibration_batches(4)),)
  acts = quantization.lsq_activations(trainer.model.apply, bits, inputs=example, where=hidden(params))
  return FineTune(jc.chain(quantization.lsq(bits), acts), epochs=epochs, lr=lr)
