"""Pruning: delete redundant weights by an importance criterion."""

from jaxcompress.pruning._allocation import Allocation, erk_sparsities
from jaxcompress.pruning._channels import (
  ChannelState,
  channel_prune,
  narrow_linen,
  narrow_nnx,
  shrink,
  slimming,
  slimming_penalty,
)
from jaxcompress.pruning._criteria import (
  block_mask,
  global_topk_masks,
  keep_top,
  nm_mask,
  num_pruned,
  topk_mask,
)
from jaxcompress.pruning._dst import DSTState, rigl, sparse_evolutionary
from jaxcompress.pruning._fixed import FixedMaskState, fixed
from jaxcompress.pruning._lottery import LotteryState, lottery_ticket
from jaxcompress.pruning._magnitude import MagnitudeState, magnitude
from jaxcompress.pruning._masking import PruningState
from jaxcompress.pruning._movement import movement
from jaxcompress.pruning._nm import n_m
from jaxcompress.pruning._random_pruning import random
from jaxcompress.pruning._saliency import saliency, snip
from jaxcompress.pruning._schedules import (
  check_reaches,
  constant_sparsity,
  one_shot_sparsity,
  polynomial_sparsity,
)
from jaxcompress.pruning._sparsegpt import SparseGPTResult, sparsegpt, sparsegpt_layer
from jaxcompress.pruning._wanda import per_output_mask, wanda, wanda_score

__all__ = [
  "Allocation",
  "ChannelState",
  "DSTState",
  "FixedMaskState",
  "LotteryState",
  "MagnitudeState",
  "PruningState",
  "SparseGPTResult",
  "block_mask",
  "channel_prune",
  "check_reaches",
  "constant_sparsity",
  "erk_sparsities",
  "fixed",
  "global_topk_masks",
  "keep_top",
  "lottery_ticket",
  "magnitude",
  "movement",
  "n_m",
  "narrow_linen",
  "narrow_nnx",
  "nm_mask",
  "num_pruned",
  "one_shot_sparsity",
  "per_output_mask",
  "polynomial_sparsity",
  "random",
  "rigl",
  "saliency",
  "shrink",
  "slimming",
  "slimming_penalty",
  "snip",
  "sparse_evolutionary",
  "sparsegpt",
  "sparsegpt_layer",
  "topk_mask",
  "wanda",
  "wanda_score",
]
