"""BatchNorm folding on the LeNet-5 with BatchNorm (``lenet5bn``): int8 with and without folding.

``unfolded``: the conv weights are quantized and the BatchNorm runs after them in float (the
served net keeps a separate BatchNorm). ``folded``: ``batchnorm_fold`` gives the model
``w·γ/σ`` and the folded bias, and the folded weights are quantized (PTQ: the inference graph
from the start, ``freeze_step=0``; QAT: the training graph with the batch-statistics
correction for the first half of fine-tuning, then frozen, with the running statistics
re-estimated on eight training batches at the freeze). The served rows run integer
W8A8 convs and matmuls (``quantization.serve``); the folded one serves the plain LeNet-5
graph, with no BatchNorm left.

Jacob et al. 2018, https://arxiv.org/abs/1712.05877, §3.2 and Appendix C.
"""

import jaxcompress as jc
from experiments import models
from experiments.recipes._quant import calibrated_activations
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization

MODELS = ("lenet5bn",)


def _folds(params, trainer):
  return quantization.find_batchnorms(trainer.model.apply, params, trainer.example_inputs(1))


def ptq(folded, per_channel):
  def build(params, trainer):
    weights = quantization.fake_quant(8, per_channel=per_channel)
    if folded:
      weights = jc.chain(quantization.batchnorm_fold(_folds(params, trainer), freeze_step=0), weights)
    return FineTune(weights, epochs=0)

  return build


def qat_folded(params, trainer):
  epochs = trainer.epochs(10)
  fold = quantization.batchnorm_fold(
    _folds(params, trainer),
    freeze_step=epochs * trainer.steps_per_epoch // 2,
    apply_fn=trainer.model.apply,  # at the freeze: running statistics of the current weights
    batches=trainer.calibration_batches(8),
  )
  return FineTune(jc.chain(fold, quantization.fake_quant(8, per_channel=True)), epochs=epochs, lr=1e-4)


def served(folded):
  def build(params, trainer):
    folds = _folds(params, trainer)
    stages = [quantization.fake_quant(8, per_channel=True), calibrated_activations(trainer)]
    if folded:
      stages.insert(0, quantization.batchnorm_fold(folds, freeze_step=0))
    plain = models.build("lenet5", 0)[1].apply  # LeNet-5: the folded net's layout, no BatchNorm

    def serve(apply, packed, cstate):
      ranges = cstate.stages[-1].data
      if folded:
        return quantization.serve(plain, quantization.strip_batchnorm(packed, folds), act_ranges=ranges)
      return quantization.serve(apply, packed, act_ranges=ranges)

    return FineTune(jc.chain(*stages), epochs=0, serve=serve)

  return build


def float_folded(params, trainer):
  return FineTune(quantization.batchnorm_fold(_folds(params, trainer), freeze_step=0), epochs=0)


RECIPES = (
  Recipe(
    "bn_float_folded", float_folded, models=MODELS, order=60, description="BatchNorm folded, float", full_only=True
  ),
  Recipe("bn_ptq8_unfolded", ptq(False, True), models=MODELS, order=61, description="PTQ int8/ch, BN kept"),
  Recipe("bn_ptq8_folded", ptq(True, True), models=MODELS, order=62, description="PTQ int8/ch of folded weights"),
  Recipe(
    "bn_ptq8t_unfolded",
    ptq(False, False),
    models=MODELS,
    order=63,
    description="PTQ int8/tensor, BN kept",
    full_only=True,
  ),
  Recipe(
    "bn_ptq8t_folded", ptq(True, False), models=MODELS, order=64, description="PTQ int8/tensor, folded", full_only=True
  ),
  Recipe("bn_qat8_folded", qat_folded, models=MODELS, order=65, description="QAT int8 folded + BN correction"),
  Recipe(
    "bn_served8_unfolded",
    served(False),
    models=MODELS,
    order=66,
    description="served W8A8, BN in float",
    full_only=True,
  ),
  Recipe("bn_served8_folded", served(True), models=MODELS, order=67, description="served W8A8 folded, no BN"),
)
