"""Relaxed Quantization (Louizos et al. 2019): a learned grid, logistic input noise and a
concrete relaxation of the categorical over the grid, for weights and activations.

Numerics (one array): :func:`relaxed_log_probabilities` (the paper's categorical over the
grid), :func:`relaxed_sample` (its concrete/Gumbel-softmax relaxation) and
:func:`relaxed_round` (the deterministic rounding of the deployed network);
:func:`relaxed_quantization` (weights) and :func:`relaxed_activations` (model-side) are
the compressors.

*Training and deployment.* The relaxed sample is noisy and off the grid, so what is
trained and what is deployed differ by design. Both compressors take the number of
training steps, ``total_steps``: while the state's step count is below it, the weights
(``apply``) and activations (``rewrite``) are relaxed samples; from step ``total_steps``
on (the state a training run of ``total_steps`` steps ends with) they are deterministically
rounded to the nearest grid point, which is what ``pack`` stores. To evaluate mid-run,
use ``state._replace(count=total_steps)`` (weights: ``state``; activations: the
:class:`~jaxcompress.quantization.SiteState`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export, graph
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor, split
from jaxcompress.graph._trace import Site
from jaxcompress.quantization import _activations as activations
from jaxcompress.quantization import _reparam, _ste, uniform

_SIGMA_FLOOR = 1e-6
_Z_LIMIT = 1e30  # standardized distances are clipped here, so x / sigma never overflows to inf


def _check_temperature(name, value):
  return validate.check_float(name, value, low=0.0, low_open=True)


@functools.partial(jax.jit, static_argnames=("bits",))
def grid(scale: jax.Array, offset: jax.Array, bits: int) -> jax.Array:
  """The grid ``g_i = offset + i * scale``, ``i = 0 .. 2^bits - 1`` (the paper's ``G``).

  Args:
    scale: the grid spacing ``alpha`` (> 0), a scalar.
    offset: the grid's first point ``beta``, a scalar.
    bits: 1..8.

  Returns:
    ``float[2^bits]`` in ``scale``'s dtype.
  """
  i = jnp.arange(2**bits, dtype=jnp.result_type(scale))
  return uniform.saturate(offset + i * scale)


@functools.partial(jax.jit, static_argnames=("bits",))
def relaxed_log_probabilities(
  x: jax.Array, scale: jax.Array, offset: jax.Array, sigma: jax.Array, bits: int
) -> jax.Array:
  """Log-probabilities of the categorical over the grid for inputs with logistic noise.

  The paper's Eq. 3: with ``x~ = x + eps``, ``eps ~ Logistic(0, sigma)``, the grid point
  ``g_i`` gets the mass of its bin, ``P(x^ = g_i) = sigmoid((g_i + alpha/2 - x) / sigma)
  - sigmoid((g_i - alpha/2 - x) / sigma)``; the noise is truncated to the grid's range
  ``[g_0 - alpha/2, g_K + alpha/2]`` and the masses renormalized (§2.2), so the
  probabilities sum to 1 for any ``x``. Computed in log space without cancellation:
  ``sigmoid(u) - sigmoid(v) = sigmoid(u) sigmoid(-v) (1 - exp(v - u))`` and the last
  factor is the same for every bin (the bins are ``alpha`` wide), so it cancels in the
  normalization. Inputs further than ``60 sigma`` outside the grid's range are moved to
  that distance (where the normalized masses no longer change, to float precision) and
  distances are clipped at ``±1e30`` standard units, so inputs up to the dtype's largest
  finite value give finite probabilities, ordered as the formula's.

  Args:
    x: float array.
    scale: ``alpha`` (> 0), broadcastable to ``x``.
    offset: ``beta``, broadcastable to ``x``.
    sigma: the noise scale (> 0), broadcastable to ``x``; floored at ``1e-6 * scale``
      (where the categorical is already one-hot to float precision), so a training run
      that drives it towards 0 never makes a NaN gradient.
    bits: 1..8 (``2^bits`` grid points).

  Returns:
    ``float32[*x.shape, 2^bits]`` (float32 for half types; ``x``'s dtype otherwise):
    normalized log-probabilities (``logsumexp`` over the last axis is 0).
  """
  x = uniform.upcast(x)
  dt = x.dtype
  scale, offset, sigma = (jnp.asarray(a, dt) for a in (scale, offset, sigma))
  # sigma floored at 1e-6 of a bin: the categorical is already hard there, and distances
  # stay finite, so no 0 * inf reaches the gradient when training drives sigma towards 0
  sigma = jnp.maximum(sigma, scale * _SIGMA_FLOOR)
  g = offset[..., None] + jnp.arange(2**bits, dtype=dt) * scale[..., None]
  half = (scale / 2)[..., None]
  # Past 60 sigma beyond the grid's range the logistic tail is exponential to float
  # precision, so the normalized masses no longer depend on x: clipping x there is exact
  # and keeps the distances finite and ordered for inputs up to the dtype's maximum.
  reach = uniform.saturate(scale / 2 + 60 * sigma)
  low = uniform.saturate(offset - reach)
  high = uniform.saturate(offset + (2**bits - 1) * scale + reach)
  xs, s = jnp.clip(x, low, high)[..., None], sigma[..., None]
  u = jnp.clip((g + half - xs) / s, -_Z_LIMIT, _Z_LIMIT)
  v = jnp.clip((g - half - xs) / s, -_Z_LIMIT, _Z_LIMIT)
  logits = jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-v)
  return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("bits",))
def relaxed_sample(
  x: jax.Array,
  scale: jax.Array,
  offset: jax.Array,
  sigma: jax.Array,
  bits: int,
  temperature: jax.Array,
  key: jax.Array,
) -> jax.Array:
  """The concrete (Gumbel-softmax) relaxation of the grid categorical: ``x^ = sum_i pi_i g_i``
  with ``pi = softmax((log P + G) / temperature)``, ``G`` i.i.d. standard Gumbel noise
  (Louizos et al. 2019, Eq. 4; Maddison et al. 2017, Jang et al. 2017).

  Differentiable in ``x``, ``scale``, ``offset`` and ``sigma``; as ``temperature -> 0``
  the sample becomes one-hot (a draw of the categorical) and as ``sigma -> 0`` the
  categorical concentrates on the nearest grid point, so both together give
  :func:`relaxed_round`.

  Args:
    x, scale, offset, sigma, bits: as :func:`relaxed_log_probabilities`.
    temperature: > 0 (a scalar; a value <= 0 is clipped to the dtype's tiny, the factories
      reject it).
    key: a PRNG key.

  Returns:
    ``x``'s shape and dtype (saturated to its finite range).
  """
  logp = relaxed_log_probabilities(x, scale, offset, sigma, bits)
  dt = logp.dtype
  gumbel = jax.random.gumbel(key, logp.shape, dt)
  t = jnp.maximum(jnp.asarray(temperature, dt), jnp.finfo(dt).tiny)
  pi = jax.nn.softmax((logp + gumbel) / t, axis=-1)
  index = pi @ jnp.arange(2**bits, dtype=dt)  # sum_i pi_i g_i = beta + alpha * sum_i pi_i i
  out = jnp.asarray(offset, dt) + jnp.asarray(scale, dt) * index
  return uniform.saturate(out, jnp.result_type(x))


def _indices(x, scale, offset, bits):
  dt = jnp.result_type(scale)
  return jnp.clip(jnp.round(uniform.divide(x.astype(dt) - offset, scale)), 0, 2**bits - 1).astype(jnp.int32)


_SCALE_INITS = ("range", "mse")
_MSE_CANDIDATES = 100  # grid spacings tried by the 'mse' init: 1/100 .. 100/100 of the range's


@functools.partial(jax.jit, static_argnames=("bits", "signed"))
def _mse_grid(x: jax.Array, bits: int, signed: bool) -> tuple[jax.Array, jax.Array]:
  """``(scale, offset)`` of the grid with 0 on it whose rounding of ``x`` has the least squared
  error, over ``scale = k / 100`` of the range init's spacing (``k = 1 .. 100``); offset
  ``-2^(bits-1) scale`` (``signed``; ``-scale`` at 1 bit) or 0."""
  x = uniform.upcast(x).reshape(-1)
  if signed:
    amax = uniform.floor_positive(jnp.max(jnp.abs(x)))
    top = 2 * amax if bits == 1 else amax / (2 ** (bits - 1) - 1)
    first = -1.0 if bits == 1 else -float(2 ** (bits - 1))
  else:
    top = uniform.floor_positive(jnp.max(x) / (2**bits - 1))
    first = 0.0

  def error(k):
    scale = uniform.floor_positive(top * k / _MSE_CANDIDATES)
    offset = first * scale
    q = offset + jnp.clip(jnp.round(uniform.divide(x - offset, scale)), 0, 2**bits - 1) * scale
    return jnp.sum(jnp.square(q - x))

  ks = jnp.arange(1, _MSE_CANDIDATES + 1, dtype=x.dtype)
  scale = uniform.floor_positive(uniform.saturate(top * ks[jnp.argmin(jax.lax.map(error, ks))] / _MSE_CANDIDATES))
  return scale, uniform.saturate(first * scale)


@functools.partial(jax.jit, static_argnames=("bits",))
def relaxed_round(x: jax.Array, scale: jax.Array, offset: jax.Array, bits: int) -> jax.Array:
  """The deterministic rounding of the deployed network: the nearest grid point
  ``g_i``, ``i = clip(round((x - beta) / alpha), 0, 2^bits - 1)`` (round half to even),
  read from :func:`grid` so the packed codebook reproduces it bit for bit. Gradient:
  straight-through to ``x``.

  Args:
    x: float array.
    scale: ``alpha`` (> 0), a scalar.
    offset: ``beta``, a scalar.
    bits: 1..8.

  Returns:
    ``x``'s shape and dtype.
  """
  scale, offset = jnp.asarray(scale, x.dtype), jnp.asarray(offset, x.dtype)
  return _ste.straight_through(x, grid(scale, offset, bits)[_indices(x, scale, offset, bits)])


class RelaxedParams(NamedTuple):
  """A relaxed-quantized weight in the trainable tree of :func:`relaxed_quantization`.

  Attributes:
    weight: the float weights.
    scale: the grid spacing ``alpha``, a positive scalar.
    offset: the grid's first point ``beta``, a scalar.
    sigma: the logistic noise scale, a positive scalar.
  """

  weight: jax.Array
  scale: jax.Array
  offset: jax.Array
  sigma: jax.Array


class RelaxedLeaf(NamedTuple):
  """Per-leaf state of :func:`relaxed_quantization`.

  Attributes:
    key: raw ``uint32`` PRNG key data of this leaf.
  """

  key: Any


def _temperature_schedule(temperature, total_steps):
  if temperature is None:  # a linear anneal from 2 to 0.5 over training (see the docstrings)
    return lambda step: 2.0 + (0.5 - 2.0) * jnp.minimum(jnp.asarray(step, jnp.float32) / total_steps, 1.0)
  return temperature


def _setup(bits, total_steps, temperature, sigma_ratio, seed):
  bits = validate.check_bits("bits", bits, high=8)
  total_steps = validate.check_int("total_steps", total_steps, low=1)
  seed = validate.check_int("seed", seed)
  sigma_ratio = validate.check_float("sigma_ratio", sigma_ratio, low=0.0, low_open=True)
  temperature = _temperature_schedule(temperature, total_steps)
  schedule = validate.as_schedule("temperature", temperature, _check_temperature)
  if callable(temperature):
    validate.probe_schedule("temperature", schedule, validate.run_steps(total_steps), _check_temperature)
  return bits, total_steps, seed, sigma_ratio, schedule


@functools.partial(jax.jit, static_argnames=("bits",))  # one compile per shape, eager calls included
def _switch(x, scale, offset, sigma, bits, temperature, key, training):
  return jax.lax.cond(
    training,
    lambda: relaxed_sample(x, scale, offset, sigma, bits, temperature, key),
    lambda: relaxed_round(x, scale, offset, bits),
  )


def _training(count, total_steps):
  """``count < total_steps``: a Python bool for a concrete count (an evaluation of a given state,
  whose forward then compiles only its own branch), a traced bool inside a training step."""
  training = count < total_steps
  return training if isinstance(training, jax.core.Tracer) else bool(training)


def _quantize(x, scale, offset, sigma, bits, temperature, key, training):
  """Relaxed sample while ``training``, deterministic rounding otherwise (a traced ``training``:
  both, under one ``cond``)."""
  if training is True:
    return relaxed_sample(x, scale, offset, sigma, bits, temperature, key)
  if training is False:
    return relaxed_round(x, scale, offset, bits)
  return _switch(x, scale, offset, sigma, bits, temperature, key, training)


def relaxed_quantization(
  bits: int = 4,
  *,
  total_steps: int,
  temperature: validate.ScalarOrSchedule | None = None,
  sigma_ratio: float = 1 / 3,
  scale_init: str = "range",
  seed: int = 0,
  where: select.Where = None,
) -> Compressor:
  """Relaxed Quantization of weights: a learned grid per layer, trained through the
  concrete relaxation of the categorical that logistic noise induces over it.

  ``init`` replaces each selected leaf by :class:`RelaxedParams` ``(weight, scale, offset,
  sigma)``: a grid of ``2^bits`` points ``offset + i * scale`` that starts symmetric about
  0 with 0 on it, ``scale = max|w| / (2^(bits-1) - 1)`` (2 bits and more; ``2 max|w|`` at
  1 bit) and ``offset = -2^(bits-1) * scale`` (``-max|w|`` at 1 bit), and ``sigma = sigma_ratio *
  scale`` (a third of a bin by default; the paper gives no value, this keeps most of the
  noise within the nearest bins). While the step count is below ``total_steps``, ``apply``
  draws :func:`relaxed_sample` at ``temperature(count)`` with the key ``fold_in(leaf key,
  count)``, so a run is reproducible, resumable and identical across ``pmap`` devices;
  the weights, the grid (``scale``, ``offset``) and ``sigma`` all train by its gradient. From step
  ``total_steps`` on, ``apply`` is :func:`relaxed_round` (the paper's deterministic
  rounding at the end). ``update`` keeps ``scale`` and ``sigma`` positive. ``pack`` stores
  the rounding as a :class:`~jaxcompress.export.CodebookArray` (the ``2^bits`` grid values
  and ``bits``-bit indices): the learned offset is not an integer number of steps, so a
  :class:`~jaxcompress.export.QArray`'s integer zero point cannot hold it exactly.
  The paper's "local grid" (only points within a few ``sigma`` of ``x``) is an
  efficiency cut; here the sum runs over every grid point.

  Args:
    bits: bits per weight, 1..8.
    total_steps: training steps (>= 1): the relaxed sample is used before it, the
      rounding from it on.
    temperature: the concrete distribution's temperature, > 0, or a schedule ``step ->
      value`` (probed at every step of the run); ``None`` anneals it linearly from 2 to
      0.5 over ``total_steps``.
    sigma_ratio: the initial ``sigma`` as a fraction of ``scale``, > 0.
    scale_init: the initial grid: ``'range'`` (above: the largest ``|w|`` on the grid's top
      point) or ``'mse'``: the grid (0 on it, ``offset = -2^(bits-1) scale``) whose rounding of
      the trained ``w`` has the least squared error, over ``scale`` = 1/100 .. 100/100 of the
      range init's. The paper does not say how a pretrained network's grid starts; at 2 bits
      the range init puts the one positive point at ``max|w|``, so most weights round to 0
      (LeNet-5 on the digits: 19% accuracy rounded at init, against 81% for ``'mse'``).
    seed: seeds the per-leaf keys.
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`RelaxedLeaf`.

  Raises:
    ValueError: if ``bits`` is outside 1..8, ``total_steps < 1``, ``sigma_ratio <= 0``,
      the temperature is <= 0 (a constant, or a schedule at any step of the run) or
      ``scale_init`` is unknown; at ``init``, as :func:`jaxcompress.core.leafwise.init_selected`.

  References:
    Louizos, Reisser, Blankevoort, Gavves & Welling 2019, "Relaxed Quantization for
    Discretized Neural Networks", https://arxiv.org/abs/1810.01875.

  Example:
    >>> import jax.numpy as jnp
    >>> c = relaxed_quantization(2, total_steps=1)  # grid -2, -1, 0, 1 (scale max|w| = 1)
    >>> params, state = c.init({'w': jnp.array([[0.6, -0.2], [-1.0, 0.25]])})
    >>> c.apply(params, state._replace(count=1))['w'].tolist()  # deployed: the nearest point
    [[1.0, 0.0], [-1.0, 0.0]]
  """
  bits, total_steps, seed, sigma_ratio, schedule = _setup(bits, total_steps, temperature, sigma_ratio, seed)
  scale_init = validate.check_choice("scale_init", scale_init, _SCALE_INITS)
  root = jax.random.key(seed)
  half = 2 ** (bits - 1)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    counter = [0]

    def init_leaf(path, w):
      del path
      if scale_init == "mse":
        scale, offset = (v.astype(w.dtype) for v in _mse_grid(w, bits, True))
      else:
        amax = uniform.floor_positive(jnp.max(jnp.abs(uniform.upcast(w)))).astype(w.dtype)
        scale = 2 * amax if bits == 1 else amax / (half - 1)
        scale = uniform.floor_positive(uniform.saturate(scale))
        offset = -amax if bits == 1 else uniform.saturate(-half * scale)
      sigma = uniform.floor_positive(scale * sigma_ratio)
      key = jax.random.key_data(jax.random.fold_in(root, counter[0]))
      counter[0] += 1
      return RelaxedParams(w, scale, offset, sigma), RelaxedLeaf(key)

    trainable, leaves = _reparam.init(params, where, init_leaf)
    return trainable, leafwise.LeafwiseState.start(leaves)

  def apply(params, state):
    training = _training(state.count, total_steps)
    temp = schedule(state.count)

    def one(node, leaf):
      key = jax.random.fold_in(jax.random.wrap_key_data(leaf.key), state.count)
      return _quantize(node.weight, node.scale, node.offset, node.sigma, bits, temp, key, training)

    return _reparam.map_nodes(one, params, state.leaves, RelaxedLeaf, RelaxedParams)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    fix = lambda node, _: node._replace(
      scale=uniform.floor_positive(node.scale), sigma=uniform.floor_positive(node.sigma)
    )
    return _reparam.map_nodes(fix, params, state.leaves, RelaxedLeaf, RelaxedParams), state.advance()

  def pack_leaf(node, _):
    w = jnp.asarray(node.weight)
    g = grid(jnp.asarray(node.scale, w.dtype), jnp.asarray(node.offset, w.dtype), bits)
    indices = np.asarray(_indices(w, jnp.asarray(node.scale, w.dtype), jnp.asarray(node.offset, w.dtype), bits))
    return export.from_assignments(np.asarray(g), indices)

  def pack(params, state):
    return _reparam.map_nodes(pack_leaf, params, state.leaves, RelaxedLeaf, RelaxedParams)

  return Compressor(init, apply, update, pack)


def _passthrough_rule(extra, data):
  """The base rule of a site compressor whose own ``rewrite`` (reading the step count) replaces it."""
  del extra, data
  return lambda site, activation, weight: site.compute(activation, weight)


def relaxed_activations(
  apply_fn: Callable[..., Any],
  bits: int = 4,
  *,
  inputs: Sequence[Any],
  total_steps: int,
  temperature: validate.ScalarOrSchedule | None = None,
  sigma_ratio: float = 1 / 3,
  scale_init: str = "range",
  seed: int = 0,
  where: select.Where = None,
) -> Compressor:
  """Relaxed Quantization of activations: the input of each selected matmul/convolution
  is a relaxed sample on a learned grid (training) or its nearest grid point (deployed).

  A model-side compressor (:mod:`jaxcompress.quantization._activations`): each site's
  ``{'scale', 'offset', 'sigma'}`` is trainable (``extra`` of its
  :class:`~jaxcompress.Joint` tree). ``init`` runs the model on ``inputs`` and starts each
  site's grid at ``offset = min(x, 0)`` with ``scale = (max(x) - offset) / (2^bits - 1)``
  over the example activation (an unsigned grid from 0 for post-ReLU inputs), and
  ``sigma = sigma_ratio * scale``. While the step count is below ``total_steps``,
  ``rewrite`` feeds each site :func:`relaxed_sample` (key ``fold_in(site key, count)``:
  under ``pmap`` every device draws the same pattern for its own shard, so replicas
  agree but differ from one device holding the whole batch); from ``total_steps`` on,
  :func:`relaxed_round`. ``update`` keeps ``scale`` and ``sigma`` positive.

  Args:
    apply_fn: ``apply_fn(params, *inputs)``, batch first.
    bits: bits per activation, 1..8.
    inputs: example positional inputs of ``apply_fn`` (one batch).
    total_steps, temperature, sigma_ratio, seed: as :func:`relaxed_quantization`.
    scale_init: ``'range'`` (above) or ``'mse'``: for a non-negative example activation, the
      grid from 0 whose rounding of it has the least squared error, over ``scale`` = 1/100 ..
      100/100 of the range init's (a site with negative inputs keeps the range init).
    where: which sites, by weight path (default: all).

  Returns:
    A :class:`~jaxcompress.Compressor` (state :class:`~jaxcompress.quantization.SiteState`
    whose ``data`` holds each site's key).

  Raises:
    ValueError: as :func:`relaxed_quantization`; at ``init``, as
      :func:`~jaxcompress.quantization.site_quantizer`.

  References:
    Louizos, Reisser, Blankevoort, Gavves & Welling 2019, "Relaxed Quantization for
    Discretized Neural Networks", https://arxiv.org/abs/1810.01875.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = relaxed_activations(model, 2, inputs=(jnp.array([[0.0, 1.5, 3.0]]),), total_steps=1)
    >>> tree, state = c.init({'w': jnp.ones((3, 1))})  # grid 0, 1, 2, 3
    >>> deployed = state._replace(count=1)
    >>> c.rewrite(model, tree, deployed)(c.apply(tree, deployed), jnp.array([[0.4, 1.6, 9.0]])).tolist()
    [[5.0]]
  """
  bits, total_steps, seed, sigma_ratio, schedule = _setup(bits, total_steps, temperature, sigma_ratio, seed)
  scale_init = validate.check_choice("scale_init", scale_init, _SCALE_INITS)
  inputs = tuple(inputs)
  root = jax.random.key(seed)

  def init(params):
    found = activations.capture_inputs(apply_fn, params, inputs, where)
    extra, keys = {}, {}
    for i, (key, (_, x)) in enumerate(sorted(found.items())):
      x = uniform.upcast(x)
      if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"the example activation feeding site {key!r} is not finite: check `inputs`")
      if scale_init == "mse" and bool(jnp.min(x) >= 0):
        scale, offset = _mse_grid(x, bits, False)
      else:
        offset = jnp.minimum(jnp.min(x), 0)
        scale = uniform.floor_positive(uniform.saturate(jnp.max(x) / (2**bits - 1) - offset / (2**bits - 1)))
      extra[key] = {"scale": scale, "offset": offset, "sigma": uniform.floor_positive(scale * sigma_ratio)}
      keys[key] = jax.random.key_data(jax.random.fold_in(root, i))
    return extra, keys

  def update(extra):
    return {
      k: {**node, "scale": uniform.floor_positive(node["scale"]), "sigma": uniform.floor_positive(node["sigma"])}
      for k, node in extra.items()
    }

  base = activations.site_compressor(_passthrough_rule, init=init, update=update, where=where)

  def rewrite(fn, params, state):
    extra = split(params)[1]
    training = _training(state.count, total_steps)
    temp = schedule(state.count)

    def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      if extra is None or site.key not in extra:
        raise ValueError(f"no activation parameters for site {site.key!r} (have {sorted(extra or {})})")
      node = extra[site.key]
      key = jax.random.fold_in(jax.random.wrap_key_data(state.data[site.key]), state.count)
      x = _quantize(activation, node["scale"], node["offset"], node["sigma"], bits, temp, key, training)
      return site.compute(x.astype(activation.dtype), weight)

    return graph.rewrite(fn, rule, where=where)

  return base._replace(rewrite=rewrite)
