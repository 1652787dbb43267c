"""The activation-aware post-training methods: AWQ, SmoothQuant and Wanda, beside their baselines.

- ``awq_int4_g128`` (Lin et al. 2023, https://arxiv.org/abs/2306.00978): int4, one scale and
  zero point per 128 inputs, per-input-channel scales ``s_X^α`` (α searched on 20 points);
  ``awq_int4_g128_clip`` adds the authors' weight clipping search (not on q and k, as their
  code). ``int4_g128_affine`` (in ``gptq.py``) is round-to-nearest on the same grid, the fair baseline.
- ``smoothquant_w8a8`` (Xiao et al. 2022, https://arxiv.org/abs/2211.10438): α = 0.5 on the
  inputs of q, k, v and the intermediate dense (the layers after a LayerNorm, as the paper),
  then W8A8 of all 36 kernels with per-tensor weights and static per-tensor symmetric
  activations (the paper's O3), served through the int8 × int8 → int32 path;
  ``w8a8_per_tensor`` is the same quantization without smoothing. ``smoothquant_w8a8_pc`` /
  ``w8a8_pc_sym``: the same pair with per-channel weight scales. ``smoothquant_w8a8_dynamic``:
  the per-channel smoothed model with dynamic per-token activations instead (the paper's O1
  granularity; fake-quant), beside ``w8a8_dynamic``. Smoothing every Dense input
  (the attention output, folded into v, and the output dense after GELU too) was worse than
  no smoothing here (cos 0.949 vs 0.958 per tensor, measured under load).
- ``wanda_50`` / ``wanda_2_4`` (Sun et al. 2023, https://arxiv.org/abs/2306.11695):
  ``|W|·‖X‖`` per output, one shot; against ``magnitude_50`` / ``magnitude_2_4``.

Producers. MiniLM is a post-LN BERT: every LayerNorm's output is also the residual stream,
so the scales of q, k, v (after the previous layer's output LayerNorm) and of the
intermediate dense (after the attention LayerNorm) cannot be folded into those LayerNorms
without changing the model (``verify`` refuses it; see :data:`POST_LN`). They stay explicit
per-channel input scales (stored, counted in the bytes). The attention-output dense's scale
is folded into v's output columns and bias (the context is a per-channel linear map of v);
the output dense follows GELU, so its scale is explicit too.
"""

from __future__ import annotations

import functools

from experiments.minilm.methods.base import Context, Method, Result
from jaxcompress import export, graph, pruning, quantization

LAYERS = 6


def producers() -> dict:
  """The folds valid in a post-LN BERT: each attention-output dense into its layer's v."""
  return {
    f"layers/{i}/attention/output/kernel": (
      f"layers/{i}/attention/value/kernel",
      f"layers/{i}/attention/value/bias",
    )
    for i in range(LAYERS)
  }


def post_ln_producers() -> dict:
  """The LayerNorm folds of a pre-LN transformer, which a post-LN BERT does not allow."""
  out = producers()
  for i in range(LAYERS):
    prev = "embeddings/norm" if i == 0 else f"layers/{i - 1}/output_norm"
    for n in ("query", "key", "value"):
      out[f"layers/{i}/attention/{n}/kernel"] = (f"{prev}/scale", f"{prev}/bias")
    out[f"layers/{i}/intermediate/kernel"] = (f"layers/{i}/attention_norm/scale", f"layers/{i}/attention_norm/bias")
  return out


POST_LN = post_ln_producers
"""Kept for the record: ``awq(..., producers=POST_LN())`` raises from ``verify``."""


def _batches(ctx: Context):
  return [(ids, mask) for ids, mask in ctx.calibration]


def _tree(m: quantization.SmoothedModel) -> dict:
  """The packed params with the explicit input scales beside them (so they are counted and saved)."""
  return {**m.packed, "input_scales": m.input_scales}


def awq_int4(ctx: Context, clip: bool) -> Result:
  m = quantization.awq(
    ctx.apply,
    ctx.params,
    batches=_batches(ctx),
    bits=4,
    group_size=128,
    producers=producers(),
    where=ctx.where,
    token_mask=1,
    clip=r"layers/\d+/(attention/(value|output)|intermediate|output)/kernel" if clip else False,
  )
  alphas = sorted(set(m.alpha.values()))
  tree = _tree(m)
  run = lambda t, ids, mask: m.apply({k: v for k, v in t.items() if k != "input_scales"}, ids, mask)
  scale_bytes = sum(v.nbytes for v in m.input_scales.values())
  return Result(tree, ctx.embed(tree, run), notes=f"alpha {alphas[0]:.2f}..{alphas[-1]:.2f}; +{scale_bytes} B scales")


