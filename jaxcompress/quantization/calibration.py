"""Calibration: choosing a quantization range from observed values.

A :class:`Calibrator` folds batches of values into a state and then returns a range
``(xmin, xmax)``. Calibration runs on the host over a few batches, outside ``jit``.
:func:`calibrate_activations` gathers the inputs of a model's sites through
:func:`jaxcompress.graph.capture` and calibrates each site's activation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import graph
from jaxcompress.core import select, validate
from jaxcompress.core.tree import PyTree
from jaxcompress.graph._dense import TokenMask, as_inputs, batch_mask, no_valid_token
from jaxcompress.quantization._spec import QuantSpec


class Calibrator(NamedTuple):
  """Folds observed values into a range.

  Attributes:
    init: ``() -> state``.
    update: ``(state, x) -> state`` for a batch of values ``x`` (any shape).
    range: ``(state, spec) -> (xmin, xmax)`` as float32 scalars; ``spec`` is the
      quantizer the range is for (used by MSE search).
  """

  init: Callable[[], Any]
  update: Callable[[Any, Any], Any]
  range: Callable[[Any, QuantSpec], tuple[jax.Array, jax.Array]]


def _no_batches(state: Any) -> None:
  if state is None:
    raise ValueError("calibration saw no batches: pass at least one batch")


def minmax() -> Calibrator:
  """The running minimum and maximum of everything seen.

  Example:
    >>> import jax.numpy as jnp
    >>> c = minmax()
    >>> s = c.update(c.update(c.init(), jnp.array([1.0, -2.0])), jnp.array([3.0]))
    >>> [float(v) for v in c.range(s, QuantSpec(8))]
    [-2.0, 3.0]
  """

  def update(state, x):
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (lo, hi) if state is None else (min(state[0], lo), max(state[1], hi))

  def range_(state, spec):
    _no_batches(state)
    return jnp.float32(state[0]), jnp.float32(state[1])

  return Calibrator(lambda: None, update, range_)


def moving_average(momentum: float = 0.9) -> Calibrator:
  """An exponential moving average of each batch's minimum and maximum.

  ``range <- momentum · range + (1 - momentum) · batch_range``, starting from the
  first batch's range, as TensorFlow's and PyTorch's moving-average observers do.

  Args:
    momentum: weight of the past, in [0, 1).

  Raises:
    ValueError: if ``momentum`` is outside [0, 1).
  """
  m = validate.check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)

  def update(state, x):
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    if state is None:
      return lo, hi
    return m * state[0] + (1 - m) * lo, m * state[1] + (1 - m) * hi

  def range_(state, spec):
    _no_batches(state)
    return jnp.float32(state[0]), jnp.float32(state[1])

  return Calibrator(lambda: None, update, range_)


def _sampler(max_samples: int):
  """Keeps up to ``max_samples`` values per batch, by a fixed stride (deterministic)."""

  def update(state, x):
    flat = np.asarray(x, np.float32).reshape(-1)
    stride = max(1, flat.size // max_samples)
    kept = flat[::stride]
    return kept if state is None else np.concatenate([state, kept])

  return update


def percentile(percent: float = 99.99, *, max_samples: int = 1 << 16) -> Calibrator:
  """The ``percent``-th and ``(100 - percent)``-th percentiles of the values seen.

  Clipping the rare extremes spends the codes on the bulk of the distribution.

  Args:
    percent: in (50, 100].
    max_samples: values kept per batch (a fixed-stride subsample).

  Raises:
    ValueError: if ``percent`` is outside (50, 100] or ``max_samples < 1``.
  """
  p = validate.check_float("percent", percent, low=50.0, high=100.0, low_open=True)
  validate.check_int("max_samples", max_samples, low=1)

  def range_(state, spec):
    _no_batches(state)
    return jnp.float32(np.percentile(state, 100.0 - p)), jnp.float32(np.percentile(state, p))

  return Calibrator(lambda: None, _sampler(max_samples), range_)


def mse(*, num_candidates: int = 100, max_samples: int = 1 << 16) -> Calibrator:
  """The clipping range that minimizes the mean squared quantization error.

  Candidates shrink the observed range ``[xmin, xmax]`` by factors
  ``k / num_candidates``, ``k = 1..num_candidates``; the one whose fake quantization
  (with the given spec) has the smallest mean squared error on the values seen wins.

  Args:
    num_candidates: how many clipping factors to try (>= 1).
    max_samples: values kept per batch.

  Raises:
    ValueError: if ``num_candidates`` or ``max_samples`` is below 1.

  References:
    Banner, Nahshan & Soudry 2019, "Post training 4-bit quantization of convolutional
    networks for rapid-deployment", https://arxiv.org/abs/1810.05723.
  """
  n = validate.check_int("num_candidates", num_candidates, low=1)
  validate.check_int("max_samples", max_samples, low=1)

  def range_(state, spec):
    _no_batches(state)
    x = jnp.asarray(state)
    lo, hi = jnp.min(x), jnp.max(x)
    factors = jnp.arange(1, n + 1, dtype=jnp.float32) / n

    def error(f):
      scale, zero_point = spec.params_from_range(lo * f, hi * f)
      return jnp.mean((spec.fake_quant(x, scale, zero_point) - x) ** 2)

    best = factors[jnp.argmin(jax.vmap(error)(factors))]
    return lo * best, hi * best

  return Calibrator(lambda: None, _sampler(max_samples), range_)


def calibrate_activations(
  apply_fn: Callable[..., Any],
  params: PyTree,
  batches: Iterable[Any],
  spec: QuantSpec,
  calibrator: Calibrator | None = None,
  *,
  where: select.Where = None,
  token_mask: TokenMask = None,
) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Calibrates the activation (input) of every selected site of a model.

  With ``token_mask`` only the real tokens set the ranges: each site's input
  ``[batch, tokens, ...]`` keeps the positions the mask marks 1 (padding would otherwise
  widen a range: in all-MiniLM-L6-v2's first layer by up to 1.55×).

  Args:
    apply_fn: ``apply_fn(params, *inputs)``.
    params: the model's params.
    batches: an iterable of batches; each is a tuple of inputs (or a single array).
    spec: the activation quantizer the ranges are for.
    calibrator: default :func:`minmax`.
    where: which sites, by weight path (as for :func:`jaxcompress.graph.rewrite`).
    token_mask: ``None`` (every position counts), the index of the batch input holding a
      ``[batch, tokens]`` mask (1 = real token; ``1`` for ``(input_ids, attention_mask)``),
      or a callable ``batch -> mask``, as for :func:`jaxcompress.graph.dense_inputs`. The
      mask's shape must lead each selected site's input shape.

  Returns:
    ``{site.key: (xmin, xmax)}`` for every selected site outside loops and branches.

  Raises:
    ValueError: if ``batches`` is empty (no site would be calibrated), the mask's shape
      does not lead a site's input, or ``token_mask`` marks every token as padding.
  """
  calibrator = calibrator or minmax()
  run = jax.jit(graph.capture(apply_fn, where=where))
  states: dict[str, Any] = {}
  seen: set[str] = set()
  for batch in batches:
    inputs = as_inputs(batch)
    mask = batch_mask(token_mask, inputs)
    _, captured = run(params, *inputs)
    for key, record in captured.items():
      seen.add(key)
      x = record["input"] if mask is None else _real_tokens(key, record["input"], mask)
      if x.size:
        states[key] = calibrator.update(states.get(key, calibrator.init()), x)
  if not seen:
    raise ValueError("calibration with no batches: `batches` was empty")
  if seen - set(states):
    raise no_valid_token(sorted(seen - set(states))[0], token_mask)
  ranges = {key: calibrator.range(state, spec) for key, state in states.items()}
  check_ranges(ranges)
  return ranges


def _real_tokens(key: str, x: Any, mask: np.ndarray) -> np.ndarray:
  """``x[mask]``: site ``key``'s input ``[*mask.shape, ...]`` at the real tokens only, on the host."""
  x = np.asarray(x, np.float32)
  if tuple(x.shape[: mask.ndim]) != tuple(mask.shape):
    raise ValueError(
      f"token_mask of shape {tuple(mask.shape)} does not lead the input of site {key!r} (input {tuple(x.shape)}); "
      "restrict `where` to the sites that read every token"
    )
  return x[mask]


def check_ranges(ranges: dict[str, tuple[Any, Any]]) -> None:
  """Raises ``ValueError`` naming the site if a range is non-finite or inverted.

  A NaN or infinity in a calibration batch would otherwise become a NaN scale and turn
  every output of the quantized model into NaN.
  """
  for key, (lo, hi) in ranges.items():
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
      raise ValueError(f"site {key!r} has a non-finite activation range [{lo}, {hi}] (NaN or inf in its inputs)")
    if lo > hi:
      raise ValueError(f"site {key!r} has an inverted activation range [{lo}, {hi}]")
