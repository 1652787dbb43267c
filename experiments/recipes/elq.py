"""ELQ ternary: incremental ternarization choosing the weights whose quantization perturbs
the loss (first order) and the weights least (the method as implemented; see
``jaxcompress.quantization.elq`` for what of the paper is verified).

Zhou, Yao, Wang & Chen 2018, CVPR.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

# adam's peak rate: each stage's ternarized portion moves far (a ternary step is ~alpha/2) and the free weights
# must compensate; one seed, lenet5: 3e-4 / 3e-3 / 1e-2: 78.3 / 89.4 / 92.2%.
LR = 1e-2


def build(params, trainer):
  del params
  epochs = trainer.epochs(20)
  n = epochs * trainer.steps_per_epoch
  steps = (1, n // 4, n // 2, (3 * n) // 4)  # from step 1: the first portion is chosen with a gradient
  return FineTune(quantization.elq("ternary", steps=steps), epochs=epochs, lr=LR)


RECIPE = Recipe("elq_ternary", build, order=63, description="ELQ ternary kernels, 4 loss-aware stages", full_only=True)
