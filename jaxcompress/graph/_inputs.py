"""Calibration inputs of Dense sites as ``(tokens, features)`` matrices, padding dropped.

The activation-aware post-training methods (Wanda, SmoothQuant, AWQ) all read the same
thing: what each Dense layer ``y = x @ W`` sees on calibration data, one row per token.
:func:`dense_inputs` runs :func:`~jaxcompress.graph.capture` over the batches, flattens
every leading axis of each site's input into tokens, drops the tokens a per-example mask
marks as padding, and keeps per-channel statistics (and optionally the tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from jaxcompress.core import select
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.graph._dense import (
  TokenMask,
  as_inputs,
  batch_mask,
  capture_inputs,
  dense_layout,
  flat_tokens,
  no_valid_token,
)
from jaxcompress.graph._trace import Site, trace


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
  run = capture_inputs(apply_fn, where)
  leaf_shapes = {path: tuple(np.shape(leaf)) for path, leaf in leaves_with_paths(params)}
  acc: dict[str, dict[str, Any]] = {}
  sites: dict[str, Site] = {}
  seen = 0
  for batch in batches:
    inputs = as_inputs(batch)
    seen += 1
    mask = batch_mask(token_mask, inputs)
    captured = run(params, *inputs)
    if not sites:
      every = {s.key: s for s in trace(apply_fn, params, *inputs)}
      sites.update({k: every[k] for k in captured})
    for key, x in captured.items():
      site = sites[key]
      x = flat_tokens(x, dense_layout(site, leaf_shapes.get(site.path, ())), mask, key)
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
      raise no_valid_token(key, token_mask)
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
