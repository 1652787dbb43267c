"""HWGQ (Cai et al. 2017): the half-wave Gaussian quantizer of activations.

Numerics: :func:`half_normal_levels` (Lloyd's algorithm on the half-normal density, on
the host), :func:`hwgq_quantize` (one array, with the clipped or log-tailed ReLU as its
backward); :func:`hwgq_activations` is the model-side compressor. Binary weights come
from :func:`~jaxcompress.quantization.xnor_net` in a :func:`~jaxcompress.chain`: HWGQ's
W1A2 network is ``chain(xnor_net(), hwgq_activations(2))``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.graph._trace import Site
from jaxcompress.quantization import _activations as activations
from jaxcompress.quantization import _ste, uniform

_SQRT2 = math.sqrt(2.0)


def _cdf(t: np.ndarray) -> np.ndarray:
  """The half-normal CDF ``P(0 < z <= t | z > 0) = erf(t / sqrt 2)`` (1 at infinity)."""
  return np.vectorize(lambda v: 1.0 if math.isinf(v) else math.erf(v / _SQRT2))(t)


def _partial_mean(t: np.ndarray) -> np.ndarray:
  """``int_0^t z p(z) dz`` for the half-normal density ``p(z) = 2 phi(z)``: ``sqrt(2/pi) (1 - exp(-t^2/2))``."""
  return math.sqrt(2 / math.pi) * (1 - np.exp(-np.square(t) / 2))


@functools.cache
def _levels(bits: int, kind: str) -> tuple[float, ...]:
  m = 2**bits - 1
  levels = np.arange(1, m + 1, dtype=np.float64) * (2.0 / m)
  for _ in range(10000):
    # bins: (0, t_1], (t_1, t_2], ..., (t_{m-1}, inf) with t_i the midpoints (t_0 = 0:
    # every positive input gets a positive level, as the paper's quantizer)
    edges = np.concatenate([[0.0], (levels[:-1] + levels[1:]) / 2, [np.inf]])
    mass = np.diff(_cdf(edges))
    first = np.diff(_partial_mean(edges))  # int z p(z) over each bin
    if kind == "lloyd":  # each level the conditional mean of its bin
      new = first / np.maximum(mass, 1e-300)
    else:  # uniform q_i = i * delta; d MSE / d delta = 0 at the current bins
      i = np.arange(1, m + 1)
      new = i * (np.sum(i * first) / np.sum(i * i * mass))
    if np.max(np.abs(new - levels)) < 1e-13:
      levels = new
      break
    levels = new
  return tuple(float(v) for v in levels)


def half_normal_levels(bits: int, kind: str = "uniform") -> np.ndarray:
  """The positive levels of the MSE-optimal quantizer of a unit half-normal variable.

  HWGQ maps ``z <= 0`` to 0 and each ``z > 0`` to one of ``m = 2^bits - 1`` positive
  levels ``q_1 < ... < q_m`` (the bin ``(t_{i-1}, t_i]``, ``t_0 = 0``, ``t_i`` the midpoints,
  ``t_m = inf``); the levels minimize ``E[(z - Q(z))^2]`` for ``z`` with the density
  ``2 phi(z)`` on ``z > 0`` (the positive half of a unit Gaussian). Found by Lloyd's
  algorithm on the exact density (bin masses and first moments in closed form, iterated
  to 1e-13): ``"lloyd"`` moves each level to the conditional mean of its bin (the
  unconstrained optimum); ``"uniform"`` constrains ``q_i = i * delta`` and sets ``delta``
  to the least-squares optimum for the current bins each iteration. The paper runs the
  uniform quantizer (for hardware efficiency); its ``delta`` for 2 bits is 0.5388 (the
  paper's 0.538).

  Args:
    bits: 1..8.
    kind: ``"uniform"`` or ``"lloyd"``.

  Returns:
    ``float64[2^bits - 1]``, increasing (in units of the Gaussian's standard deviation).

  Raises:
    ValueError: for ``bits`` outside 1..8 or an unknown ``kind``.

  References:
    Cai, He, Sun & Vasconcelos 2017, "Deep Learning with Low Precision by Half-wave
    Gaussian Quantization", https://arxiv.org/abs/1702.00953; Lloyd 1982, "Least squares
    quantization in PCM".

  Example:
    >>> half_normal_levels(2).round(4).tolist()
    [0.5388, 1.0776, 1.6164]
    >>> half_normal_levels(2, "lloyd").round(4).tolist()
    [0.3177, 1.0001, 1.8936]
  """
  bits = validate.check_bits("bits", bits, high=8)
  kind = validate.check_choice("kind", kind, ("uniform", "lloyd"))
  return np.asarray(_levels(bits, kind))


def positive_rms(x: jax.Array) -> jax.Array:
  """``sqrt(mean(x^2 | x > 0))``: the standard deviation ``s`` of a zero-mean Gaussian
  whose positive half the positive entries of ``x`` are (``E[z^2 | z > 0] = s^2``), in
  float32 for half types, without overflow (scaled by ``max|x|`` first), floored at the
  dtype's tiny (0 positive entries give ``tiny``)."""
  x = uniform.upcast(x)
  top = uniform.floor_positive(jnp.max(jnp.abs(x)))
  pos = x > 0
  r = jnp.where(pos, uniform.divide(x, top), 0)
  n = jnp.maximum(jnp.sum(pos), 1).astype(x.dtype)
  return uniform.floor_positive(top * jnp.sqrt(jnp.sum(r * r) / n))


def _hwgq_rule(backward, z, scale, levels):
  q = levels * scale  # the levels at this scale
  edges = (q[:-1] + q[1:]) / 2
  index = jnp.sum(z[..., None] > edges, axis=-1)
  y = jnp.where(z > 0, q[index], 0).astype(z.dtype)
  top = q[-1]
  inside = (z > 0) & (z <= top)
  if backward == "clipped":
    return y, _ste.Local(mask=inside), (None, None)
  # log-tailed ReLU: q_m + log(z - tau) above q_m with tau = q_m - 1 (scaled): slope s / (z - tau)
  tau = top - scale
  tail = uniform.divide(jnp.broadcast_to(scale, z.shape), jnp.maximum(z - tau, scale))
  factor = jnp.where(inside, 1, jnp.where(z > top, tail, 0)).astype(z.dtype)
  return y, _ste.Local(factor=factor), (None, None)


def hwgq_quantize(z: jax.Array, scale: jax.Array, levels: jax.Array, backward: str = "clipped") -> jax.Array:
  """The half-wave Gaussian quantizer: ``Q(z) = 0`` for ``z <= 0``, ``s q_i`` for ``z`` in
  the ``i``-th bin of the levels scaled by ``s`` (thresholds at the midpoints).

  Backward (the paper's §3.3-3.4): ``"clipped"``, the clipped ReLU's derivative ``1`` for
  ``0 < z <= s q_m``, else 0; ``"log_tailed"``, the log-tailed ReLU's: ``1`` on
  ``(0, s q_m]``, ``1 / (z/s - tau)`` above it with ``tau = q_m - 1`` (so the slope is 1
  at ``q_m`` and decays), 0 for ``z <= 0``. No gradient reaches ``scale`` (a batch
  statistic) or the levels.

  Args:
    z: float array (pre-activations; negative entries map to 0, as ReLU).
    scale: ``s > 0``, a scalar (the Gaussian's standard deviation).
    levels: ``float[m]``, the unit levels (:func:`half_normal_levels`).
    backward: ``"clipped"`` or ``"log_tailed"``.

  Returns:
    ``z``'s shape and dtype.

  References:
    Cai, He, Sun & Vasconcelos 2017, https://arxiv.org/abs/1702.00953.
  """
  backward = validate.check_choice("backward", backward, ("clipped", "log_tailed"))
  dt = uniform.compute_dtype(jnp.result_type(z))
  scale = jnp.asarray(scale, dt)
  levels = jnp.asarray(levels, dt)
  return _ste.surrogate(functools.partial(_hwgq_rule, backward), z, scale, levels)


def hwgq_activations(
  bits: int = 2,
  *,
  levels: str = "uniform",
  backward: str = "clipped",
  where: select.Where = None,
) -> Compressor:
  """HWGQ activations as a model-side compressor: the input of each selected matmul or
  convolution is quantized by :func:`hwgq_quantize`.

  The paper applies HWGQ after BatchNorm, whose batch statistics make the pre-activations
  a unit Gaussian, so fixed levels fit every layer. Here the levels are fitted to each
  batch's statistics directly: ``s`` is :func:`positive_rms` of the site's input over the
  batch (the standard deviation of the Gaussian whose positive half the positive entries
  are; the input is the post-ReLU activation, and HWGQ of ``relu(z)`` is HWGQ of ``z``),
  so a network without BatchNorm gets the same quantizer. It is a batch statistic: under
  ``pmap`` each device's is its own shard's (like BatchNorm without cross-replica
  statistics), and evaluation on a batch uses that batch's. No learned parameters.

  Args:
    bits: bits per activation, 1..8 (``2^bits - 1`` positive levels and 0).
    levels: ``"uniform"`` (the paper's) or ``"lloyd"`` (:func:`half_normal_levels`).
    backward: ``"clipped"`` (the paper's default) or ``"log_tailed"``.
    where: which sites, by weight path (default: all; the first layer's input, the image,
      is usually left out).

  Returns:
    A :class:`~jaxcompress.Compressor` whose ``rewrite`` quantizes the activations.

  Raises:
    ValueError: for ``bits`` outside 1..8, an unknown ``levels`` or ``backward``.

  References:
    Cai, He, Sun & Vasconcelos 2017, "Deep Learning with Low Precision by Half-wave
    Gaussian Quantization", https://arxiv.org/abs/1702.00953.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = hwgq_activations(1)  # one level: E[z | z > 0] = 0.798 s
    >>> params, state = c.init({'w': jnp.ones((4, 1))})
    >>> x = jnp.array([[-1.0, 2.0, 2.0, 2.0]])  # s = 2
    >>> round(float(c.rewrite(model, params, state)(c.apply(params, state), x)[0, 0]), 3)  # 3 * 0.798 * 2
    4.787
  """
  unit = jnp.asarray(half_normal_levels(bits, levels), jnp.float32)
  backward = validate.check_choice("backward", backward, ("clipped", "log_tailed"))

  def rule(extra, data):
    del extra, data

    def one(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      scale = jax.lax.stop_gradient(positive_rms(activation))
      return site.compute(hwgq_quantize(activation, scale, unit, backward), weight)

    return one

  return activations.site_compressor(rule, init=lambda params: (None, None), where=where)
