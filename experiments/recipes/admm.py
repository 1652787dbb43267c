"""ADMM low-bit training: ternary and 3-bit power-of-two kernels (W, G = Proj(W + U), U).

Leng et al. 2018, https://arxiv.org/abs/1707.09870: the loss at W plus rho/2 ||W - G +
U||^2 trains W; every half epoch G and U are updated; the deployed kernels are G (what is
packed and scored: ``project_from`` the last step, so ``apply`` shows G too).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

RHO = 8.0
# adam's peak rate: every G-step moves the target G - U, and W must reach it for ADMM to converge (W = G);
# at 3e-4 (cosine-decayed over 440 steps) W moves at most ~0.07 in all, less than half a ternary step of
# these kernels, so the dual grows without W following and the final G = Proj(W + U) drifts below the
# plain projection (lenet5 ternary: 53.6% vs 69.4% for Proj(W) with no training). One seed, lenet5 ternary,
# G's accuracy: lr 3e-4 / 3e-3 / 1e-2 / 3e-2 at rho 8: 53.6 / 85.3 / 90.3 / 90.6%; at lr 1e-2, rho 0.1 /
# 0.3 / 1 / 8 / 32: 84.4 (not converged) / 91.1 / 90.6 / 90.3 / 89.4%; 40 epochs: 90.8%.
LR = 1e-2
VARIANTS = {"admm_ternary": ("ternary", 1, 63), "admm_pot3": ("power_of_two", 3, 64)}


def _build(kind, levels):
  def build(params, trainer):
    del params
    epochs = trainer.epochs(20)
    n = epochs * trainer.steps_per_epoch
    c = quantization.admm(kind, levels=levels, rho=RHO, frequency=max(1, trainer.steps_per_epoch // 2), project_from=n)
    return FineTune(c, epochs=epochs, lr=LR)

  return build


RECIPES = [
  Recipe(name, _build(kind, levels), order=order, description=f"ADMM {kind} kernels (levels={levels})", full_only=True)
  for name, (kind, levels, order) in VARIANTS.items()
]
