"""Qwix (google/qwix, https://github.com/google/qwix) as a peer on the same NNX model, at our rows' bits and groups.

Qwix is an optional dependency of this benchmark only (the ``qwix`` extra); without it every
row here is skipped with the reason. Qwix quantizes the NNX module by intercepting its
``dot_general`` calls (the 36 ``nnx.Linear`` layers; the attention einsums hold no weight and
are left alone, as ours). Each row's embeddings come from Qwix's own quantized module
(jitted); its bytes are counted by re-expressing Qwix's codes, scales and zero points as
:class:`~jaxcompress.export.QArray` leaves (the same storage: int4 bit-packed, float32
scales), checked to dequantize to exactly Qwix's weights.

- ``qwix_int8``: int8 weight-only, one scale per output channel (``absmax``); beside ``int8``.
- ``qwix_int4_g128`` / ``qwix_int4_g64``: int4 symmetric, ``tile_size`` 128 / 64 along the
  input axis; beside ``int4_g128`` / ``int4_g64``. Qwix's symmetric grid is ``absmax / 7.5``
  with codes ``-8..7`` (the positive extreme clipped to 7), ours ``absmax / 7``, ``-7..7``.
- ``qwix_int4_g128_affine``: ``minmax`` (a zero point) per group of 128; beside
  ``int4_g128_affine``.
- ``qwix_gptq4_g128``: ``qwix.contrib.gptq`` (Hessians from the same calibration batches,
  block 128, damping 0.01, no act-order; Qwix's calibration cannot leave the padding
  positions out) on the symmetric int4 g128 grid; beside ``gptq4_g128_sym`` (ours on the
  symmetric grid). Qwix 0.1.8's GPTQ fails on an affine grid (``gptq_core.quantize_weight``
  takes the truth value of the zero-point array), so there is no affine Qwix GPTQ row.
- ``qwix_awq_int4_g128``: ``qwix.contrib.awq`` (20-point grid) on the affine g128 grid,
  scales kept beside the weights (Qwix divides the dequantized weight by them); beside
  ``awq_int4_g128``.
- ``qwix_w8a8_dynamic``: int8 per-channel weights and int8 activations quantized on the fly
  (Qwix's default: symmetric ``absmax``, one scale per token), Dense inputs only; beside
  ``w8a8_dynamic``.
- ``qwix_smoothquant_w8a8``: skipped with the reason (``qwix.contrib.smooth_quant`` 0.1.8 has
  no working NNX inference path: see :func:`smoothquant`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.minilm.methods.base import DENSE, Context, Method, Result, Unavailable, replace_leaves
from jaxcompress import export

LINEARS = r"layers/\d+/(attention/(query|key|value|output)|intermediate|output)"
"""Qwix ``module_path`` of the 36 ``nnx.Linear`` layers (the modules owning :data:`~base.DENSE`'s kernels)."""
SMOOTHED = r"layers/\d+/(attention/(query|key|value)|intermediate)"
"""The modules SmoothQuant smooths (after a LayerNorm), as ``activation_aware.SMOOTHED``."""


def _qwix():
  try:
    import qwix
  except ImportError as e:
    raise Unavailable("qwix is not installed (pip install 'jaxcompress[qwix]')") from e
  return qwix


def _model(ctx: Context):
  from flax import nnx

  return nnx.merge(ctx.graphdef, nnx.State(jax.tree.map(jnp.asarray, ctx.params)))


def _example(ctx: Context):
  ids, mask = ctx.calibration[0]
  return jnp.asarray(ids), jnp.asarray(mask)


def _rule(cls, *, bits: int, tile: int | None, affine: bool, act: bool = False, **kw):
  return cls(
    module_path=LINEARS,
    op_names=("dot_general",),
    weight_qtype=f"int{bits}",
    weight_calibration_method="minmax" if affine else "absmax",
    tile_size=tile,
    act_qtype="int8" if act else None,
    **kw,
  )


def _leaf(q: Any, kernel_shape: tuple[int, ...], bits: int) -> export.QArray:
  """Qwix's ``QArray`` (qvalue ``[in, out]``, scale ``[in / tile, out]``) as ours, same storage."""
  codes = np.asarray(q.qvalue).astype(np.int32)
  scale = np.asarray(q.scale, np.float32)
  if codes.shape != kernel_shape:
    raise ValueError(f"qwix codes of shape {codes.shape} for a kernel of shape {kernel_shape}")
  n_in, n_out = kernel_shape
  groups = scale.shape[0]
  group = None if groups == 1 else n_in // groups
  zero_point = None if q.zero_point is None else np.asarray(q.zero_point).astype(np.int32)
  lo = -(1 << (bits - 1))
  if zero_point is not None:  # Qwix's affine codes are signed with a signed zero point; shift both (same values)
    codes, zero_point = codes - lo, zero_point - lo
  signed = zero_point is None
  if group is not None:
    scale = scale.reshape(groups, 1, n_out)
    zero_point = None if zero_point is None else zero_point.reshape(groups, 1, n_out)
  zp = None if zero_point is None else export.store_codes(zero_point, 8 if bits <= 8 else 16, signed=False)
  return export.QArray(
    export.store_codes(codes, bits, signed=signed),
    jnp.asarray(scale),
    None if zp is None else jnp.asarray(zp),
    bits,
    "float32",
    group_axis=None if group is None else 0,
    group_size=group,
  )


def _walk(state: Any, path: str) -> Any:
  node = state
  for k in path.split("/"):
    node = node[int(k)] if k.isdigit() and int(k) in node else node[k]
  return node


def _packed(ctx: Context, qmodel: Any, bits: int, extra: dict | None = None) -> tuple[dict, dict]:
  """Our accounting tree for Qwix's quantized module: its kernels as :class:`QArray`, plus ``extra`` leaves."""
  from flax import nnx

  pure = nnx.to_pure_dict(nnx.state(qmodel))
  pattern = re.compile(DENSE)
  updates, extras = {}, dict(extra or {})
  for path in [s.path for s in ctx.sites]:
    if not pattern.fullmatch(path):
      continue
    k = _walk(pure, path)
    if not isinstance(k, dict):
      raise ValueError(f"qwix left {path} unquantized (a {type(k).__name__})")
    inner = k.get("array", k)
    leaf = _leaf(_Q(inner), np.shape(np.asarray(_walk(ctx.params, path))), bits)
    dense = np.asarray(_qwix().dequantize(_qwix().QArray(**_Q(inner).fields())))
    if not np.array_equal(np.asarray(leaf.materialize()), dense):
      raise AssertionError(f"{path}: our QArray does not dequantize to qwix's weights")
    updates[path] = leaf
    for name in ("awq_scale", "inv_sq_scale"):
      if name in k:
        extras[f"{path}/{name}"] = jnp.asarray(k[name])
  return replace_leaves(ctx.params, updates), extras


class _Q:
  """A Qwix pure-dict QArray (``qvalue``, ``scale``, ``zero_point``) read by name."""

  def __init__(self, d: dict):
    self.qvalue = d["qvalue"]
    self.scale = d["scale"]
    self.zero_point = d.get("zero_point")

  def fields(self) -> dict:
    out = {"qvalue": self.qvalue, "scale": self.scale}
    if self.zero_point is not None:
      out["zero_point"] = self.zero_point
    return out


def _embed(qmodel: Any):
  from flax import nnx

  graphdef, state = nnx.split(qmodel)
  run = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))
  return lambda ids, mask: run(state, jnp.asarray(ids), jnp.asarray(mask))


