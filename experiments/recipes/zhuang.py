"""Zhuang et al. 2018's progressive quantization, W4A4 and W2A2, with and without guided
training: DoReFa-style kernels and hidden activations whose bit-width steps down
32 -> 16 -> 8 -> 4 (-> 2) over equal stages of the fine-tune, each stage starting from the
last; the guided rows also train a full-precision guide jointly, with the mutual loss
(beta / 2) * ||z_low - z_guide||^2 on the logits.

Zhuang, Shen, Tan, Liu & Reid 2018, https://arxiv.org/abs/1711.00205.
"""

import functools

import jaxcompress as jc
from experiments.recipes._lsq import hidden
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

BETA = 0.1  # the mutual loss's weight (the paper does not fix one for every network)
VARIANTS = {  # name: (bit-widths of the stages, epochs per stage, guided, order, full_only)
  "zhuang_pq_w4a4": ((32, 16, 8, 4), 5, False, 63, False),
  "zhuang_pq_w2a2": ((32, 16, 8, 4, 2), 6, False, 64, False),
  "zhuang_pq_guided_w4a4": ((32, 16, 8, 4), 5, True, 65, True),
  "zhuang_pq_guided_w2a2": ((32, 16, 8, 4, 2), 6, True, 65, True),
}


def build(name, params, trainer):
  bits, per_stage, guide, _, _ = VARIANTS[name]
  per_stage = trainer.epochs(per_stage)
  stages = quantization.progressive_stages(per_stage * trainer.steps_per_epoch, bits)
  c = jc.chain(quantization.dorefa(stages), quantization.dorefa_activations(stages, where=hidden(params)))
  epochs = per_stage * len(bits)
  if not guide:
    return FineTune(c, epochs=epochs, lr=1e-3)
  return FineTune(
    quantization.guided(c), epochs=epochs, lr=1e-3, loss=lambda apply: quantization.guided_loss(apply, beta=BETA)
  )


RECIPES = tuple(
  Recipe(
    name,
    functools.partial(build, name),
    order=order,
    full_only=True,  # 30-60 s a row on 2 cores; issue 14's rows, run with --full
    description=f"Zhuang progressive {'-'.join(map(str, bits))} bits{', guided' if guide else ''}, fine-tune",
  )
  for name, (bits, _, guide, order, full_only) in VARIANTS.items()
)
