"""ADMM low-bit training: ternary and 3-bit power-of-two kernels (W, G = Proj(W + U), U).

Leng et al. 2018, https://arxiv.org/abs/1707.09870: the loss plus rho/2 ||W - G + U||^2
trains W; every epoch G and U are updated; the deployed kernels are G (what is packed
and scored).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

VARIANTS = {"admm_ternary": ("ternary", 1, 63), "admm_pot3": ("power_of_two", 3, 64)}


def _build(kind, levels):
  def build(params, trainer):
    del params
    c = quantization.admm(kind, levels=levels, rho=5e-2, frequency=trainer.steps_per_epoch)
    return FineTune(c, epochs=trainer.epochs(20), lr=3e-4)

  return build


RECIPES = [
  Recipe(name, _build(kind, levels), order=order, description=f"ADMM {kind} kernels (levels={levels})")
  for name, (kind, levels, order) in VARIANTS.items()
]
