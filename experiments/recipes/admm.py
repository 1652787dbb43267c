"""ADMM low-bit training: ternary and 3-bit power-of-two kernels (W, G = Proj(W + U), U).

Leng et al. 2018, https://arxiv.org/abs/1707.09870: the loss at W plus rho/2 ||W - G +
U||^2 trains W; every half epoch G and U are updated; the deployed kernels are G (what is
packed and scored: ``project_from`` the last step, so ``apply`` shows G too).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

RHO = 8.0  # of 1, 8, 32 on one seed: lenet5 ternary 15.8%, 53.6%, 45.8%
VARIANTS = {"admm_ternary": ("ternary", 1, 63), "admm_pot3": ("power_of_two", 3, 64)}


def _build(kind, levels):
  def build(params, trainer):
    del params
    epochs = trainer.epochs(20)
    n = epochs * trainer.steps_per_epoch
    c = quantization.admm(kind, levels=levels, rho=RHO, frequency=max(1, trainer.steps_per_epoch // 2), project_from=n)
    return FineTune(c, epochs=epochs, lr=3e-4)

  return build


RECIPES = [
  Recipe(name, _build(kind, levels), order=order, description=f"ADMM {kind} kernels (levels={levels})", full_only=True)
  for name, (kind, levels, order) in VARIANTS.items()
]
