"""Uniform activation quantization as a :mod:`jaxcompress.graph` rewrite rule.

The rule fake-quantizes the activation operand of each selected site (the input of a
matmul or convolution) and then runs the original op, so any JAX model gets quantized
activations without changing its code. Ranges are either static (calibrated, see
:mod:`jaxcompress.quantization.calibration`) or dynamic (each batch's own range, or with
``per_token`` each token's own: SmoothQuant's O1, Xiao et al. 2022,
https://arxiv.org/abs/2211.10438, where O2 is dynamic per tensor and O3 static per tensor). For
learned activation quantizers (LSQ, PACT) see :mod:`jaxcompress.quantization._activations`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcompress import graph
from jaxcompress.quantization._spec import QuantSpec


def contracted_axes(site: graph.Site, ndim: int) -> tuple[int, ...]:
  """The axes of a matmul site's activation (rank ``ndim``) that the op contracts (a Dense input's features).

  Raises:
    ValueError: naming the site, if it is not a ``dot_general`` (per-token scales need a token axis).
  """
  if site.op != "dot_general":
    raise ValueError(f"per_token activation scales need a matmul; site {site.key!r} is a {site.op}")
  (lc, rc), _ = site.params["dimension_numbers"]
  axes = tuple(lc if site.weight_operand == 1 else rc)
  return tuple(a % ndim for a in axes)


def token_params(spec: QuantSpec, site: graph.Site, activation: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """``(scale, zero_point)`` per token: each row's own min/max over the contracted (feature) axes.

  For a Dense input ``x: [..., F]`` the scale has shape ``[..., 1]``: ``max |x_t| / qmax``
  for token ``t`` when symmetric (SmoothQuant's per-token dynamic quantization), its
  ``[min(x_t, 0), max(x_t, 0)]`` with a zero point when affine.
  """
  x = jax.lax.stop_gradient(activation)
  axes = contracted_axes(site, x.ndim)
  return spec.params_from_range(jnp.min(x, axis=axes, keepdims=True), jnp.max(x, axis=axes, keepdims=True))


def activation_scale(
  spec: QuantSpec, site: graph.Site, activation: jax.Array, ranges: dict | None, per_token: bool = False
) -> tuple[jax.Array, jax.Array | None]:
  """``(scale, zero_point)`` for a site's activation: calibrated, from the batch itself, or per token.

  Raises:
    ValueError: if ``ranges`` is given but has no entry for the site (calibration never
      reached it, for example because it sits inside a ``cond`` branch or a loop), or
      ``per_token`` on a site that is not a matmul.
  """
  if per_token:
    return token_params(spec, site, activation)
  if ranges is None:
    return spec.params(jax.lax.stop_gradient(activation))
  if site.key not in ranges:
    raise ValueError(
      f"site {site.key!r} has no calibrated range (calibrated: {sorted(ranges)[:10]}); calibration "
      "never reached it (sites inside scan, while and cond are not captured)"
    )
  return spec.params_from_range(*ranges[site.key])


def activation_rule(spec: QuantSpec, ranges: dict | None = None, *, per_token: bool = False) -> graph.Rule:
  """A rewrite rule that fake-quantizes each site's activation before the op.

  Args:
    spec: the activation quantizer (usually per tensor; 8 bits).
    ranges: ``{site.key: (xmin, xmax)}`` from calibration for static ranges, or
      ``None`` for dynamic ranges (each call's own min/max, without gradient).
    per_token: dynamic scales per token instead (each row's own range over the features
      the matmul contracts; SmoothQuant's O1); needs ``ranges=None``.

  Raises:
    ValueError: if ``per_token`` is given with ``ranges`` (static ranges are per tensor);
      when run, if a selected site is not a matmul under ``per_token``.

  Returns:
    A rule for :func:`jaxcompress.graph.rewrite`. Its gradient with respect to the
    activation is the straight-through one (identity inside the range).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import graph
    >>> f = graph.rewrite(lambda p, x: x @ p['w'], activation_rule(QuantSpec(2)))
    >>> f({'w': jnp.eye(2)}, jnp.array([[0.2, -1.0]])).tolist()  # 2 bits: levels -1, 0, 1
    [[0.0, -1.0]]
  """

  if not isinstance(per_token, bool):
    raise ValueError(f"per_token must be a bool, got {per_token!r}")
  if per_token and ranges is not None:
    raise ValueError("per_token=True scales are dynamic (each token's own range); pass ranges=None")

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    scale, zero_point = activation_scale(spec, site, activation, ranges, per_token)
    return site.compute(spec.fake_quant(activation, scale, zero_point), weight)

  return rule
