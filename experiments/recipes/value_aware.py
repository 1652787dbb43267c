"""Value-aware quantization: 4-bit kernels with the 1% largest weights kept in float16.

Park, Yoo & Vajda 2018, https://arxiv.org/abs/1804.07802. Packed as sparse outliers plus
4-bit codes (``export.OutlierArray``).
"""

from experiments.recipes.base import FineTune, Recipe
from jaxcompress import quantization


def build(params, trainer):
  del params
  return FineTune(quantization.value_aware(4, 0.01, outlier_dtype="float16"), epochs=trainer.epochs(20), lr=3e-4)


RECIPE = Recipe("value_aware4", build, order=41, description="value-aware 4-bit kernels, 1% float16 outliers")