def _result(ctx: Context, qmodel: Any, bits: int, notes: str = "") -> Result:
  tree, extras = _packed(ctx, qmodel, bits)
  if extras:
    tree = {**tree, "input_scales": extras}
  return Result(tree, _embed(qmodel), notes=notes)


def ptq(ctx: Context, bits: int, tile: int | None, affine: bool = False, act: bool = False) -> Result:
  qwix = _qwix()
  rule = _rule(qwix.QuantizationRule, bits=bits, tile=tile, affine=affine, act=act)
  qmodel = qwix.quantize_model(_model(ctx), qwix.PtqProvider([rule]), *_example(ctx))
  return _result(ctx, qmodel, bits, notes="qwix dynamic per-token int8 activations" if act else "")


def _calibrated(ctx: Context, provider: Any, rules: list, module: Any, plain: Any, inference: Any = None) -> Any:
  """Qwix's two-pass flow: a model under the calibration ``provider`` collects ``quant_stats`` over
  the batches, then ``module.quantize_params`` fills a PTQ model of the ``plain`` rule's grid."""
  from flax import nnx

  qwix = _qwix()
  calib = qwix.quantize_model(_model(ctx), provider(rules), *_example(ctx))
  for ids, mask in ctx.calibration:
    calib(jnp.asarray(ids), jnp.asarray(mask))
  stats = nnx.to_pure_dict(nnx.state(calib, nnx.variable_type_from_name("quant_stats")))
  inference = inference or qwix.PtqProvider
  qmodel = qwix.quantize_model(_model(ctx), inference([plain]), *_example(ctx))
  try:
    qparams = module.quantize_params(jax.tree.map(jnp.asarray, ctx.params), qmodel, stats)
  except Exception as e:  # a peer's own failure is the row's result, not the harness's
    raise Unavailable(
      f"qwix {qwix.__version__} {module.__name__}.quantize_params failed: {type(e).__name__}: {e}"
    ) from e
  for site in ctx.sites:  # Qwix returns pure dicts for NNX: rebuild each kernel as its first call stored it
    *parents, name = site.path.split("/")
    owner = qmodel
    for k in parents:
      owner = owner[int(k)] if k.isdigit() else getattr(owner, k)
    setattr(owner, name, _rebuilt(getattr(owner, name), _walk(qparams, site.path)))
  return qmodel


