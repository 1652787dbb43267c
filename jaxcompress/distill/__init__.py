"""Knowledge distillation: teacher-student losses, and a loss for ``train.make_step``."""

from jaxcompress.distill._losses import (
  attention_map,
  attention_transfer_loss,
  dist_loss,
  dkd_loss,
  dkd_terms,
  fitnets_loss,
  hinton_loss,
  kl_divergence,
  pearson_distance,
)
from jaxcompress.distill._step import loss

__all__ = [
  "attention_map",
  "attention_transfer_loss",
  "dist_loss",
  "dkd_loss",
  "dkd_terms",
  "fitnets_loss",
  "hinton_loss",
  "kl_divergence",
  "loss",
  "pearson_distance",
]
