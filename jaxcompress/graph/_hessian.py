"""Calibration statistics for one-shot post-training methods: per-site input Hessians.

The layer-wise reconstruction problem of OBQ, GPTQ and SparseGPT is
``min_Ŵ ‖X Wᵀ - X Ŵᵀ‖²`` per layer, whose Hessian in ``Ŵ`` is ``H = 2 XᵀX`` (here averaged
over the calibration tokens: ``H = 2 XᵀX / n``). :func:`input_hessians` gathers it for
every plain Dense site of a model through :func:`jaxcompress.graph.capture`;
:func:`layerwise` runs a per-layer solver over the sites in execution order, each layer's
Hessian taken from the inputs that the already-compressed layers before it produce (the
papers' sequential scheme); :func:`damped_inverse_cholesky` is the damped factorization
both solvers start from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree, leaves_with_paths, map_with_path
from jaxcompress.graph._dense import (
  as_inputs,
  as_mask,
  capture_inputs,
  check_mask,
  is_dense_site,
  no_valid_token,
  selected,
)
from jaxcompress.graph._trace import Site, find_sites, make_jaxpr


class InputHessian(NamedTuple):
  """The input statistics of one weight leaf.

  Attributes:
    hessian: ``float32[in, in]``, ``2 XᵀX / tokens`` over the leaf's (unmasked) input rows.
    tokens: how many input rows (tokens) it averages.
    site: the first :class:`~jaxcompress.graph.Site` that reads the leaf.
  """

  hessian: np.ndarray
  tokens: int
  site: Site


def dense_sites(
  apply_fn: Callable[..., Any], params: PyTree, batch: Any, where: select.Where = None
) -> dict[str, list[Site]]:
  """The Dense sites of the selected leaves, ``{path: [site, ...]}`` in execution order.

  Raises:
    ValueError: if ``where`` (when given) selects a leaf that feeds no plain Dense site
      (a conv kernel, a transposed use, an embedding read by a gather), naming it, or if
      nothing is selected.
  """
  closed, paths, _ = make_jaxpr(apply_fn, params, *as_inputs(batch))
  leaves = dict(leaves_with_paths(params))
  chosen = selected(params, where)
  out: dict[str, list[Site]] = {}
  for site in find_sites(closed, paths):
    if site.path in chosen and is_dense_site(site):
      out.setdefault(site.path, []).append(site)
  if where is not None:
    missing = sorted(chosen - set(out))
    if missing:
      raise ValueError(
        f"where={where!r} selects leaves that feed no plain Dense site (x @ kernel outside loops): {missing[:10]}"
      )
  if not out:
    raise ValueError(
      f"no plain Dense site (x @ kernel) found among the selected leaves; the leaves are {list(leaves)[:20]}"
    )
  return out


@jax.jit
def _gram(x: jax.Array, mask: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(Σ xᵀx, rows, max |x|)`` over the rows of ``x`` (flattened to ``(rows, in)``) that ``mask`` keeps."""
  rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  if mask is None:
    n = jnp.asarray(rows.shape[0], jnp.float32)
  else:
    keep = mask.reshape(-1).astype(bool)
    rows, n = jnp.where(keep[:, None], rows, 0.0), jnp.sum(keep).astype(jnp.float32)
  return jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST), n, jnp.max(jnp.abs(rows), initial=0.0)


def _inputs_fn(apply_fn: Callable[..., Any], sites: dict[str, list[Site]]) -> Callable[..., Any]:
  """A jitted ``(params, *inputs) -> {site.key: input}`` over the given sites."""
  keys = {s.key for ss in sites.values() for s in ss}
  return capture_inputs(apply_fn, lambda path, site: site.key in keys and is_dense_site(site))


def _masks_for(batches: list[Any], token_mask: Any) -> list[Any]:
  if token_mask is None:
    return [None] * len(batches)
  if callable(token_mask):
    masks = [as_mask(token_mask(b)) for b in batches]
  else:
    masks = [as_mask(m) for m in token_mask]
  if len(masks) != len(batches):
    raise ValueError(f"token_mask has {len(masks)} masks for {len(batches)} batches")
  if not any(np.any(m) for m in masks):
    raise no_valid_token()
  return masks


