"""Fake quantization of weights: train with quantized weights, keep float masters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core.base import Compressor
from jaxcompress.quantization import uniform


class FakeQuantState(NamedTuple):
  """State of :func:`fake_quant`.

  Attributes:
    count: ``int32`` step counter.
    selected: :class:`~jaxcompress.core.leafwise.Selected` at quantized leaves, ``None``
      elsewhere.
  """

  count: jax.Array
  selected: Any


def fake_quant(bits: int = 8, *, per_channel: bool = False, axis: int = -1, where: select.Where = None) -> Compressor:
  """Symmetric uniform quantization of weights with a straight-through gradient.

  ``apply`` returns ``clip(round(w / scale), -qmax, qmax) * scale`` with
  ``qmax = 2**(bits-1) - 1`` and ``scale = max|w| / qmax`` over the tensor or, with
  ``per_channel``, over each slice along ``axis``. The float weights stay the
  trainable master copy; the gradient passes straight through (clipped STE, see
  :func:`~jaxcompress.quantization.uniform.fake_quant`). ``pack`` stores each selected
  leaf as a :class:`~jaxcompress.export.QArray` whose codes are bit-packed below 8
  bits (and sparse when the leaf came in sparse, inside ``chain`` after pruning).

  Args:
    bits: bits per weight, 2..16 (symmetric quantization with an exact zero needs at
      least the three levels -1, 0, 1).
    per_channel: one scale per slice along ``axis`` instead of one per tensor.
    axis: the channel axis when ``per_channel``; the default -1 is the output-feature
      axis of Flax Dense ``(in, out)`` and Conv ``(h, w, in, out)`` kernels.
    where: which leaves to quantize (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with :class:`FakeQuantState`.

  Raises:
    ValueError: if ``bits`` is outside 2..16 or not an integer; at ``init``, if
      ``where`` selects nothing, a selected leaf is integer, empty or non-finite, or
      ``axis`` is out of range for a selected leaf.

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
  bits = validate.check_bits("bits", bits, low=2)
  channel_axes = (validate.check_int("axis", axis),) if per_channel else ()

  def init_leaf(path, p):
    if per_channel and not -p.ndim <= axis < p.ndim:
      raise ValueError(f"axis={axis} is out of range for leaf {path!r} of shape {tuple(p.shape)}")
    return leafwise.Selected()

  def init(params):
    selected = leafwise.init_selected(params, where, init_leaf)
    return params, FakeQuantState(count=jnp.asarray(0, jnp.int32), selected=selected)

  def quantize_leaf(p, _):
    return uniform.fake_quant(p, jax.lax.stop_gradient(uniform.symmetric_scale(p, bits, channel_axes)), bits)

  def apply(params, state):
    return leafwise.map_selected(quantize_leaf, params, state.selected)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    return params, state._replace(count=state.count + 1)

  def pack_leaf(p, _):
    dense = jnp.asarray(export.materialize(p))
    scale = uniform.symmetric_scale(dense, bits, channel_axes)
    codes = np.asarray(uniform.quantize(dense, scale, bits))
    if isinstance(p, export.SparseArray):  # chained after pruning: zero codes stay unstored
      stored = export.from_dense(codes, value_bits=bits, signed=True)
    else:
      stored = export.store_codes(codes, bits, signed=True)
    return export.QArray(codes=stored, scale=np.asarray(scale), zero_point=None, bits=bits, dtype=str(dense.dtype))

  def pack(params, state):
    return leafwise.map_selected(pack_leaf, params, state.selected)

  return Compressor(init, apply, update, pack)
