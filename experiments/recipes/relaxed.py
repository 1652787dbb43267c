"""Relaxed Quantization W4A4 and W2A2: a learned grid per kernel and per hidden activation,
trained through the concrete relaxation of the noisy categorical, rounded at the end.

Louizos et al. 2019, https://arxiv.org/abs/1810.01875. The temperature anneals linearly
from 2 to 0.5 over the fine-tune; the deployed network rounds to the nearest grid point.
"""

import functools

import numpy as np

import jaxcompress as jc
from experiments.recipes._lsq import hidden
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

# the grid that rounds the trained weights (and the example activations) with the least squared error; the range
# init puts W2's one positive point at max|w|, so most weights round to 0 (LeNet-5: 19% rounded at init, trained
# row 25%; 'mse': 81% rounded at init)
SCALE_INIT = "mse"
# epochs: the rows were 20 (W4A4) and 30 (W2A2) epochs; at 10 and 20 (one seed, measured under load, with the grid
# above) W4A4 98.06 / 95.00% (lenet300100 / lenet5; at 20 epochs 98.06 / 95.56) and W2A2 97.78 / 95.28% (at 30:
# 97.22 / 92.22), for two thirds and half of the training time: the relaxed step is --full's most costly
# the noise's starting scale: the paper's sigma = alpha / 3 at W4A4; at W2A2 the logistic noise of a third of a bin
# on every weight and activation makes LeNet-5's relaxed network worse than chance from its first step (loss 2.9 >
# ln 10 on seed 2) and it never recovers on 2 of 3 seeds (27.5%, 10.0%), so W2A2 starts at a tenth of a bin
# (seed 2: loss 1.5 at the first step, 0.1 after 5 epochs); sigma is learned from there either way
VARIANTS = {  # bits, epochs, lr, order, sigma_ratio
  "relaxed_w4a4": (4, 10, 3e-4, 68, 1 / 3),
  "relaxed_w2a2": (2, 20, 1e-3, 69, 0.1),
}


def build(name, params, trainer):
  bits, epochs, lr, _, sigma_ratio = VARIANTS[name]
  epochs = trainer.epochs(epochs)
  steps = max(1, epochs * trainer.steps_per_epoch)  # the run's steps: deterministic rounding from here on
  example = (np.concatenate(trainer.calibration_batches(4)),)
  weights = quantization.relaxed_quantization(bits, total_steps=steps, scale_init=SCALE_INIT, sigma_ratio=sigma_ratio)
  acts = quantization.relaxed_activations(
    trainer.model.apply,
    bits,
    inputs=example,
    total_steps=steps,
    where=hidden(params),
    scale_init=SCALE_INIT,
    sigma_ratio=sigma_ratio,
  )
  # activations first: their grids start from the float network's activations (after the weight stage, they
  # would see its relaxed sample, a noisy network: LeNet-5 W2's collapsed to a third of the real ranges)
  return FineTune(jc.chain(acts, weights), epochs=epochs, lr=lr)


RECIPES = tuple(
  # full_only: the concrete sample draws 2^bits Gumbel variables per weight and activation each step
  Recipe(
    name,
    functools.partial(build, name),
    order=order,
    full_only=True,
    description=f"relaxed quantization W{bits}A{bits}, fine-tune",
  )
  for name, (bits, _, _, order, _) in VARIANTS.items()
)