def _add(sums: dict[str, list[Any]], path: str, xs: list[Any], mask: Any, sites: list[Site]) -> None:
  for site, x in zip(sites, xs):
    check_mask(site.key, mask, tuple(x.shape[:-1]), tuple(x.shape))
    xtx, n, absmax = _gram(x, mask)
    # Each batch's Gram matrix is float32; their sum over batches is kept in float64 on the
    # host, so that many batches do not lose the small ones to rounding.
    s = sums.setdefault(path, [0.0, 0.0, 0.0])
    s[0] = s[0] + np.asarray(xtx, np.float64)
    s[1] += float(n)
    s[2] = max(s[2], float(absmax)) if np.isfinite(float(absmax)) else float("inf")  # inf: a NaN or inf input


def _accumulate(
  inputs_fn: Callable[..., Any],
  params: PyTree,
  batches: list[Any],
  masks: list[Any],
  sites: dict[str, list[Site]],
  paths: list[str],
) -> dict[str, list[Any]]:
  """Sums of ``xᵀx`` and row counts over the batches for ``paths``."""
  sums: dict[str, list[Any]] = {}
  for batch, mask in zip(batches, masks):
    captured = inputs_fn(params, *as_inputs(batch))
    for path in paths:
      _add(sums, path, [captured[s.key] for s in sites[path]], mask, sites[path])
  return sums


def _accumulate_group(
  inputs_fn: Callable[..., Any],
  params: PyTree,
  batches: list[Any],
  masks: list[Any],
  sites: dict[str, list[Site]],
  remaining: list[str],
) -> tuple[list[str], dict[str, list[Any]]]:
  """The first remaining leaf and the other remaining leaves whose single site reads
  exactly the same input (on every batch), with their sums."""
  head = remaining[0]
  single = lambda p: len(sites[p]) == 1
  group = [head] + [p for p in remaining[1:] if single(head) and single(p)]
  sums: dict[str, list[Any]] = {}
  for batch, mask in zip(batches, masks):
    captured = inputs_fn(params, *as_inputs(batch))
    x0 = captured[sites[head][0].key]
    group = [head] + [
      p
      for p in group[1:]
      if captured[sites[p][0].key].shape == x0.shape and np.array_equal(captured[sites[p][0].key], x0)
    ]
    for path in group:
      _add(sums, path, [captured[s.key] for s in sites[path]], mask, sites[path])
  return group, sums


def _finish(path: str, sums: list[Any], site: Site) -> InputHessian:
  total, tokens, absmax = sums
  if tokens == 0:
    raise no_valid_token(path)
  h = (2.0 * total / tokens).astype(np.float32)
  if not np.all(np.isfinite(h)):
    if np.isfinite(absmax):
      raise ValueError(
        f"the input Hessian of site {path!r} overflows float32: its calibration inputs are finite but too large "
        f"(max|x|={absmax:.3g}; XᵀX needs max|x| below about 1.8e19): rescale the inputs"
      )
    raise ValueError(f"the input Hessian of site {path!r} is not finite (NaN or inf in its calibration inputs)")
  return InputHessian(h, int(tokens), site)


def input_hessians(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  *,
  where: select.Where = None,
  token_mask: Any = None,
) -> dict[str, InputHessian]:
  """The input Hessian ``H = 2 XᵀX / n`` of every selected Dense kernel.

  ``X`` holds the site's input rows: an input of rank > 2 (``(batch, tokens, in)``) is
  flattened to ``(rows, in)``; with ``token_mask`` the masked rows (padding) are dropped
  and ``n`` counts the kept rows only. Each batch's ``XᵀX`` is computed in float32 under
  ``jit`` (at ``Precision.HIGHEST``) and the batches are summed in float64 on the host;
  the result is float32. A kernel read at several sites gets the rows of all of them.
  Flax Dense kernels are ``(in, out)``, so ``H`` is ``(in, in)``.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the model's params.
    batches: calibration batches, each a tuple of inputs (or a single array).
    where: which kernels (default: every leaf read by a plain Dense site ``x @ kernel``).
    token_mask: ``None``; a callable ``batch -> bool[...]`` (for a transformer, the
      attention mask, ``(batch, tokens)``); or a sequence of such masks, one per batch.
      Its shape must be the leading axes of each selected site's input.

  Returns:
    ``{path: InputHessian}``.

  Raises:
    ValueError: if ``batches`` is empty, if no batch has a valid token for a site, if a
      mask's shape does not match a site's input, if the inputs are not finite, or as
      :func:`dense_sites`.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 0.0], [1.0, 2.0]])
    >>> hs = input_hessians(lambda p, x: x @ p['w'], {'w': jnp.ones((2, 3))}, [x])
    >>> hs['w'].hessian.tolist()  # 2 * x.T @ x / 2
    [[2.0, 2.0], [2.0, 4.0]]
  """
  batches = list(batches)
  if not batches:
    raise ValueError("calibration with no batches: `batches` was empty")
  sites = dense_sites(apply_fn, params, batches[0], where)
  masks = _masks_for(batches, token_mask)
  sums = _accumulate(_inputs_fn(apply_fn, sites), params, batches, masks, sites, list(sites))
  return {path: _finish(path, sums[path], sites[path][0]) for path in sites}


