"""Arrays recognized by identity: how a stage made them, for a later rewrite to use.

A stage that knows a cheaper way to recompute its output, or the operands it came from,
records its output with an opaque payload (:func:`record`); a model-side rewrite that is later
given *that very array* (the same Python object) finds the payload (:func:`lookup`). The only
operation between the two that keeps a record is ``chain``'s re-masking of a stage's output
with the earlier stages' keep-masks (:func:`derive`: the new array is the recorded one with
zeros where ``keep`` is False, and the record says so); any other new array (a mask applied by
a stage itself, a cast, a reshape) has no record, and its user takes the general path, which
must compute the same function. No technique learns another's types: core
knows payloads only as objects and masks only as zeros.

Records hold their payload only while the recorded array lives: a weak reference to it
removes the record when it is collected.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Found(NamedTuple):
  """A recorded array's payload, and where zeros were put into it since (``None``: nowhere)."""

  payload: Any
  keep: jax.Array | None


_RECORDS: dict[int, tuple[weakref.ref, Found]] = {}


def record(array: Any, payload: Any, keep: jax.Array | None = None) -> None:
  """Records ``payload`` for ``array`` (and, with ``keep``, that zeros replace it where ``keep`` is False)."""
  key = id(array)
  try:
    ref = weakref.ref(array, lambda _, key=key: _RECORDS.pop(key, None))
  except TypeError:  # a type without weak references: not recorded, so never recognized
    return
  _RECORDS[key] = (ref, Found(payload, keep))


def lookup(array: Any) -> Found | None:
  """The record of ``array`` itself, or ``None`` (never another array's, even at a reused id)."""
  entry = _RECORDS.get(id(array))
  return entry[1] if entry is not None and entry[0]() is array else None


def derive(new: Any, old: Any, keep: jax.Array) -> None:
  """Records ``new = where(keep, old, 0)`` where ``old`` has a record of the same shape."""
  found = lookup(old)
  if found is not None and jnp.shape(keep) == jnp.shape(old):
    record(new, found.payload, keep if found.keep is None else found.keep & keep)
