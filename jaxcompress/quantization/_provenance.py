"""Which arrays are exactly a weight quantizer's fake-quantized output, recognized by identity.

An integer site (``quantize_activations(integer=True)``) needs the int8 codes of the weight it
receives. Re-deriving them from a fake-quantized weight is exact, but under ``jit`` XLA fuses
the fake quantization into the codes' loop, so every weight element is rounded twice per step,
and the float weight it came from is never named. :func:`~jaxcompress.quantization.fake_quant`
therefore records each array it returns with the array it quantized, its spec and its scale.
A site that receives *that very array* (the same Python object: the leaf reached the model
unchanged) takes its codes in one rounding of the source, the codes ``pack`` stores, and can
differentiate at the float weight. ``chain``'s re-masking of a stage's output with earlier
stages' keep-masks keeps the record (:mod:`jaxcompress.core._provenance`: the site zeroes those
codes too, exact because a symmetric grid codes 0 as 0); any other stage in between that
returns a new array (a mask applied by a stage itself, a cast, a reshape) breaks the identity,
and the site falls back to re-deriving the grid from what it received: the same codes, with the
scale taken from the received weight's ``max |w|``, which equals the stage's scale or lies an
ulp from it (an ulp that can flip an activation code in a later layer). So a record makes a
step faster and exactly ``pack``'s, and the fallback differs from it by no more than that
(the forward and the ``backward_operands='quantized'`` gradients; ``'float'`` differentiates
at the float weight only where a record names it, elsewhere at the weight as received).

Records (kept by :mod:`jaxcompress.core._provenance`) hold the source and scale (tracers,
inside a trace) only while the recorded array lives. A record whose source
has been deleted since (a step with ``donate_argnums`` donates the float weights) is never
returned: the site falls back as if there were none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxcompress.core import _provenance as core_provenance


class Record(NamedTuple):
  """How a recorded array was made: ``array = fake_quant(source)`` under ``spec``."""

  spec: Any  # the QuantSpec
  source: jax.Array  # the weight as the quantizer received it (its dtype)
  scale: jax.Array  # the stop-gradient scale, keepdims on the spec's blocked view (float32 for half types)
  zero_point: jax.Array | None


def record(array: Any, spec: Any, source: jax.Array, scale: jax.Array, zero_point: jax.Array | None) -> None:
  """Records that ``array`` is ``source`` fake-quantized under ``spec`` at ``scale``."""
  core_provenance.record(array, Record(spec, source, scale, zero_point))


def lookup(array: Any) -> tuple[Record, jax.Array | None] | None:
  """``(record, keep)`` of ``array`` itself, or ``None`` (never another array's, even at a reused
  id; never one whose source was deleted): ``array`` is the recorded fake quantization with zeros
  where ``keep`` is False (``None``: nowhere; ``chain`` re-masked it with earlier stages' masks)."""
  found = core_provenance.lookup(array)
  if found is None or not isinstance(found.payload, Record) or _deleted(found.payload.source):
    return None
  return found.payload, found.keep


def _deleted(x: Any) -> bool:
  """Whether ``x`` is a concrete array whose buffer was deleted (donated); tracers never are."""
  return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted()