SMOOTHED = r"layers/\d+/(attention/(query|key|value)|intermediate)/kernel"
"""The layers after a LayerNorm, the ones the paper smooths (their inputs hold the outliers)."""


def smoothquant_w8a8(ctx: Context, per_channel: bool) -> Result:
  m = quantization.smoothquant(
    ctx.apply,
    ctx.params,
    batches=_batches(ctx),
    alpha=0.5,
    where=ctx.where,
    smooth_where=SMOOTHED,
    token_mask=1,
    per_channel=per_channel,
  )
  serve = quantization.serve(
    quantization.scaled_apply(ctx.apply, m.input_scales), m.packed, act_ranges=m.act_ranges, act_symmetric=True
  )
  return Result(_tree(m), serve, notes="served int8")


def smoothquant_dynamic(ctx: Context) -> Result:
  m = quantization.smoothquant(
    ctx.apply,
    ctx.params,
    batches=_batches(ctx),
    alpha=0.5,
    where=ctx.where,
    smooth_where=SMOOTHED,
    token_mask=1,
    per_channel=True,
  )
  rule = quantization.activation_rule(quantization.QuantSpec(8), per_token=True)
  fake = graph.rewrite(quantization.scaled_apply(ctx.apply, m.input_scales), rule, where=ctx.where)
  run = lambda t, ids, mask: fake(
    export.materialize_tree({k: v for k, v in t.items() if k != "input_scales"}), ids, mask
  )
  tree = _tree(m)
  return Result(tree, ctx.embed(tree, run), notes="dynamic per-token activations")


def w8a8_plain(ctx: Context, per_channel: bool) -> Result:
  q = quantization.ptq(
    ctx.apply,
    ctx.params,
    weight_bits=8,
    per_channel=per_channel,
    act_bits=8,
    act_symmetric=True,
    batches=_batches(ctx),
    where=ctx.where,
  )
  return Result(q.packed, quantization.serve(ctx.apply, q.packed, act_ranges=q.act_ranges, act_symmetric=True))


def wanda(ctx: Context, nm: bool) -> Result:
  kw = {"n": 2, "m": 4} if nm else {"sparsity": 0.5}
  return ctx.compress(pruning.wanda(apply_fn=ctx.apply, batches=_batches(ctx), token_mask=1, where=ctx.where, **kw))


METHODS = (
  Method("awq_int4_g128", functools.partial(awq_int4, clip=False), order=23, description="AWQ int4 g128", quick=True),
  Method("awq_int4_g128_clip", functools.partial(awq_int4, clip=True), order=24, description="AWQ int4 g128 + clip"),
  Method(
    "w8a8_per_tensor",
    functools.partial(w8a8_plain, per_channel=False),
    order=13,
    description="W8A8 per-tensor weights and activations (symmetric), served int8",
    quick=True,
  ),
  Method(
    "smoothquant_w8a8",
    functools.partial(smoothquant_w8a8, per_channel=False),
    order=14,
    description="SmoothQuant a=0.5, then the same W8A8 (the paper's O3), served int8",
    quick=True,
  ),
  Method(
    "w8a8_pc_sym",
    functools.partial(w8a8_plain, per_channel=True),
    order=15,
    description="W8A8 per-channel weights, per-tensor symmetric activations, served int8",
  ),
  Method(
    "smoothquant_w8a8_pc",
    functools.partial(smoothquant_w8a8, per_channel=True),
    order=16,
    description="SmoothQuant a=0.5, then per-channel-weight W8A8, served int8",
  ),
  Method(
    "smoothquant_w8a8_dynamic",
    smoothquant_dynamic,
    order=17,
    description="SmoothQuant a=0.5, per-channel weights, dynamic per-token activations (O1)",
  ),
  Method("wanda_50", functools.partial(wanda, nm=False), order=42, description="Wanda 50% per output", quick=True),
  Method("wanda_2_4", functools.partial(wanda, nm=True), order=43, description="Wanda 2:4"),
)
