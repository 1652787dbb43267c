"""Uniform activation quantization as a :mod:`jaxcompress.graph` rewrite rule.

The rule fake-quantizes the activation operand of each selected site (the input of a
matmul or convolution) and then runs the original op, so any JAX model gets quantized
activations without changing its code. Ranges are either static (calibrated, see
:mod:`jaxcompress.quantization.calibration`) or dynamic (each batch's own range). For
learned activation quantizers (LSQ, PACT) see :mod:`jaxcompress.quantization._activations`.
"""

from __future__ import annotations

import jax

from jaxcompress import graph
from jaxcompress.quantization._spec import QuantSpec


def activation_scale(
  spec: QuantSpec, site: graph.Site, activation: jax.Array, ranges: dict | None
) -> tuple[jax.Array, jax.Array | None]:
  """``(scale, zero_point)`` for a site's activation: calibrated, or from the batch itself.

  Raises:
    ValueError: if ``ranges`` is given but has no entry for the site (calibration never
      reached it, for example because it sits inside a ``cond`` branch or a loop).
  """
  if ranges is None:
    return spec.params(jax.lax.stop_gradient(activation))
  if site.key not in ranges:
    raise ValueError(
      f"site {site.key!r} has no calibrated range (calibrated: {sorted(ranges)[:10]}); calibration "
      "never reached it (sites inside scan, while and cond are not captured)"
    )
  return spec.params_from_range(*ranges[site.key])


def activation_rule(spec: QuantSpec, ranges: dict | None = None) -> graph.Rule:
  """A rewrite rule that fake-quantizes each site's activation before the op.

  Args:
    spec: the activation quantizer (usually per tensor; 8 bits).
    ranges: ``{site.key: (xmin, xmax)}`` from calibration for static ranges, or
      ``None`` for dynamic ranges (each call's own min/max, without gradient).

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

  def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    scale, zero_point = activation_scale(spec, site, activation, ranges)
    return site.compute(spec.fake_quant(activation, scale, zero_point), weight)

  return rule
