"""Leaf selection: which leaves of a param tree a compressor acts on.

``where`` may be

- ``None``: the default, floating-point leaves with ``ndim >= 2`` (kernels and
  embeddings; biases and norm scales are skipped);
- a string: a regular expression that must *fully* match the leaf's path string
  (``'Dense_0/kernel'``, ``'layers/0/kernel'``, ``'.*kernel'``);
- a callable ``(path, leaf) -> bool``;
- a combination built with :func:`all_of`, :func:`any_of` and :func:`none_of`, whose
  parts are any of the above.

A ``where`` that selects nothing is an error: a typo must not silently leave a model
uncompressed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jaxcompress.core.tree import PyTree, leaves_with_paths

Predicate = Callable[[str, Any], bool]
Where = None | str | Predicate


def default(path: str, leaf: Any) -> bool:
  """The default selection: floating-point leaves with at least two dimensions."""
  del path
  dtype = getattr(leaf, "dtype", None)
  if dtype is None or len(getattr(leaf, "shape", ())) < 2:
    return False
  return dtype.kind == "f" or "float" in str(dtype)


def as_predicate(where: Where) -> Predicate:
  """Turns any accepted ``where`` into a predicate ``(path, leaf) -> bool``.

  Raises:
    ValueError: if a string is not a valid regular expression.
    TypeError: if ``where`` is none of the accepted kinds.
  """
  if where is None:
    return default
  if isinstance(where, str):
    try:
      pattern = re.compile(where)
    except re.error as e:
      raise ValueError(f"where={where!r} is not a valid regular expression: {e}") from None
    return lambda path, leaf: pattern.fullmatch(path) is not None
  if callable(where):
    return where
  raise TypeError(f"where must be None, a regex string or a callable (path, leaf) -> bool, got {where!r}")


def all_of(*wheres: Where) -> Predicate:
  """Selects the leaves that every one of ``wheres`` selects."""
  preds = [as_predicate(w) for w in wheres]
  return lambda path, leaf: all(p(path, leaf) for p in preds)


def any_of(*wheres: Where) -> Predicate:
  """Selects the leaves that at least one of ``wheres`` selects."""
  preds = [as_predicate(w) for w in wheres]
  return lambda path, leaf: any(p(path, leaf) for p in preds)


def none_of(*wheres: Where) -> Predicate:
  """Selects the leaves that none of ``wheres`` selects (``none_of(w)`` is "not w")."""
  preds = [as_predicate(w) for w in wheres]
  return lambda path, leaf: not any(p(path, leaf) for p in preds)


def explain(where: Where, params: PyTree) -> list[tuple[str, tuple[int, ...], bool]]:
  """Lists every leaf with whether ``where`` selects it.

  Args:
    where: a selection (see the module docstring).
    params: the param tree.

  Returns:
    ``[(path, shape, selected), ...]`` in flattening order.

  Raises:
    ValueError: if ``where`` selects no leaf; the message lists the available paths.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
    >>> explain('.*kernel', params)
    [('dense/bias', (2,), False), ('dense/kernel', (3, 2), True)]
  """
  pred = as_predicate(where)
  rows = [(p, tuple(getattr(x, "shape", ())), bool(pred(p, x))) for p, x in leaves_with_paths(params)]
  if not any(sel for _, _, sel in rows):
    listing = ", ".join(f"{p} {s}" for p, s, _ in rows[:30])
    more = f" and {len(rows) - 30} more" if len(rows) > 30 else ""
    hint = ""
    if isinstance(where, str) and any(re.search(where, p) for p, _, _ in rows):
      hint = f" (a where= regex must match the whole path: did you mean {'.*' + where!r}?)"
    raise ValueError(f"where={where!r} selects no leaf{hint}; the leaves are: {listing}{more}")
  return rows
