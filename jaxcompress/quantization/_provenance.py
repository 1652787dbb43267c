"""Which arrays are exactly a weight quantizer's fake-quantized output, recognized by identity.

An integer site (``quantize_activations(integer=True)``) needs the int8 codes of the weight it
receives. Re-deriving them from a fake-quantized weight is exact, but under ``jit`` XLA fuses
the fake quantization into the codes' loop, so every weight element is rounded twice per step,
and the float weight it came from is never named. :func:`~jaxcompress.quantization.fake_quant`
therefore records each array it returns with the array it quantized, its spec and its scale.
A site that receives *that very array* (the same Python object: the leaf reached the model
unchanged) takes its codes in one rounding of the source, the codes ``pack`` stores, and can
differentiate at the float weight. Any stage in between that returns a new array (a mask, a
cast, a reshape) breaks the identity, and the site falls back to re-deriving the codes from
what it received: a record can make a step faster, never different (the forward and the
``backward_operands='quantized'`` gradients; ``'float'`` differentiates at the float weight
only where a record names it, elsewhere at the weight as received).

Records hold the source and scale (tracers, inside a trace) only while the recorded array
lives: a weak reference to it removes the record when it is collected. A record whose source
has been deleted since (a step with ``donate_argnums`` donates the float weights) is never
returned: the site falls back as if there were none.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import jax


class Record(NamedTuple):
  """How a recorded array was made: ``array = fake_quant(source)`` under ``spec``."""

  spec: Any  # the QuantSpec
  source: jax.Array  # the weight as the quantizer received it (its dtype)
  scale: jax.Array  # the stop-gradient scale, keepdims on the spec's blocked view (float32 for half types)
  zero_point: jax.Array | None


_RECORDS: dict[int, tuple[weakref.ref, Record]] = {}


def record(array: Any, spec: Any, source: jax.Array, scale: jax.Array, zero_point: jax.Array | None) -> None:
  """Records that ``array`` is ``source`` fake-quantized under ``spec`` at ``scale``."""
  key = id(array)
  try:
    ref = weakref.ref(array, lambda _, key=key: _RECORDS.pop(key, None))
  except TypeError:  # a type without weak references: not recorded, so never recognized
    return
  _RECORDS[key] = (ref, Record(spec, source, scale, zero_point))


def lookup(array: Any) -> Record | None:
  """The record of ``array`` itself, or ``None`` (never another array's, even at a reused id; never
  one whose source was deleted)."""
  entry = _RECORDS.get(id(array))
  if entry is None or entry[0]() is not array or _deleted(entry[1].source):
    return None
  return entry[1]


def _deleted(x: Any) -> bool:
  """Whether ``x`` is a concrete array whose buffer was deleted (donated); tracers never are."""
  return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted()
