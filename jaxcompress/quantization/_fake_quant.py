"""Fake quantization of weights: train with quantized weights, keep float masters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import check_matching, is_packed_leaf, leaves_with_paths, path_str
from jaxcompress.quantization import _provenance as provenance
from jaxcompress.quantization import _ste, uniform
from jaxcompress.quantization._spec import QuantSpec
from jaxcompress.quantization.granularity import from_args


def weight_spec(
  bits: int, *, symmetric: bool = True, per_channel: bool = False, axis: int = -1, group_size: int | None = None,
  group_axis: int = 0, convention: str = "narrow",
) -> QuantSpec:  # fmt: skip
  """Builds and validates the :class:`QuantSpec` of a weight quantizer.

  Args:
    bits: bits per weight: 2..16 symmetric, 1..16 affine.
    symmetric: symmetric (no zero point) or affine.
    per_channel, axis, group_size, group_axis: which weights share a scale
      (:func:`~jaxcompress.quantization.granularity.from_args`).
    convention: ``'narrow'`` or ``'pytorch'`` (:class:`QuantSpec`).

  Returns:
    The :class:`QuantSpec`.

  Raises:
    ValueError: on bits outside 2..16 (symmetric) or 1..16 (affine), an unknown
      ``convention``, as :func:`~jaxcompress.quantization.granularity.from_args`.
  """
  granularity = from_args(per_channel=per_channel, axis=axis, group_size=group_size, group_axis=group_axis)
  return QuantSpec(
    bits=validate.check_bits("bits", bits, low=2 if symmetric else 1),
    symmetric=symmetric,
    granularity=granularity,
    convention=convention,
  )


Bits = int | Mapping[str, int] | Sequence[tuple[select.Where, int]]
"""One bit-width for every selected leaf, or per-leaf rules: ``{path_or_regex: bits}`` or
``[(where, bits), ...]`` (first match wins)."""


def _bit_rules(bits: Bits) -> list[tuple[Any, int, str]] | None:
  """``[(predicate, bits, label), ...]`` of per-leaf bit rules, or ``None`` for one int."""
  if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
    return None
  if isinstance(bits, Mapping):
    items = list(bits.items())
    for key, _ in items:
      if not isinstance(key, str):
        raise TypeError(f"bits: a mapping's keys must be leaf paths or regexes (str), got {key!r}")
    rules = []
    for key, b in items:
      pattern = select.as_predicate(key)  # validates the regex
      rules.append(((lambda k, pat: lambda path, leaf: path == k or pat(path, leaf))(key, pattern), b, repr(key)))
  elif isinstance(bits, Sequence) and not isinstance(bits, str):
    rules = []
    for i, rule in enumerate(bits):
      if not (isinstance(rule, tuple) and len(rule) == 2):
        raise TypeError(f"bits[{i}] must be a (where, bits) pair, got {rule!r}")
      rules.append((select.as_predicate(rule[0]), rule[1], f"bits[{i}] (where={rule[0]!r})"))
  else:
    raise ValueError(f"bits must be an int, a {{path: bits}} mapping or a [(where, bits), ...] list, got {bits!r}")
  if not rules:
    raise ValueError(f"bits={bits!r} holds no rule")
  return rules


def fake_quant(
  bits: Bits = 8,
  *,
  symmetric: bool = True,
  per_channel: bool = False,
  axis: int = -1,
  group_size: int | None = None,
  group_axis: int = 0,
  convention: str = "narrow",
  where: select.Where = None,
) -> Compressor:
  """Uniform quantization of weights with a straight-through gradient.

  ``apply`` returns each selected weight quantized and dequantized,
  ``(clip(round(w / scale) + zero_point, qmin, qmax) - zero_point) · scale``, with the
  scale (and zero point) computed from the weight's current range: symmetric
  ``scale = max|w| / (2^(b-1) - 1)``, or affine over ``[min(w, 0), max(w, 0)]`` onto
  ``[0, 2^b - 1]``; per tensor, per channel along ``axis``, or per group of
  ``group_size`` elements along ``group_axis`` (per output channel). The float weights
  stay the trainable master copy; the gradient passes straight through inside the
  range (see :func:`~jaxcompress.quantization.uniform.fake_quant`). ``pack`` stores
  each selected leaf as a :class:`~jaxcompress.export.QArray` whose codes are
  bit-packed below 8 bits (after pruning in a ``chain``, the chain stores only the
  surviving codes: :meth:`~jaxcompress.export.QArray.prune`). Half-precision weights get
  their scales and ranges in float32 (stored so in the ``QArray``) and the result cast
  back, saturated: weights at the dtype's largest finite value stay finite.

  *Mixed precision.* ``bits`` may instead give each leaf its own bit-width, in one
  compressor: a mapping ``{path_or_regex: bits}`` (a key matches a leaf whose path equals
  it or fully matches it as a regular expression; :func:`allocate_bits` returns such a
  mapping of exact paths) or a list ``[(where, bits), ...]`` of selections. A leaf takes
  the bits of the first rule that matches it; a leaf selected by ``where`` that no rule
  matches stays float, and a rule that matches no selected leaf is an error (a typo must
  not leave a layer at the wrong width). Each leaf packs at its own bits, so the bytes are
  exact per leaf.

  Args:
    bits: bits per weight: 2..16 symmetric, 1..16 affine; or per-leaf rules as above.
    symmetric: symmetric (no zero point) or affine.
    per_channel: one scale per slice along ``axis``.
    axis: the channel axis; -1 is the output features of Flax Dense ``(in, out)`` and
      Conv ``(h, w, in, out)`` kernels.
    group_size: if given, one scale per ``group_size`` consecutive weights along
      ``group_axis`` and per channel along ``axis``; must divide that axis.
    group_axis: the axis cut into groups (0: a Dense kernel's contraction axis).
    convention: ``'narrow'`` (default: the symmetric narrow range above) or
      ``'pytorch'``: torch's ``MinMaxObserver`` qparams (symmetric ``scale = max|w| /
      ((qmax - qmin) / 2)`` on the full signed range, so the largest weight is clipped by
      half a step and gets no gradient, as in torch); see
      :class:`~jaxcompress.quantization.QuantSpec`.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState`.

  Raises:
    ValueError: on bad ``bits`` (any rule's) or ``convention``; at ``init``, if ``where``
      selects nothing or a bit rule matches no selected leaf, a selected
      leaf is integer, empty or non-finite, ``axis``/``group_axis`` is out of range or
      ``group_size`` does not divide the axis (the message names the leaf).

  References:
    Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", https://arxiv.org/abs/1712.05877.

  Example:
    >>> import jax.numpy as jnp
    >>> c = fake_quant(2)
    >>> params, state = c.init({'w': jnp.array([[0.2, -1.0], [0.6, 0.9]])})
    >>> c.apply(params, state)['w'].tolist()
    [[0.0, -1.0], [1.0, 1.0]]
  """
  rules = _bit_rules(bits)
  make_spec = lambda b: weight_spec(
    b,
    symmetric=symmetric,
    per_channel=per_channel,
    axis=axis,
    group_size=group_size,
    group_axis=group_axis,
    convention=convention,
  )
  clips = convention == "pytorch"  # torch's symmetric scale clips the largest weight
  if rules is None:
    spec = make_spec(bits)
    spec_of = lambda path, leaf: spec
    chosen = where
  else:
    specs = [make_spec(b) for _, b, _ in rules]  # validates every rule's bits at construction
    base = select.as_predicate(where)

    def rule_of(path, leaf) -> QuantSpec | None:
      for (pred, _, _), spec in zip(rules, specs):
        if pred(path, leaf):
          return spec
      return None

    def spec_of(path, leaf) -> QuantSpec:
      spec = rule_of(path, leaf)
      assert spec is not None  # only selected leaves are asked
      return spec

    chosen = lambda path, leaf: base(path, leaf) and rule_of(path, leaf) is not None

  def init_leaf(path, p):
    spec_of(path, p).granularity.check(tuple(p.shape), f"leaf {path!r}")
    return leafwise.Selected()

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    if rules is not None:
      candidates = [(path, leaf) for path, leaf in leaves_with_paths(params) if base(path, leaf)]
      for pred, _, label in rules:
        if not any(pred(path, leaf) for path, leaf in candidates):
          names = [path for path, _ in candidates]
          raise ValueError(f"fake_quant: the bit rule {label} matches no leaf selected by where; those are {names}")
    leaves = leafwise.init_selected(params, chosen, init_leaf)
    return params, leafwise.LeafwiseState.start(leaves)

  def quantize_leaf(path, p, _):
    # The range is the weight's own, so nothing is clipped: the straight-through gradient is
    # the identity, and the backward pass need not recompute the in-range mask.
    spec = spec_of(path, p)
    x = uniform.upcast(p)  # half types: scales and ranges in float32, the result cast back
    scale, zero_point = jax.lax.stop_gradient(spec.params(x))
    if clips:  # the clipped straight-through gradient
      out = uniform.saturate(spec.fake_quant(x, scale, zero_point), p.dtype)
    else:
      out = _ste.straight_through(p, uniform.saturate(spec.fake_quant(x, scale, zero_point), p.dtype))
    provenance.record(out, spec, p, scale, zero_point)  # an integer site given ``out`` takes codes from ``p``
    return out

  def apply(params, state):
    return map_paths(quantize_leaf, params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state.advance()

  def pack_leaf(path, p, _):
    dense = jnp.asarray(p)
    spec = spec_of(path, dense)
    x = uniform.upcast(dense)
    scale, zero_point = spec.params(x)
    # Weights that are exactly zero (a pruned model's) stay absent when that is smaller.
    return export.prune(spec.pack(x, scale, zero_point, dtype=dense.dtype), np.asarray(dense) != 0)

  def pack(params, state):
    return map_paths(pack_leaf, params, state.leaves)

  return Compressor(init, apply, update, pack)


def map_paths(fn, params, leaf_states):
  """``leafwise.map_selected`` whose function also receives the leaf's path first."""
  check_matching(params, leaf_states, "compressor state")
  return jax.tree_util.tree_map_with_path(
    lambda kp, p, s: p if s is None else fn(path_str(kp), p, s), params, leaf_states, is_leaf=is_packed_leaf
  )
