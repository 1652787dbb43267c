"""Calibration inputs of Dense sites as ``(tokens, features)`` matrices, padding dropped.

The activation-aware post-training methods (Wanda, SmoothQuant, AWQ) all read the same
thing: what each Dense layer ``y = x @ W`` sees on calibration data, one row per token.
:func:`dense_inputs` runs :func:`~jaxcompress.graph.capture` over the batches, flattens
every leading axis of each site's input into tokens, drops the tokens a per-example mask
marks as padding, and keeps per-channel statistics (and optionally the tokens).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from jaxcompress.core import select
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph._rewrite import capture
from jaxcompress.graph._trace import Site, trace

TokenMask = int | Callable[[tuple[Any, ...]], Any] | None


@dataclasses.dataclass
class DenseInputs:
  """What one Dense site saw on the calibration set.

  Attributes:
    site: the :class:`~jaxcompress.graph.Site` (its ``path`` is the kernel's).
    absmax: ``float32[features]``, ``max |x_j|`` over the valid tokens.
    absmean: ``float32[features]``, mean ``|x_j|``.
    sqnorm: ``float64[features]``, ``sum x_j^2`` (so ``sqrt`` is the L2 norm ``‖X_j‖₂``).
    count: number of valid tokens.
    tokens: ``float32[n, features]``, the first ``max_tokens`` valid tokens, or ``None``.
  """

  site: Site
  absmax: np.ndarray
  absmean: np.ndarray
  sqnorm: np.ndarray
  count: int
  tokens: np.ndarray | None


def dense_layout(site: Site, leaf_shape: tuple[int, ...]) -> int:
  """How many leading axes of the kernel (and trailing axes of the input) a Dense site contracts.

  Raises:
    ValueError: naming the site, unless it is ``x @ W`` with ``W`` the leaf as stored,
      contracting ``W``'s leading axes with ``x``'s trailing ones (Flax ``(in, out)``).
  """
  why = None
  if site.op != "dot_general":
    why = f"it is a {site.op}, not a Dense matmul"
  else:
    (lc, rc), (lb, rb) = site.params["dimension_numbers"]
    a_c, w_c = (lc, rc) if site.weight_operand == 1 else (rc, lc)
    k = len(w_c)
    na = len(site.activation_shape)
    if lb or rb:
      why = "it has batch dimensions"
    elif tuple(site.weight_shape) != tuple(leaf_shape) or site.leaf_axes not in (None, tuple(range(len(leaf_shape)))):
      why = f"the kernel is reshaped or transposed there (used as {site.weight_shape}, stored as {leaf_shape})"
    elif tuple(w_c) != tuple(range(k)) or tuple(a_c) != tuple(range(na - k, na)):
      why = "it does not contract the kernel's leading axes with the input's trailing axes"
    elif na <= k:
      why = "its input has no token axis"
    if why is None:
      return k
  raise ValueError(
    f"site {site.key!r} is not a Dense layer x @ W with W (in, out) as Flax stores it: {why}; exclude it with where="
  )


class PathSet(frozenset):
  """A hashable ``where=`` selecting the sites of the kernels whose paths it holds.

  Hashable by value, so :func:`dense_inputs` reuses one compiled capture for repeated
  calls on the same model and selection (a compressor's ``init`` run again).
  """

  def __call__(self, path: str, site: Any = None) -> bool:
    return path in self


@functools.lru_cache(maxsize=16)
def _cached_capture(apply_fn: Callable[..., Any], where: PathSet) -> Callable[..., Any]:
  return jax.jit(capture(apply_fn, where=where))


def _capture_fn(apply_fn: Callable[..., Any], where: select.Where) -> Callable[..., Any]:
  if isinstance(where, PathSet):
    try:
      return _cached_capture(apply_fn, where)
    except TypeError:  # an unhashable apply_fn
      pass
  return jax.jit(capture(apply_fn, where=where))


def _batch_mask(token_mask: TokenMask, inputs: tuple[Any, ...]) -> np.ndarray | None:
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
  return np.asarray(m).astype(bool)


def dense_inputs(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  *,
  where: select.Where = None,
  token_mask: TokenMask = None,
  max_tokens: int | None = 0,
) -> dict[str, DenseInputs]:
  """Per-channel statistics (and tokens) of the inputs of a model's Dense sites.

  Each selected site's input ``x: [..., features]`` (leading axes: examples, tokens)
  is flattened to ``(tokens, features)``; with ``token_mask`` the tokens it marks False
  (padding) are dropped. Inputs are gathered in float32 on the host, one batch at a time.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the model's params (the kernels' paths name the sites).
    batches: an iterable of batches; each a tuple of inputs (or a single array).
    where: which sites, by kernel path (a regex, a predicate ``(path, site)``, or
      ``None`` for every site). Every selected site must be a Dense ``x @ W``.
    token_mask: ``None`` (every token counts), the index of the batch input holding a
      ``[batch, tokens]`` mask (1 = real token; ``1`` for ``(input_ids,
      attention_mask)``), or a callable ``batch -> mask``. The mask's shape must be the
      leading shape of each site's input.
    max_tokens: how many valid tokens to keep per site in ``tokens`` (``None``: all;
      ``0``: none, statistics only).

  Returns:
    ``{site.key: DenseInputs}`` for every selected site outside loops and branches.

  Raises:
    ValueError: if ``batches`` is empty, a site is not a Dense layer, the mask's shape
      does not lead a site's input, no token is valid (a calibration set of padding
      only), or a site's valid inputs hold NaN or inf — each naming the value.
  """
  run = _capture_fn(apply_fn, where)
  leaf_shapes = {path: tuple(np.shape(leaf)) for path, leaf in leaves_with_paths(params)}
  acc: dict[str, dict[str, Any]] = {}
  sites: dict[str, Site] = {}
  seen = 0
  for batch in batches:
    inputs = batch if isinstance(batch, tuple) else (batch,)
    seen += 1
    mask = _batch_mask(token_mask, inputs)
    _, captured = run(params, *inputs)
    if not sites:
      every = {s.key: s for s in trace(apply_fn, params, *inputs)}
      sites.update({k: every[k] for k in captured})
    for key, record in captured.items():
      site = sites[key]
      k = dense_layout(site, leaf_shapes.get(site.path, ()))
      x = np.asarray(record["input"], np.float32)
      lead = x.shape[: x.ndim - k]
      x = x.reshape(int(np.prod(lead)), int(np.prod(x.shape[x.ndim - k :])))  # -1 fails on 0 tokens
      if mask is not None:
        if tuple(mask.shape) != tuple(lead):
          raise ValueError(
            f"token_mask of shape {mask.shape} does not match the leading shape {lead} of site {key!r}'s input"
          )
        x = x[mask.reshape(-1)]
      a = acc.setdefault(key, {"absmax": None, "abssum": 0.0, "sqnorm": 0.0, "count": 0, "tokens": []})
      if x.shape[0]:
        ax = np.abs(x)
        a["absmax"] = ax.max(0) if a["absmax"] is None else np.maximum(a["absmax"], ax.max(0))
        a["abssum"] = a["abssum"] + ax.sum(0, dtype=np.float64)
        a["sqnorm"] = a["sqnorm"] + np.square(x, dtype=np.float64).sum(0)
        a["count"] += x.shape[0]
        kept = sum(t.shape[0] for t in a["tokens"])
        room = x.shape[0] if max_tokens is None else max(max_tokens - kept, 0)
        if room:
          a["tokens"].append(x[:room])
  if not seen:
    raise ValueError("calibration with no batches: `batches` was empty")
  out = {}
  for key, a in acc.items():
    if a["count"] == 0:
      why = "every batch is empty" if token_mask is None else f"token_mask={token_mask!r} marks every token as padding"
      raise ValueError(
        f"the calibration batches hold no valid token for site {key!r} ({why}): pass batches with real tokens"
      )
    if not np.all(np.isfinite(a["absmax"])):
      bad = np.flatnonzero(~np.isfinite(a["absmax"]))
      raise ValueError(
        f"the calibration inputs of site {key!r} are not finite (NaN or inf in input features "
        f"{bad[:10].tolist()}): the statistics would be meaningless; check the batches and the layers before it"
      )
    out[key] = DenseInputs(
      site=sites[key],
      absmax=a["absmax"].astype(np.float32),
      absmean=(a["abssum"] / a["count"]).astype(np.float32),
      sqnorm=np.asarray(a["sqnorm"], np.float64),
      count=a["count"],
      tokens=np.concatenate(a["tokens"]) if a["tokens"] else None,
    )
  return out