def unit_scale(hessian: np.ndarray) -> np.ndarray:
  """``H / mean(diag H)`` in float32 (``H`` itself when its diagonal is all zero).

  GPTQ's and SparseGPT's updates (``err / U_jj · U_{j,:}``) and saliency rankings do not
  change when ``H`` is multiplied by a constant ``c > 0`` (``U`` scales by ``c^(-1/2)``)
  and their damping is relative, so the solvers factorize this well-scaled copy: a finite
  Hessian near float32's range (or among its denormals) then factorizes without overflow
  or underflow."""
  h = np.asarray(hessian, np.float64)
  c = float(np.mean(np.diagonal(h))) if h.size else 0.0
  return (h / c).astype(np.float32) if c > 0 and np.isfinite(c) else np.asarray(hessian, np.float32)


def damped_inverse_cholesky(
  hessian: Any, damp: float, *, attempts: int = 5, name: str = "layer"
) -> tuple[jax.Array, jax.Array, float]:
  """The upper Cholesky factor of the damped inverse Hessian, as GPTQ and SparseGPT use it.

  Dead inputs (``H_jj = 0``: an input that is always zero) get ``H_jj = 1`` (their
  weights are zeroed by the caller, as in the reference implementations). Then
  ``H + λ·mean(diag H)·I = L Lᵀ`` and ``H⁻¹ = Uᵀ U`` with ``U`` upper triangular. When a
  factorization fails (few calibration tokens make ``H`` singular, and float32 rounding
  then makes it indefinite), ``λ`` is multiplied by 10 and it is tried again, up to
  ``attempts`` times, with a warning.

  Args:
    hessian: ``float32[in, in]``, symmetric positive semi-definite.
    damp: the relative damping ``λ > 0`` (GPTQ's default 0.01).
    attempts: factorizations tried.
    name: what to call the layer in messages.

  Returns:
    ``(U, dead, λ_used)``: ``float32[in, in]``, ``bool[in]`` and the damping that worked.

  Raises:
    ValueError: if ``damp <= 0`` or no attempt factorizes.
  """
  damp = validate.check_float("damp", damp, low=0.0, low_open=True)
  h = jnp.asarray(hessian, jnp.float32)
  for attempt in range(attempts):
    lam = damp * 10.0**attempt
    u, dead, ok = _inverse_cholesky(h, jnp.float32(lam))
    if bool(ok):
      if attempt:
        warnings.warn(
          f"{name}: the Cholesky factorization of the damped Hessian failed at damp={damp}; "
          f"it succeeded with damp raised to {lam:g} (the Hessian is singular: too few calibration tokens?)",
          stacklevel=3,
        )
      return u, dead, lam
  raise ValueError(
    f"{name}: the damped Hessian could not be factorized even with damp={damp * 10.0 ** (attempts - 1):g}"
  )


@jax.jit
def _inverse_cholesky(h: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  d = jnp.diagonal(h)
  dead = d == 0
  h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
  d = jnp.diagonal(h)
  h = h + jnp.diag(jnp.full_like(d, lam * jnp.mean(d)))
  # With P the reversal permutation and P H P = L Lᵀ: H⁻¹ = (P L⁻¹ P)ᵀ (P L⁻¹ P), and P L⁻¹ P
  # is upper triangular, so it is U. One Cholesky and one triangular inverse, where
  # inverting H and factorizing H⁻¹ again (the reference's way) costs twice as much.
  chol = jnp.linalg.cholesky(h[::-1, ::-1])
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  u = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)[::-1, ::-1]
  return u, dead, jnp.all(jnp.isfinite(u))


def for_each_block(cols: int, block_size: int, step: Callable[[Any, int, Any], Any], carry: Any) -> Any:
  """Runs ``carry = step(i1, size, carry)`` over the blocks ``[i1, i1 + size)`` of
  ``range(cols)``: the full blocks under one ``fori_loop`` (``i1`` traced, so the compiled
  size does not grow with their number), then the shorter last block, if any."""
  full, tail = divmod(cols, block_size)
  if full:
    carry = jax.lax.fori_loop(0, full, lambda b, c: step(b * block_size, block_size, c), carry)
  if tail:
    carry = step(full * block_size, tail, carry)
  return carry


