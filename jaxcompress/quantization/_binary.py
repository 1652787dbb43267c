"""Binary weights and activations: BinaryConnect, XNOR-Net scaling, BNN activations.

Numerics (:func:`sign`, :func:`binarize`, :func:`binarize_stochastic`,
:func:`binary_activation`, :func:`xnor_scale`) act on one array; :func:`binary_connect`
and :func:`xnor_net` walk the param tree, and :func:`binary_activation_rule` plugs the
activation binarizer into :func:`jaxcompress.graph.rewrite`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress import export
from jaxcompress.core import leafwise, select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.graph._trace import Site
from jaxcompress.quantization import _ste, uniform
from jaxcompress.quantization.granularity import Granularity, from_args


def sign(x: jax.Array) -> jax.Array:
  """``+1`` where ``x >= 0``, ``-1`` elsewhere, in ``x``'s dtype (zero maps to ``+1``)."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def binarize(x: jax.Array) -> jax.Array:
  """Deterministic binarization :func:`sign` with a straight-through gradient.

  Gradient: ``dL/dx = dL/dy`` (identity; BinaryConnect bounds the weights by clipping
  them to ``[-1, 1]`` after each update instead of cancelling the gradient).

  Args:
    x: float array.

  Returns:
    ``±1`` in ``x``'s dtype.

  References:
    Courbariaux, Bengio & David 2015, https://arxiv.org/abs/1511.00363.
  """
  return _ste.straight_through(x, sign(x))


def binarize_stochastic(x: jax.Array, noise: jax.Array) -> jax.Array:
  """Stochastic binarization: ``+1`` with probability ``hard_sigmoid(x) = clip((x+1)/2, 0, 1)``.

  Args:
    x: float array.
    noise: uniform samples in ``[0, 1)`` of ``x``'s shape; the result is ``+1`` where
      ``noise < hard_sigmoid(x)``, ``-1`` elsewhere.

  Returns:
    ``±1`` in ``x``'s dtype. Gradient: straight-through to ``x`` (identity), none to
    ``noise``.

  References:
    Courbariaux, Bengio & David 2015, https://arxiv.org/abs/1511.00363.
  """
  p = jnp.clip((x + 1) / 2, 0, 1)
  return _ste.straight_through(x, jnp.where(noise < p, 1, -1).astype(x.dtype))


def binary_activation(x: jax.Array) -> jax.Array:
  """BNN activation: :func:`sign` forward, hard-tanh straight-through backward.

  Gradient: ``dL/dx = dL/dy * 1[|x| <= 1]``, the derivative of ``hardtanh(x) =
  clip(x, -1, 1)`` (Hubara et al. 2016, Eq. 4).

  Args:
    x: float array.

  Returns:
    ``±1`` in ``x``'s dtype.

  References:
    Hubara, Courbariaux, Soudry, El-Yaniv & Bengio 2016, "Binarized Neural Networks",
    https://arxiv.org/abs/1602.02830.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    >>> binary_activation(x).tolist()
    [-1.0, -1.0, 1.0, 1.0]
    >>> jax.grad(lambda x: binary_activation(x).sum())(x).tolist()
    [0.0, 1.0, 1.0, 0.0]
  """
  return _ste.surrogate(_hardtanh_rule, x)


def _hardtanh_rule(x):
  return sign(x), _ste.Local(factor=(jnp.abs(x) <= 1).astype(x.dtype)), ()


