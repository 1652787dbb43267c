"""The registry of MiniLM methods: every module here defines ``METHODS = (Method(...), ...)``.

:func:`discover` imports every module of this folder except ``base`` and ``_``-prefixed
helpers, so a technique adds rows by adding one file (see :mod:`experiments.minilm` for
the contract).
"""

from __future__ import annotations

import importlib
import pkgutil

from experiments.minilm.methods.base import (
  ATTENTION,
  DENSE,
  MLP,
  Context,
  Method,
  Result,
  Unavailable,
  flatten_tokens,
)

__all__ = ["ATTENTION", "DENSE", "MLP", "Context", "Method", "Result", "Unavailable", "discover", "flatten_tokens"]


def discover() -> dict[str, Method]:
  """Imports every method module and returns ``{name: method}`` in table order.

  Raises:
    TypeError: if a module does not define ``METHODS``, a tuple of :class:`Method`.
    ValueError: if two methods share a name.
  """
  found: dict[str, Method] = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name == "base" or info.name.startswith("_"):
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    methods = getattr(module, "METHODS", None)
    if not isinstance(methods, tuple) or not all(isinstance(m, Method) for m in methods):
      raise TypeError(f"method module {module.__name__} must define METHODS = (Method(...), ...)")
    for m in methods:
      if m.name in found:
        raise ValueError(f"two methods are named {m.name!r}")
      found[m.name] = m
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