class LayerReport(NamedTuple):
  """What a one-shot method did to one kernel.

  Attributes:
    damp: the relative damping ``λ`` that factorized the Hessian (above the requested
      one when the factorization failed and it was raised).
    tokens: calibration rows the Hessian averages.
    error: ``mean_x ‖x (W - Ŵ)‖²`` over the calibration rows, ``tr(ΔWᵀ H ΔW) / 2``.
    dead: inputs that were always zero (their weights are set to 0).
  """

  damp: float
  tokens: int
  error: float
  dead: int


def output_error(kernel: Any, compressed: Any, hessian: Any) -> float:
  """``tr(ΔWᵀ H ΔW) / 2`` for ``ΔW = kernel - compressed`` (``(in, out)``) and ``H = 2XᵀX/n``:
  the mean over calibration rows of ``‖x ΔW‖²``."""
  d = np.asarray(kernel, np.float64) - np.asarray(compressed, np.float64)
  return float(np.sum(d * (np.asarray(hessian, np.float64) @ d)) / 2)


class LayerResult(NamedTuple):
  """What a per-layer solver returns to :func:`layerwise`.

  Attributes:
    dense: the compressed kernel as the model will see it, ``(in, out)`` in the leaf's
      dtype (the next layers' inputs are computed with it).
    leaf: what the result tree holds at the leaf (a compressed leaf, or ``dense``).
    extra: anything the caller collects per leaf (a mask, a report).
  """

  dense: Any
  leaf: Any
  extra: Any


def layerwise(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  solve: Callable[[str, jax.Array, InputHessian], LayerResult],
  *,
  where: select.Where = None,
  token_mask: Any = None,
  sequential: bool = True,
) -> tuple[PyTree, PyTree, dict[str, Any]]:
  """Runs ``solve`` on every selected Dense kernel with its input Hessian.

  With ``sequential=True`` (GPTQ's and SparseGPT's scheme) the kernels are solved in
  execution order and each one's Hessian is computed with the earlier kernels already
  replaced by their solutions, so a layer corrects the error the layers before it made.
  Kernels whose inputs are identical (a transformer's query, key and value projections)
  are solved together from one pass. Cost: one forward pass over the calibration set
  per such group (MiniLM: 4 per transformer block, 24 in all) instead of one; the jitted
  forward compiles once.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the model's params.
    batches: calibration batches (tuples of inputs, or arrays).
    solve: ``solve(path, kernel, input_hessian) -> LayerResult``.
    where, token_mask: as for :func:`input_hessians`.
    sequential: solve layer by layer on the compressed model's inputs; ``False``: every
      Hessian from the original model in one pass.

  Returns:
    ``(result_tree, dense_tree, {path: extra})``: the params with ``solve``'s leaves, the
    params with the dense solutions, and the extras.

  Raises:
    ValueError: as :func:`input_hessians`, or if ``sequential`` is not a bool.
  """
  if not isinstance(sequential, bool):
    raise ValueError(f"sequential must be a bool, got {sequential!r}")
  batches = list(batches)
  if not batches:
    raise ValueError("calibration with no batches: `batches` was empty")
  sites = dense_sites(apply_fn, params, batches[0], where)
  masks = _masks_for(batches, token_mask)
  inputs_fn = _inputs_fn(apply_fn, sites)
  leaves = dict(leaves_with_paths(params))
  results: dict[str, LayerResult] = {}
  if not sequential:
    sums = _accumulate(inputs_fn, params, batches, masks, sites, list(sites))
    for path in sites:
      results[path] = solve(path, jnp.asarray(leaves[path]), _finish(path, sums[path], sites[path][0]))
  current, remaining = params, list(sites)  # execution order of each leaf's first site
  while sequential and remaining:
    group, sums = _accumulate_group(inputs_fn, current, batches, masks, sites, remaining)
    for path in group:
      results[path] = solve(path, jnp.asarray(leaves[path]), _finish(path, sums[path], sites[path][0]))
    remaining = [p for p in remaining if p not in group]
    current = _replace(current, {p: results[p].dense for p in group})
  packed = _replace(params, {p: r.leaf for p, r in results.items()})
  dense = _replace(params, {p: r.dense for p, r in results.items()})
  return packed, dense, {p: r.extra for p, r in results.items()}


def _replace(params: PyTree, new: dict[str, Any]) -> PyTree:
  return map_with_path(lambda path, leaf: new.get(path, leaf), params)
