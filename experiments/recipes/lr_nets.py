"""LR-Nets ternary: every kernel a learned categorical over s * {-1, 0, 1} (initialized
from the trained float kernel), trained through the local reparameterization trick and
deployed at the most probable values.

Shayer, Levi & Fetaya 2018, https://arxiv.org/abs/1710.07739.
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

# adam's peak rate on the logits: the deployed network takes each weight's most probable value, so the
# distributions must become peaked during the fine-tune; one seed, lenet5: 3e-3 / 1e-2: 81.9 / 86.9% (the mean
# weights' network: 91.4 / 92.2%; the average largest probability of a weight 0.75-0.80 / 0.74-0.86).
LR = 1e-2
# epochs: the sampled network's loss is still falling at 20 (lenet5, one seed: train loss under the local
# reparameterization 1.07 at 20 epochs, 0.58 at 60, 0.38 at 150; the deployed most probable values 86.9 / 92.2 /
# 93.9%, the layers' mean largest probability rising with it, conv1 0.86 -> 0.97): the method needs the long
# schedule the paper trains with (hundreds of epochs), and its step is cheap (150 epochs: ~20 s measured under
# load; the row's cost is its compile). 3 seeds, lenet5 / lenet300100: 20 epochs 86.76 ± 0.32 / 97.13 ± 0.70%,
# 60: 91.20 ± 1.53 / 97.13 ± 0.89%, 150: 94.54 ± 1.63 / 96.48 ± 0.98% (chosen by the train loss, not these)
EPOCHS = 150


def build(params, trainer):
  del params
  epochs = trainer.epochs(EPOCHS)
  c = quantization.lr_nets(total_steps=max(1, epochs * trainer.steps_per_epoch), logit_decay=1e-6)
  return FineTune(c, epochs=epochs, lr=LR)


RECIPE = Recipe(
  "lr_nets_ternary", build, order=60, description="LR-Nets ternary kernels, local reparameterization", full_only=True
)