def binary_activation_rule() -> Any:
  """A :func:`jaxcompress.graph.rewrite` rule that binarizes each selected site's input.

  Returns:
    ``rule(site, activation, weight) = site.compute(binary_activation(activation),
    weight)``: the matmul or convolution sees ``sign(activation)`` and the gradient is
    the hard-tanh straight-through estimator (:func:`binary_activation`).

  References:
    Hubara, Courbariaux, Soudry, El-Yaniv & Bengio 2016, "Binarized Neural Networks",
    https://arxiv.org/abs/1602.02830.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import graph
    >>> f = graph.rewrite(lambda p, x: x @ p['w'], binary_activation_rule())
    >>> f({'w': jnp.ones((3, 1))}, jnp.array([[0.2, -0.7, 4.0]])).tolist()
    [[1.0]]
  """

  def rule(site: Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
    return site.compute(binary_activation(activation), weight)

  return rule


def binary_activations(*, where: select.Where = None) -> Compressor:
  """BNN activations as a model-side compressor: each selected site's input is binarized.

  The ``rewrite`` seam runs :func:`binary_activation_rule` at the selected sites (the
  matmul or convolution sees ``sign(x)``, the gradient is the hard-tanh straight-through
  estimator); ``apply`` and ``pack`` leave the params alone, so it chains with a weight
  binarizer: ``chain(binary_connect(), binary_activations(where=...))`` is a BNN.

  Args:
    where: which sites, by weight path (regex or ``(path, site) -> bool``; default all).
      The first layer's input is usually left in float.

  Returns:
    A :class:`~jaxcompress.Compressor`.

  References:
    Hubara, Courbariaux, Soudry, El-Yaniv & Bengio 2016, "Binarized Neural Networks",
    https://arxiv.org/abs/1602.02830.

  Example:
    >>> import jax.numpy as jnp
    >>> model = lambda p, x: x @ p['w']
    >>> c = binary_activations()
    >>> params, state = c.init({'w': jnp.ones((3, 1))})
    >>> c.rewrite(model, params, state)(c.apply(params, state), jnp.array([[0.2, -0.7, 4.0]])).tolist()
    [[1.0]]
  """
  from jaxcompress.quantization._activations import site_compressor

  return site_compressor(lambda extra, data: binary_activation_rule(), init=lambda params: (None, None), where=where)


def xnor_scale(w: jax.Array, granularity: Granularity | None = None) -> jax.Array:
  """XNOR-Net's optimal binary scale ``alpha = mean |w|`` (Rastegari et al. 2016, Eq. 4).

  Args:
    w: float array.
    granularity: which weights share an alpha (per output channel:
      ``per_channel(axis)``); ``None``: one alpha for the tensor.

  Returns:
    ``alpha`` with ``keepdims`` over the reduced axes, in ``w``'s dtype, differentiable;
    computed in float32 for half types and without overflow
    (:meth:`~jaxcompress.quantization.Granularity.mean`), so weights at the dtype's largest
    finite value give a finite ``alpha``.
  """
  return (granularity or Granularity()).mean(jnp.abs(uniform.upcast(w))).astype(w.dtype)


class BinaryLeaf(NamedTuple):
  """Per-leaf state of :func:`binary_connect`.

  Attributes:
    key: raw ``uint32`` PRNG key data of this leaf (stochastic mode), else ``None``.
  """

  key: Any


def binary_connect(
  *,
  stochastic: bool = False,
  seed: int = 0,
  scale: bool = False,
  per_channel: bool = False,
  axis: int = -1,
  clip: bool = True,
  sign_gradient: str = "identity",
  where: select.Where = None,
) -> Compressor:
  """BinaryConnect: train with weights binarized to ``±alpha``, keep float masters.

  ``apply`` returns ``alpha * b(w)``: ``b = sign(w)`` (``+1`` at zero), or with
  ``stochastic`` ``+1`` with probability ``hard_sigmoid(w) = clip((w + 1) / 2, 0, 1)``.
  ``alpha`` is 1 (``scale=False``, the paper), or with ``scale`` ``mean |w|`` over the
  tensor, or per slice along ``axis`` with ``per_channel`` (XNOR-Net; see
  :func:`xnor_net`). ``update`` clips the float weights to ``[-1, 1]`` (``clip``).

  Randomness: the state keeps one PRNG key per selected leaf (derived from ``seed``);
  ``apply`` draws the sample of step ``count`` from ``fold_in(key, count)``, so it is
  deterministic given the state, identical across devices under ``pmap`` and
  resumable from a checkpoint, and a new sample is drawn each step as ``update``
  advances ``count``. ``pack`` stores the sample ``apply`` shows at the current step
  (the paper evaluates stochastic nets with the float weights instead).

  Gradient: straight-through for the binarizer, ``dL/dw = alpha * dL/dw_b``
  (:func:`binarize`, :func:`binarize_stochastic`), or with ``sign_gradient="hardtanh"``
  ``alpha * dL/dw_b * 1{|w| <= 1}`` (Hubara et al. 2016's estimator, which XNOR-Net
  uses); with ``scale``, ``alpha = mean|w|`` is differentiated exactly as well, adding
  ``sign(w) / n * sum(dL/dw_b * b)``.

  ``pack`` stores a :class:`~jaxcompress.export.CodebookArray` with the codebook
  ``[-alpha, +alpha]`` (one row per channel with ``per_channel``) and 1-bit indices.

  Args:
    stochastic: stochastic instead of deterministic binarization.
    seed: seeds the per-leaf keys of stochastic binarization.
    scale: scale by ``alpha = mean |w|`` (XNOR-Net) instead of 1 (BinaryConnect).
    per_channel: one ``alpha`` per slice along ``axis`` (needs ``scale``).
    axis: the channel axis (-1: Flax's output features).
    clip: clip the float weights to ``[-1, 1]`` in ``update``.
    sign_gradient: the straight-through estimator of ``sign``: ``"identity"`` (the
      BinaryConnect paper, whose clipping keeps ``|w| <= 1``) or ``"hardtanh"``
      (``1{|w| <= 1}``; deterministic binarization only).
    where: which leaves to binarize (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`BinaryLeaf`.

  Raises:
    ValueError: for ``per_channel`` without ``scale``, an unknown ``sign_gradient`` (or
      ``"hardtanh"`` with ``stochastic``), a non-integer ``seed`` or ``axis``
      (as :func:`~jaxcompress.quantization.granularity.from_args`); at
      ``init``, as :func:`jaxcompress.core.leafwise.init_selected`, or if ``axis`` is out
      of range for a selected leaf.

  References:
    Courbariaux, Bengio & David 2015, "BinaryConnect: Training Deep Neural Networks
    with binary weights during propagations", https://arxiv.org/abs/1511.00363.

  Example:
    >>> import jax.numpy as jnp
    >>> c = binary_connect()
    >>> params, state = c.init({'w': jnp.array([[0.3, -0.2], [0.0, -4.0]])})
    >>> c.apply(params, state)['w'].tolist()
    [[1.0, -1.0], [1.0, -1.0]]
    >>> c.update(params, state)[0]['w'].tolist()  # float weights clipped to [-1, 1]
    [[0.30000001192092896, -0.20000000298023224], [0.0, -1.0]]
  """
  seed = validate.check_int("seed", seed)
  granularity = from_args(per_channel=per_channel, axis=axis)
  if per_channel and not scale:
    raise ValueError("per_channel=True needs scale=True: without scale, alpha is 1 for every channel")
  if sign_gradient not in ("identity", "hardtanh"):
    raise ValueError(f"sign_gradient must be 'identity' or 'hardtanh', got {sign_gradient!r}")
  if sign_gradient == "hardtanh" and stochastic:
    raise ValueError("sign_gradient='hardtanh' is for deterministic binarization; stochastic uses 'identity'")
  root = jax.random.key(seed)

  def init(params, *, masks=None):
    del masks  # earlier stages' masks: zeros in the view are enough here
    counter = [0]

    def init_leaf(path, p):
      granularity.check(tuple(p.shape), f"leaf {path!r}")
      key = jax.random.key_data(jax.random.fold_in(root, counter[0])) if stochastic else None
      counter[0] += 1
      return BinaryLeaf(key)

    leaves = leafwise.init_selected(params, where, init_leaf)
    return params, leafwise.LeafwiseState.start(leaves)

  def alpha(w):
    if not scale:
      return jnp.ones((1,) * w.ndim, w.dtype)
    return xnor_scale(w, granularity)

  def bits_of(w, leaf, count):
    if not stochastic:
      return binary_activation(w) if sign_gradient == "hardtanh" else binarize(w)
    key = jax.random.fold_in(jax.random.wrap_key_data(leaf.key), count)
    return binarize_stochastic(w, jax.random.uniform(key, w.shape, w.dtype))

  def apply(params, state):
    return leafwise.map_selected(lambda w, leaf: alpha(w) * bits_of(w, leaf, state.count), params, state.leaves)

  def update(params, state, *, grads=None, **extra):
    del grads, extra
    if clip:
      params = leafwise.map_selected(lambda w, _: jnp.clip(w, -1, 1), params, state.leaves)
    return params, state.advance()

  def pack_leaf(p, leaf, count):
    w = jnp.asarray(export.materialize(p))
    a = alpha(w)
    b = np.asarray(bits_of(w, leaf, count))
    indices = (b > 0).astype(np.uint8)
    if per_channel:
      a_row = np.moveaxis(np.asarray(a), axis, 0).reshape(-1, 1)
      return export.from_assignments(np.concatenate([-a_row, a_row], axis=1), indices, axis=axis)
    a_scalar = np.asarray(a).reshape(1)
    return export.from_assignments(np.concatenate([-a_scalar, a_scalar]), indices)

  def pack(params, state):
    return leafwise.map_selected(lambda p, leaf: pack_leaf(p, leaf, state.count), params, state.leaves)

  return Compressor(init, apply, update, pack)


def xnor_net(*, per_channel: bool = True, axis: int = -1, clip: bool = False, where: select.Where = None) -> Compressor:
  """XNOR-Net weight binarization: ``w ≈ alpha * sign(w)`` with ``alpha = mean |w|``.

  :func:`binary_connect` with ``scale=True`` and ``sign_gradient="hardtanh"``: one
  ``alpha`` per output channel (the slices along ``axis``) with ``per_channel``, else one
  per tensor. Gradient (the paper's §3.1): ``sign``'s straight-through estimator
  ``1{|w| <= 1}`` plus the exact gradient of ``alpha = mean|w|``: ``dL/dw_i = alpha * g_i
  * 1{|w_i| <= 1} + sign(w_i) / n * sum_j g_j sign(w_j)`` over the ``n`` weights sharing
  ``alpha`` (the paper writes ``g_i (1/n + alpha * 1{|w_i| <= 1})``, the same with the
  sum's other terms dropped). Packs at 1 bit per
  weight plus two floats per channel (a :class:`~jaxcompress.export.CodebookArray`).

  Args:
    per_channel: one ``alpha`` per channel; ``False`` for one per tensor.
    axis: the output-channel axis (-1: Flax Dense ``(in, out)`` and Conv
      ``(h, w, in, out)``).
    clip: clip the float weights to ``[-1, 1]`` in ``update`` (off by default: XNOR-Net
      does not clip, and clipping would change ``alpha``).
    where: which leaves (default: floating leaves with ``ndim >= 2``).

  Returns:
    A :class:`~jaxcompress.Compressor` with a
    :class:`~jaxcompress.core.leafwise.LeafwiseState` of :class:`BinaryLeaf`.

  Raises:
    ValueError: as :func:`binary_connect`.

  References:
    Rastegari, Ordonez, Redmon & Farhadi 2016, "XNOR-Net: ImageNet Classification
    Using Binary Convolutional Neural Networks", https://arxiv.org/abs/1603.05279.

  Example:
    >>> import jax.numpy as jnp
    >>> c = xnor_net()
    >>> params, state = c.init({'w': jnp.array([[0.5, -2.0], [-1.5, 1.0]])})
    >>> c.apply(params, state)['w'].tolist()  # alpha = [1.0, 1.5] per column
    [[1.0, -1.5], [-1.0, 1.5]]
  """
  return binary_connect(
    scale=True, per_channel=per_channel, axis=axis, clip=clip, sign_gradient="hardtanh", where=where
  )