def _rebuilt(current: Any, new: dict) -> Any:
  """``current`` (Qwix's ``WithAux`` of a ``QArray``, leaves boxed as ``nnx.Param``) holding ``new``'s values."""
  from flax import nnx

  arr = new.get("array", new)
  fields = {k: nnx.Param(jnp.asarray(arr[k])) for k in ("qvalue", "scale", "zero_point") if arr.get(k) is not None}
  array = dataclasses.replace(current.array, **fields)
  if "awq_scale" in new:
    from qwix.contrib import awq as qawq

    return qawq.WithAwqScale(
      array=array, awq_scale=nnx.Param(jnp.asarray(new["awq_scale"])), contracting_axis=0, how=current.how
    )
  return dataclasses.replace(current, array=array)


def gptq(ctx: Context, bits: int) -> Result:
  qwix = _qwix()
  from qwix.contrib import gptq as qgptq

  rule = _rule(qgptq.GptqRule, bits=bits, tile=128, affine=False)
  plain = _rule(qwix.QuantizationRule, bits=bits, tile=128, affine=False)
  qmodel = _calibrated(ctx, qgptq.GptqCalibrationProvider, [rule], qgptq, plain)
  return _result(ctx, qmodel, bits, notes="qwix: padding in the Hessians")


def awq(ctx: Context) -> Result:
  qwix = _qwix()
  from qwix.contrib import awq as qawq

  rule = _rule(qawq.AwqRule, bits=4, tile=128, affine=True)
  plain = _rule(qwix.QuantizationRule, bits=4, tile=128, affine=True)
  qmodel = _calibrated(ctx, qawq.AwqCalibrationProvider, [rule], qawq, plain, qawq.AwqInferenceProvider)
  return _result(ctx, qmodel, 4)


def smoothquant(ctx: Context) -> Result:
  _qwix()
  raise Unavailable(
    "qwix 0.1.8's SmoothQuant does not run on NNX here: its SqInferenceProvider creates no quantized "
    "weights on the first NNX call (the abstract tree it fills holds float kernels), and it multiplies the "
    "activations by the scales without quantizing them"
  )


METHODS = (
  Method("qwix_int8", functools.partial(ptq, bits=8, tile=None), order=13, description="Qwix int8 weight-only"),
  Method("qwix_int4_g128", functools.partial(ptq, bits=4, tile=128), order=20, description="Qwix int4 g128"),
  Method("qwix_int4_g64", functools.partial(ptq, bits=4, tile=64), order=21, description="Qwix int4 g64"),
  Method(
    "qwix_int4_g128_affine",
    functools.partial(ptq, bits=4, tile=128, affine=True),
    order=22,
    description="Qwix int4 g128 minmax",
  ),
  Method("qwix_gptq4_g128", functools.partial(gptq, bits=4), order=23, description="Qwix GPTQ int4 g128 symmetric"),
  Method("qwix_awq_int4_g128", awq, order=23, description="Qwix AWQ int4 g128 minmax"),
  Method(
    "qwix_w8a8_dynamic",
    functools.partial(ptq, bits=8, tile=None, act=True),
    order=17,
    description="Qwix W8A8, dynamic per-token activations",
  ),
  Method("qwix_smoothquant_w8a8", smoothquant, order=17, description="Qwix SmoothQuant a=0.5 + dynamic W8A8"),
)
