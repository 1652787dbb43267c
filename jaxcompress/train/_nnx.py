"""Flax NNX: a compressed model that ``nnx.Optimizer`` trains.

:class:`Compressed` wraps an NNX module: its Variables hold the compressor's *trainable*
tree (a codebook and no kernel for k-means, the smaller arrays for channel pruning), so
``nnx.grad`` differentiates what the optimizer updates; calling it runs the model on the
compressor's view through its ``rewrite`` (quantized activations), and writes back what
the model changed (BatchNorm statistics, dropout RNG counts). :class:`Optimizer` is an
``nnx.Optimizer`` whose ``update(model, grads)`` is the masked, projected step of
:func:`~jaxcompress.train.make_step`; a plain ``nnx.Optimizer`` on such a model is caught at
the model's next use outside ``jit`` (:meth:`Compressed.check_trained`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import filterlib
from flax.nnx.training.optimizer import OptState, to_opt_state

from jaxcompress.core._base import Compressor, split
from jaxcompress.core.tree import PyTree, leaves_with_paths
from jaxcompress.train._optimizer import masked_update, update_mutable


class CompressorState(nnx.Variable):
  """A :class:`Compressed` module's compressor state: a Variable that is not a ``Param``,
  so neither ``nnx.grad`` nor the optimizer touches it."""


class _Digest(nnx.Variable):
  """The digest of a :class:`Compressed` module's ``Param`` leaves as :class:`Optimizer` (or
  ``set_trainable``) last wrote them; not a ``Param``, so no optimizer touches it."""


_WIDTH = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _mix(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: every input bit moves about half the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


_SAMPLE = 1024  # elements per leaf the digest reads: an optimizer step moves nearly every weight


def _digest(arrays: list[Any]) -> jax.Array:
  """A ``uint32`` digest of the arrays' bits and positions.

  Each element's bit pattern, XORed with a hash of its position and leaf, is mixed and the
  results summed modulo 2^32: exact and independent of the summation order (so jit and eager
  agree), and a change of one ulp in a digested element changes it except with probability
  ~2^-32. Leaves of up to ``_SAMPLE`` elements are digested whole, larger ones at ``_SAMPLE``
  evenly strided positions: the check costs nothing next to a step, and a plain optimizer's
  update, which moves almost every weight, cannot miss them all.
  """
  total = jnp.zeros((), jnp.uint32)
  for i, x in enumerate(arrays):
    x = jnp.asarray(x).ravel()
    stride = max(1, -(-x.shape[0] // _SAMPLE))
    x = x[::stride]  # sampled before any bit cast: a large leaf is never copied whole
    if x.dtype == jnp.bool_:
      bits = x.astype(jnp.uint32)
    elif jnp.issubdtype(x.dtype, jnp.complexfloating):
      bits = jax.lax.bitcast_convert_type(jnp.stack([x.real, x.imag]), _WIDTH[x.dtype.itemsize // 2])
    else:
      bits = jax.lax.bitcast_convert_type(x, _WIDTH[x.dtype.itemsize])
    bits = bits.astype(jnp.uint32).ravel()
    where = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(stride * 0x9E3779B9 % 2**32)
    where = where + jnp.uint32((i * 0x27D4EB2F) % 2**32)
    total = total + _mix(bits ^ _mix(where)).sum(dtype=jnp.uint32)
  return total


def _strong(x: Any) -> Any:
  return jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x


class Compressed(nnx.Module):
  """An NNX module whose Variables are a compressor's trainable tree.

  The model's Variables of the types in ``compress`` (``Param`` and ``BatchStat`` by
  default, so channel pruning narrows the BatchNorm statistics with their channels) form
  the compressed tree, as a pure dict (paths ``'linear/kernel'``, ``'layers/0/bias'``).
  ``compressor.init`` turns it into the trainable tree; each of its arrays becomes a
  Variable of the type of the model leaf it stands for (a k-means codebook is a ``Param``,
  a sliced mean a ``BatchStat``; a :class:`~jaxcompress.Joint`'s learned activation
  parameters are ``Param``), in ``self.leaves``. The compressor's state is a
  :class:`CompressorState`. Other Variables (RNG streams) are kept as they are.

  ``self(*args, **kwargs)`` runs the model on ``compressor.apply`` of the trainable tree
  through ``compressor.rewrite``, then writes back the model's new non-``Param`` values
  (BatchNorm statistics, through :func:`~jaxcompress.train.update_mutable`) and RNG
  state. ``train()`` / ``eval()`` switch the wrapped model's mode (Dropout, BatchNorm),
  as on any NNX module; a rewrite sees the mode, so one compressor serves both.

  Train it with :class:`Optimizer` (an ``nnx.Optimizer``), not a plain ``nnx.Optimizer``.
  The trainable Variables are ``Param`` (so ``nnx.grad``'s default filter differentiates
  them), which a plain ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` finds too, and whose
  update would skip the masks, the projection and ``compressor.update``. Flax gives no hook
  to refuse it (the optimizer reads and writes Variables through the same graph functions
  ``nnx.jit`` and checkpoint restores use), so the module catches it afterwards: it keeps a
  digest of its ``Param`` values as :class:`Optimizer` last wrote them, and
  :meth:`check_trained` raises ``ValueError`` naming :class:`Optimizer` when they changed
  otherwise, at the first concrete use (:meth:`model_params`, :meth:`pack`, ``train()``,
  ``eval()``, a call outside ``jit``, a step of :class:`Optimizer`). Write a trainable tree on
  purpose with :meth:`set_trainable` (after restoring only the ``Param`` Variables from a
  checkpoint: ``model.set_trainable(model.trainable())``).

  Args:
    model: the NNX module (left unchanged).
    compressor: the compressor. Paths in its ``where=`` (and a ``channel_prune``'s
      ``apply_fn(params, *inputs)``) are over the pure dict of ``compress``'s Variables;
      ``Compressed.apply_fn(model)`` builds such an ``apply_fn``.
    compress: an NNX filter of the Variables to compress.

  Raises:
    Whatever ``compressor.init`` raises for the model's tree.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxcompress import pruning
    >>> model = Compressed(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), pruning.magnitude(0.5))
    >>> opt = Optimizer(model, optax.adamw(0.1, weight_decay=0.1))
    >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 4))).sum())(model)
    >>> opt.update(model, grads)
    >>> int((model.model_params()['kernel'] == 0).sum())
    4
  """

  def __init__(self, model: nnx.Module, compressor: Compressor, *, compress: Any = (nnx.Param, nnx.BatchStat)):
    graphdef, comp, rest = nnx.split(model, compress, ...)
    types = {"/".join(str(k) for k in path): type(v) for path, v in nnx.to_flat_state(comp)}
    tree = jax.tree.map(_strong, nnx.to_pure_dict(comp))
    params, cstate = compressor.init(tree)
    body, extra = split(params)
    model_def = jax.tree.structure(jax.eval_shape(compressor.apply, params, cstate))
    kinds = []
    for (path, _), node in zip(leaves_with_paths(tree), model_def.flatten_up_to(body)):
      kinds += [types.get(path, nnx.Param)] * len(jax.tree.leaves(node))
    kinds += [nnx.Param] * len(jax.tree.leaves(extra))
    leaves, treedef = jax.tree.flatten(params)
    if len(kinds) != len(leaves):  # a trainable tree that does not mirror the model's: train it all
      kinds = [nnx.Param] * len(leaves)
    self.leaves = nnx.List([k(x) for k, x in zip(kinds, leaves)])
    self.digest = _Digest(self._param_digest())
    self.cstate = CompressorState(cstate)
    self.rest = nnx.data(rest)
    self.compressor = nnx.static(compressor)
    self.graphdef = nnx.static(graphdef)
    self.compress = nnx.static(compress)
    self.treedef = nnx.static(treedef)
    self.mutable_paths = nnx.static(tuple(p for p, t in types.items() if not issubclass(t, nnx.Param)))

  @staticmethod
  def apply_fn(model: nnx.Module, compress: Any = (nnx.Param, nnx.BatchStat)) -> Any:
    """``apply_fn(tree, *inputs)``: ``model`` run on a pure dict of its ``compress``
    Variables (for ``channel_prune(apply_fn=...)`` and calibration); leaves ``model`` alone."""
    graphdef, _, rest = nnx.split(model, compress, ...)
    rest = nnx.to_pure_dict(rest)

    def run(tree, *inputs, **kwargs):
      return nnx.merge(graphdef, tree, rest)(*inputs, **kwargs)

    return run

  def trainable(self) -> PyTree:
    """The compressor's trainable tree, as arrays."""
    return jax.tree.unflatten(self.treedef, [v.get_value() for v in self.leaves])

  def set_trainable(self, params: PyTree) -> None:
    """Writes a trainable tree (of the same structure) into the Variables, on purpose: the
    written values are the ones :meth:`check_trained` accepts from now on."""
    for v, x in zip(self.leaves, jax.tree.leaves(params)):
      v.set_value(x)
    self.digest.set_value(self._param_digest())

  def _param_digest(self) -> jax.Array:
    return _digest([v.get_value() for v in self.leaves if isinstance(v, nnx.Param)])

  def check_trained(self) -> None:
    """Raises if the ``Param`` Variables changed since :class:`Optimizer` (or
    :meth:`set_trainable`) last wrote them, as a plain ``nnx.Optimizer`` changes them.

    A plain ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` finds these Variables and trains
    them with no masks, no projection and no ``compressor.update`` (pruned weights regrow
    in the trainable tree, schedules never advance). It cannot be told apart inside
    ``jit``, so the check runs where the values are concrete: every call of
    :meth:`model_params`, :meth:`pack`, ``train()``/``eval()`` and of the module outside
    ``jit``, and :class:`Optimizer`'s steps outside ``jit``. Under ``jit`` it is skipped.

    Raises:
      ValueError: if the values differ from the ones last written by :class:`Optimizer`.
    """
    values = [v.get_value() for v in self.leaves] + [self.digest.get_value()]
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values)):
      return
    if int(self._param_digest()) != int(self.digest.get_value()):
      raise ValueError(
        "the Param Variables of this jc.train.Compressed model changed outside jc.train.Optimizer: a plain "
        "nnx.Optimizer (or nnx.update) trains them without the compressor's masks, projection and update "
        "(pruned weights regrow, schedules stall). Train it with jc.train.Optimizer(model, tx); to write a "
        "trainable tree on purpose, use model.set_trainable(tree)"
      )

  def model_params(self) -> PyTree:
    """The model's view, ``compressor.apply(trainable, cstate)``: the pure dict of its Variables.

    Raises:
      ValueError: see :meth:`check_trained`.
    """
    self.check_trained()
    return self.compressor.apply(self.trainable(), self.cstate.get_value())

  def pack(self) -> PyTree:
    """``compressor.pack``: the deployable tree of compressed leaves (run outside ``jit``).

    Raises:
      ValueError: see :meth:`check_trained`.
    """
    self.check_trained()
    return self.compressor.pack(self.trainable(), self.cstate.get_value())

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    self.check_trained()
    params, cstate = self.trainable(), self.cstate.get_value()
    graphdef, compress = self.graphdef, self.compress

    def run(tree, rest, *a, **k):
      m = nnx.merge(graphdef, tree, rest)
      out = m(*a, **k)
      _, comp, new_rest = nnx.split(m, compress, ...)
      return out, nnx.to_pure_dict(comp), nnx.to_pure_dict(new_rest)

    rest = nnx.to_pure_dict(self.rest)
    run = self.compressor.rewrite(run, params, cstate)
    out, comp, new_rest = run(self.compressor.apply(params, cstate), rest, *args, **kwargs)
    nnx.replace_by_pure_dict(self.rest, new_rest)
    if self.mutable_paths:
      flat = dict(leaves_with_paths(comp))
      values = _nest({p: flat[p] for p in self.mutable_paths if p in flat})
      if values:  # only the statistics' Variables change; the Params stay the traced inputs
        new = jax.tree.leaves(update_mutable(self.compressor, params, cstate, values))
        for v, x in zip(self.leaves, new):
          if not isinstance(v, nnx.Param):
            v.set_value(x)
    return out

  def _mode(self, name: str, **attributes: Any) -> None:
    m = nnx.merge(self.graphdef, self.model_params(), nnx.to_pure_dict(self.rest))
    # the mode is a static attribute of the model's graph: a new graphdef holds it
    getattr(m, name)(**attributes)
    self.graphdef = nnx.static(nnx.graphdef(m))

  def train(self, **attributes: Any) -> None:
    """Puts the wrapped model in training mode (``nnx.Module.train``)."""
    self._mode("train", **attributes)

  def eval(self, **attributes: Any) -> None:
    """Puts the wrapped model in evaluation mode (``nnx.Module.eval``)."""
    self._mode("eval", **attributes)

  def held(self, path: str, leaf: Any) -> bool:
    """Whether the model leaf at ``path`` is kept off the optimizer (not a ``Param``)."""
    del leaf
    return path in self.mutable_paths


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  """``{'a/b': x}`` -> ``{'a': {'b': x}}`` (integer keys where the path has digits, as NNX lists)."""
  out: dict[Any, Any] = {}
  for path, x in flat.items():
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = x
  return out


class Optimizer(nnx.Optimizer):
  """An ``nnx.Optimizer`` for a :class:`Compressed` model: ``update`` is the compressed step.

  ``Optimizer(model, tx)`` builds ``tx``'s state on the model's trainable tree (every leaf;
  the non-``Param`` ones are held). ``update(model, grads)``, with ``grads`` from
  ``nnx.grad`` of the model, zeroes the moments, gradients and updates of pruned and
  frozen coordinates and of held leaves (so momentum and weight decay revive nothing),
  runs ``tx``, writes the compressor's projection of the new params into the model
  exactly, advances the compressor's state, and restarts ``tx`` where the compressor's
  ``restart`` says so: :func:`~jaxcompress.train.make_step`'s guarantees. It is the only
  optimizer such a model accepts: values a plain ``nnx.Optimizer`` wrote make the model's
  next concrete use raise (:meth:`Compressed.check_trained`).

  Args:
    model: the :class:`Compressed` model.
    tx: an optax transformation.
    wrt: the Variables ``nnx.grad`` differentiates (``nnx.Param``); others are held.

  Raises:
    TypeError: if ``model`` is not a :class:`Compressed` module.
    ValueError: from ``update`` outside ``jit``, if the model's ``Param`` Variables were
      changed by something else since its last step (:meth:`Compressed.check_trained`).
  """

  def __init__(self, model: Compressed, tx: optax.GradientTransformation, *, wrt: Any = nnx.Param):
    if not isinstance(model, Compressed):
      raise TypeError(f"model must be a jaxcompress.train.Compressed module, got {type(model).__name__}")
    self.graph = None
    self.step = OptState(jnp.array(0, dtype=jnp.uint32))
    self.tx = tx
    self.opt_state = nnx.data(to_opt_state(tx.init(model.trainable())))
    self.wrt = wrt

  def update(self, model: Compressed, grads: Any, /, **kwargs: Any) -> None:  # pyrefly: ignore[bad-override]
    """One compressed step: ``grads`` is ``nnx.grad``'s state of the model (its ``wrt`` Variables)."""
    del kwargs
    if not isinstance(model, Compressed):
      raise TypeError(f"model must be a jaxcompress.train.Compressed module, got {type(model).__name__}")
    model.check_trained()
    pred = filterlib.to_predicate(self.wrt)
    flat_grads = nnx.to_flat_state(nnx.state(grads))
    given = {int(str(k[-1])): v.get_value() for k, v in flat_grads if k[0] == "leaves"}
    params = model.trainable()
    flat, treedef = jax.tree.flatten(params)
    trained = [pred((("leaves", i)), v) for i, v in enumerate(model.leaves)]
    g = [given[i] if (i in given and t) else jnp.zeros_like(x) for i, (x, t) in enumerate(zip(flat, trained))]
    held = model.held if not all(trained) else None
    opt_state = nnx.as_pure(self.opt_state)
    new, opt_state, cstate = masked_update(
      self.tx, model.compressor, jax.tree.unflatten(treedef, g), opt_state, params, model.cstate.get_value(), hold=held
    )
    model.set_trainable(new)  # and the digest check_trained compares with
    model.cstate.set_value(cstate)
    nnx.update(self.opt_state, nnx.state(opt_state))
    self.step[...] += 1
