"""Parameter sharing on LeNet-300-100, each started from the trained baseline and fine-tuned.

- ``hashed_8`` / ``hashed_64``: HashedNets at compression factors 1/8 and 1/64 on every
  kernel (least-squares init from the trained kernel, sign hash on). Chen et al. 2015,
  https://arxiv.org/abs/1504.04788 (the paper trains from scratch).
- ``circulant``: block-circulant ``fc1`` (64 x 300, blocks of 4: the largest that divides
  both) and ``fc2`` (300 x 100, blocks of 50), nearest block-circulant init; the output
  layer stays dense. Cheng et al. 2015, https://arxiv.org/abs/1502.03436; Ding et al.
  2017 (CirCNN), https://arxiv.org/abs/1708.08917.
- ``toeplitz``: Toeplitz ``fc1`` and ``fc2`` (nearest Toeplitz init); the output layer
  stays dense. Sindhwani, Sainath & Kumar 2015, https://arxiv.org/abs/1510.01722.
- ``ldr4``: the same paper's Toeplitz-like family at displacement rank 4 on ``fc1`` and
  ``fc2`` (each the top-left block of a 300 x 300 ``sum_k Z_1(g_k) Z_{-1}(h_k)``, 2400
  numbers), started from the generators nearest in displacement, fine-tuned through the
  FFT products (``fft=True``: 2x faster here than through the rebuilt kernel, whose
  gathers' gradients are scatters) and evaluated through the FFT products of the packed
  generators (``sharing.serve``; FLOPs are the dense view's: ``graph.flops`` counts no
  FFT).
"""

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import sharing

HIDDEN = r"fc[12]/kernel"


def _hashed(ratio):
  def build(params, trainer):
    del params
    return FineTune(sharing.hashed(ratio), epochs=trainer.epochs(30), lr=1e-3)

  return build


def _circulant(params, trainer):
  del params
  c = jc.chain(sharing.circulant(4, where="fc1/kernel"), sharing.circulant(50, where="fc2/kernel"))
  return FineTune(c, epochs=trainer.epochs(30), lr=1e-3)


def _toeplitz(params, trainer):
  del params
  return FineTune(sharing.toeplitz(where=HIDDEN), epochs=trainer.epochs(30), lr=1e-3)


def _ldr(params, trainer):
  del params
  serve = lambda apply, packed, cstate: sharing.serve(apply, packed)
  return FineTune(sharing.ldr(4, fft=True, where=HIDDEN), epochs=trainer.epochs(30), lr=1e-3, serve=serve)


MLP = ("lenet300100",)
RECIPES = (
  Recipe("hashed_8", _hashed(1 / 8), models=MLP, order=70, description="HashedNets 1/8, fine-tune"),
  Recipe("hashed_64", _hashed(1 / 64), models=MLP, order=71, description="HashedNets 1/64, fine-tune", full_only=True),
  Recipe("circulant", _circulant, models=MLP, order=72, description="block-circulant fc1 (b=4), fc2 (b=50)"),
  Recipe("toeplitz", _toeplitz, models=MLP, order=73, description="Toeplitz fc1, fc2, fine-tune"),
  Recipe(
    "ldr4",
    _ldr,
    models=MLP,
    order=74,
    description="Toeplitz-like rank 4 fc1, fc2, FFT fine-tune and serving",
  ),
)
