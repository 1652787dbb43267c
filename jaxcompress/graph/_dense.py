"""The steps every calibration over Dense sites shares: selection, layout, capture, token masks.

:func:`~jaxcompress.graph.dense_inputs` (Wanda, SmoothQuant, AWQ) and
:func:`~jaxcompress.graph.input_hessians` (GPTQ, SparseGPT) both find the ``x @ W`` sites
of a model, capture each one's input, flatten it to ``(tokens, features)`` and drop the
tokens a mask marks as padding; this module is that one implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxcompress.core import select
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph._rewrite import capture
from jaxcompress.graph._trace import CONTROL_FLOW, Site

TokenMask = int | Callable[[tuple[Any, ...]], Any] | None


def as_inputs(batch: Any) -> tuple[Any, ...]:
  """A batch as the tuple of inputs ``apply_fn(params, *inputs)`` takes."""
  return batch if isinstance(batch, tuple) else (batch,)


def selected(params: PyTree, where: select.Where) -> set[str]:
  """The paths of the leaves ``where`` selects; raises ``ValueError`` naming ``where`` if none."""
  pred = select.as_predicate(where)
  chosen = {p for p, leaf in leaves_with_paths(params) if pred(p, leaf)}
  if not chosen:
    raise ValueError(
      f"where={where!r} selects no leaf (the default takes floating leaves with ndim >= 2); the leaves are "
      f"{[path for path, _ in leaves_with_paths(params)][:20]}"
    )
  return chosen


def _layout(site: Site, leaf_shape: tuple[int, ...]) -> tuple[int, str | None]:
  """``(k, why)``: how many leading kernel axes the site contracts, and why it is not
  ``x @ W`` with ``W`` the leaf as stored (``None`` when it is; the token axis unchecked)."""
  if site.op != "dot_general":
    return 0, f"it is a {site.op}, not a Dense matmul"
  (lc, rc), (lb, rb) = site.params["dimension_numbers"]
  a_c, w_c = (lc, rc) if site.weight_operand == 1 else (rc, lc)
  k, na = len(w_c), len(site.activation_shape)
  if lb or rb:
    return k, "it has batch dimensions"
  if tuple(site.weight_shape) != tuple(leaf_shape) or site.leaf_axes not in (None, tuple(range(len(leaf_shape)))):
    return k, f"the kernel is reshaped or transposed there (used as {site.weight_shape}, stored as {leaf_shape})"
  if tuple(w_c) != tuple(range(k)) or tuple(a_c) != tuple(range(na - k, na)):
    return k, "it does not contract the kernel's leading axes with the input's trailing axes"
  return k, None


def dense_layout(site: Site, leaf_shape: tuple[int, ...]) -> int:
  """How many leading axes of the kernel (and trailing axes of the input) a Dense site contracts.

  Raises:
    ValueError: naming the site, unless it is ``x @ W`` with ``W`` the leaf as stored,
      contracting ``W``'s leading axes with ``x``'s trailing ones (Flax ``(in, out)``).
  """
  k, why = _layout(site, leaf_shape)
  if why is None and len(site.activation_shape) <= k:
    why = "its input has no token axis"
  if why is None:
    return k
  raise ValueError(
    f"site {site.key!r} is not a Dense layer x @ W with W (in, out) as Flax stores it: {why}; exclude it with where="
  )


def is_dense_site(site: Site) -> bool:
  """Whether a site is a plain Dense matmul ``x @ kernel``: the leaf itself is the 2-D
  right operand, its axis 0 contracted with the activation's last axis, no batch axes
  (Flax ``nn.Dense`` / ``nnx.Linear``). Only these sites get input Hessians."""
  if site.weight_operand != 1 or site.leaf_axes != (0, 1) or CONTROL_FLOW & set(site.scopes):
    return False
  return _layout(site, tuple(site.weight_shape)) == (1, None)


class PathSet(frozenset):
  """A hashable ``where=`` selecting the sites of the kernels whose paths it holds.

  Hashable by value, so :func:`capture_inputs` reuses one compiled capture for repeated
  calls on the same model and selection (a compressor's ``init`` run again).
  """

  def __call__(self, path: str, site: Any = None) -> bool:
    return path in self


def _inputs_of(apply_fn: Callable[..., Any], where: select.Where) -> Callable[..., Any]:
  run = capture(apply_fn, where=where)

  def inputs(params: PyTree, *batch_inputs: Any) -> dict[str, Any]:
    _, captured = run(params, *batch_inputs)
    return {k: r["input"] for k, r in captured.items()}

  return jax.jit(inputs)


_cached_inputs_of = functools.lru_cache(maxsize=16)(_inputs_of)


def capture_inputs(apply_fn: Callable[..., Any], where: select.Where) -> Callable[..., dict[str, Any]]:
  """A jitted ``(params, *inputs) -> {site.key: input}`` over the sites ``where`` selects
  (as for :func:`~jaxcompress.graph.capture`); compiled once per model for a :class:`PathSet`."""
  if isinstance(where, PathSet):
    try:
      return _cached_inputs_of(apply_fn, where)
    except TypeError:  # an unhashable apply_fn
      pass
  return _inputs_of(apply_fn, where)


def as_mask(mask: Any) -> np.ndarray:
  """A token mask as a host ``bool`` array (1 = real token)."""
  return np.asarray(mask).astype(bool)


def batch_mask(token_mask: TokenMask, inputs: tuple[Any, ...]) -> np.ndarray | None:
  """The mask of one batch: ``None``, ``inputs[token_mask]`` or ``token_mask(inputs)``.

  Raises:
    ValueError: if an index names no input. TypeError: if ``token_mask`` is none of these.
  """
  if token_mask is None:
    return None
  if isinstance(token_mask, int) and not isinstance(token_mask, bool):
    if not -len(inputs) <= token_mask < len(inputs):
      raise ValueError(f"token_mask={token_mask} is not the index of one of the batch's {len(inputs)} inputs")
    m = inputs[token_mask]
  elif callable(token_mask):
    m = token_mask(inputs)
  else:
    raise TypeError(f"token_mask must be None, an input index or a callable batch -> mask, got {token_mask!r}")
  return as_mask(m)


def check_mask(key: str, mask: np.ndarray | None, lead: tuple[int, ...], shape: tuple[int, ...]) -> None:
  """Raises unless ``mask`` (when given) has the leading shape ``lead`` of site ``key``'s input ``shape``."""
  if mask is not None and tuple(mask.shape) != tuple(lead):
    raise ValueError(
      f"token_mask of shape {tuple(mask.shape)} does not match the leading axes {tuple(lead)} of the input "
      f"of site {key!r} (input {tuple(shape)}); restrict `where` to the sites that read every token"
    )


_UNSAID = object()


def no_valid_token(key: str | None = None, token_mask: Any = _UNSAID) -> ValueError:
  """The error for a calibration set of padding only (for site ``key``, or for every site);
  ``token_mask`` is the user's, when the caller knows it (``None``: no mask, so empty batches)."""
  where = "" if key is None else f" for site {key!r}"
  if token_mask is _UNSAID:
    why = "every batch is empty, or token_mask marks every token as padding (a calibration set of padding only)"
  elif token_mask is None:
    why = "every batch is empty"
  else:
    why = f"token_mask={token_mask!r} marks every token of every batch as padding (a calibration set of padding only)"
  return ValueError(f"the calibration batches hold no valid token{where}: {why}; pass batches with real tokens")


def flat_tokens(x: Any, k: int, mask: np.ndarray | None, key: str) -> np.ndarray:
  """A site's input ``x: [..., features]`` (``k`` trailing feature axes) as float32
  ``(tokens, features)`` on the host, the tokens ``mask`` marks False dropped."""
  x = np.asarray(x, np.float32)
  lead = x.shape[: x.ndim - k]
  check_mask(key, mask, lead, x.shape)
  x = x.reshape(int(np.prod(lead)), int(np.prod(x.shape[x.ndim - k :])))  # -1 fails on 0 tokens
  return x if mask is None else x[mask.reshape(-1)]
