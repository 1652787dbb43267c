"""``QuantSpec``: bit-width, symmetry and granularity of one quantizer, with its numerics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import validate
from jaxcompress.quantization import uniform
from jaxcompress.quantization.granularity import Granularity

CONVENTIONS = ("narrow", "pytorch")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """A uniform quantizer's configuration.

  Attributes:
    bits: bits per code: 2..16 when symmetric (codes ``[-(2^(b-1)-1), 2^(b-1)-1]``),
      1..16 when affine (codes ``[0, 2^b - 1]`` with a zero point).
    symmetric: symmetric (zero point 0) or affine.
    granularity: which elements share a scale.
    convention: how a range becomes ``(scale, zero_point)``:

      - ``'narrow'`` (default; TensorFlow's ``narrow_range``, Jacob et al. 2018's weights):
        symmetric codes on ``[-(2^(b-1)-1), 2^(b-1)-1]`` with ``scale = amax / qmax``, so
        the grid is symmetric and the largest weight is a code; scales floored at the
        dtype's smallest normal number.
      - ``'pytorch'``: ``torch.ao.quantization``'s ``MinMaxObserver`` /
        ``PerChannelMinMaxObserver``: symmetric codes on the full ``[-2^(b-1),
        2^(b-1)-1]`` with ``scale = amax / ((qmax - qmin) / 2)`` (``amax / 127.5`` at 8
        bits, so ``+amax`` rounds past 127 and is clipped), affine as ``'narrow'``; scales
        floored at float32's machine epsilon as torch's observers do. Golden values from
        torch are in the tests.

      Both use PyTorch's fake-quantization rounding and straight-through rule
      (:func:`~jaxcompress.quantization.uniform.fake_quant`).
  """

  bits: int
  symmetric: bool = True
  granularity: Granularity = dataclasses.field(default_factory=Granularity)
  convention: str = "narrow"

  def __post_init__(self):
    validate.check_bits("bits", self.bits, low=2 if self.symmetric else 1)
    validate.check_choice("convention", self.convention, CONVENTIONS)

  @property
  def qrange(self) -> tuple[int, int]:
    """``(qmin, qmax)``."""
    narrow = self.symmetric and self.convention == "narrow"
    return uniform.quant_range(self.bits, signed=self.symmetric, narrow=narrow)

  def params_from_range(self, xmin: jax.Array, xmax: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """``(scale, zero_point)`` for a calibrated range (zero point ``None`` when symmetric)."""
    qmin, qmax = self.qrange
    if self.convention == "pytorch":
      return uniform.observer_params(xmin, xmax, qmin, qmax, symmetric=self.symmetric)
    if self.symmetric:
      return uniform.symmetric_params(jnp.maximum(jnp.abs(xmin), jnp.abs(xmax)), qmax), None
    return uniform.affine_params(xmin, xmax, qmin, qmax)

  def params(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """``(scale, zero_point)`` from ``x``'s own min/max, shaped for the blocked view."""
    if self.symmetric and self.convention == "narrow":  # max|x| = max(|min|, |max|): one reduction, not two
      return uniform.symmetric_params(self.granularity.absmax(x), self.qrange[1]), None
    lo, hi = self.granularity.minmax(x)
    return self.params_from_range(lo, hi)

  def fake_quant(self, x: jax.Array, scale: jax.Array, zero_point: jax.Array | None) -> jax.Array:
    """Quantize-dequantize with the straight-through gradient."""
    qmin, qmax = self.qrange
    fq = lambda b: uniform.fake_quant(b, scale, zero_point=zero_point, qmin=qmin, qmax=qmax)
    return self.granularity.apply(fq, x)

  def quantize(self, x: jax.Array, scale: jax.Array, zero_point: jax.Array | None) -> jax.Array:
    """``int32`` codes of ``x``'s shape."""
    qmin, qmax = self.qrange
    return self.granularity.apply(lambda b: uniform.quantize(b, scale, zero_point=zero_point, qmin=qmin, qmax=qmax), x)

  def pack(
    self, x: jax.Array, scale: jax.Array, zero_point: jax.Array | None, *, dtype: jnp.dtype | None = None
  ) -> export.QArray:
    """A :class:`~jaxcompress.export.QArray` of ``x`` (prune it with ``.prune(mask)``) that
    materializes to ``dtype`` (default: ``x``'s)."""
    codes = np.asarray(self.quantize(x, scale, zero_point))
    stored = export.store_codes(codes, self.bits, signed=self.symmetric)
    g = self.granularity
    return export.QArray(
      codes=stored,
      scale=np.asarray(scale),
      zero_point=None if zero_point is None else np.asarray(zero_point),
      bits=self.bits,
      dtype=str(jnp.dtype(x.dtype if dtype is None else dtype)),
      group_axis=None if g.group_size is None else g.group_axis,
      group_size=g.group_size,
    )
