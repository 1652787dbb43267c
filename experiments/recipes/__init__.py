"""The registry of compression recipes.

Every module in this folder (except ``base`` and ``_``-prefixed helpers) defines
``RECIPE``, a :class:`~experiments.recipes.base.Recipe`, or ``RECIPES``, a tuple of them
(one technique at several settings). :func:`discover` imports them all, so a new
technique adds a row to the results by adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from experiments.recipes.base import FineTune, Recipe

__all__ = ["FineTune", "Recipe", "discover"]


def discover() -> dict[str, Recipe]:
  """Imports every recipe module and returns ``{name: recipe}`` in table order.

  Raises:
    TypeError: if a module defines neither a ``RECIPE`` that is a :class:`Recipe` nor a
      tuple ``RECIPES`` of them.
    ValueError: if two recipes share a name.
  """
  found: dict[str, Recipe] = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name == "base" or info.name.startswith("_"):
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    recipes = getattr(module, "RECIPES", None) or (getattr(module, "RECIPE", None),)
    for recipe in recipes:
      if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe module {module.__name__} must define RECIPE = Recipe(...) or RECIPES = (...)")
      if recipe.name in found:
        raise ValueError(f"two recipes are named {recipe.name!r}")
      found[recipe.name] = recipe
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
