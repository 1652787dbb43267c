"""The glue the low-rank compressors share: rank rules, the per-leaf report, the Compressor.

Each decomposition (:mod:`._svd`, :mod:`._spatial`, :mod:`._tucker`, :mod:`._cp`) keeps
its numerics in plain functions of one array and describes itself to :func:`build` by a
:class:`Decomposition`; :func:`build` walks the tree, replaces each selected kernel in the
trainable tree by its factors (a ``NamedTuple`` of arrays), rebuilds the dense kernel in
``apply`` and stores the factors in ``pack``. A leaf whose factors would hold at least as
many parameters as the kernel is left dense, and :func:`report` says so.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress.core import select, validate
from jaxcompress.core._base import Compressor
from jaxcompress.core.tree import leaves_with_paths
from jaxcompress.quantization import _reparam

INITS = ("decomposition", "random")


@dataclasses.dataclass(frozen=True)
class LeafReport:
  """What a low-rank compressor did with one selected leaf (static: it holds no arrays).

  Attributes:
    path: the leaf's path.
    kind: ``'svd'``, ``'spatial_svd'``, ``'tucker2'``, ``'cp'`` or ``'lora'``.
    shape: the kernel's shape.
    ranks: the ranks chosen (one, or ``(r_in, r_out)`` for Tucker-2).
    dense_params: parameters of the dense kernel.
    factor_params: parameters the factors would hold (LoRA: its trainable ``a``, ``b``).
    factorized: ``False`` when the leaf was left dense (``factor_params >= dense_params``).
  """

  path: str
  kind: str
  shape: tuple[int, ...]
  ranks: tuple[int, ...]
  dense_params: int
  factor_params: int
  factorized: bool

  def __str__(self) -> str:
    what = f"{self.path} {self.shape} {self.kind} rank {self.ranks if len(self.ranks) > 1 else self.ranks[0]}"
    if not self.factorized:
      return f"{what}: left dense ({self.factor_params} factor params >= {self.dense_params} dense)"
    return f"{what}: {self.factor_params} params instead of {self.dense_params} ({self.ratio:.3f})"

  @property
  def ratio(self) -> float:
    """Parameters kept, as a fraction of the dense kernel's (1.0 when left dense)."""
    return self.factor_params / self.dense_params if self.factorized else 1.0


jax.tree_util.register_dataclass(
  LeafReport,
  data_fields=[],
  meta_fields=["path", "kind", "shape", "ranks", "dense_params", "factor_params", "factorized"],
)


def report(state: Any) -> list[LeafReport]:
  """The per-leaf reports of every low-rank compressor in ``state``.

  Args:
    state: the state of a low-rank compressor, or of a :func:`~jaxcompress.chain` holding
      some (any pytree of states).

  Returns:
    The :class:`LeafReport` of every selected leaf, in tree order; ``str()`` of one
    reads ``'fc1/kernel (64, 300) svd rank 16: 5824 params instead of 19200 (0.303)'``,
    or ``'... left dense (...)'``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxcompress import lowrank
    >>> c = lowrank.svd(2)
    >>> _, state = c.init({'a': jnp.ones((8, 6)), 'b': jnp.ones((3, 3))})
    >>> [str(r) for r in report(state)]
    ['a (8, 6) svd rank 2: 28 params instead of 48 (0.583)', 'b (3, 3) svd rank 2: left dense (12 factor params >= 9 dense)']
  """
  return [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, LeafReport)) if isinstance(x, LeafReport)]


def check_rank(name: str, rank: Any) -> int | float:
  """A rank: a positive integer, or a fraction of the full rank in ``(0, 1]``.

  Raises:
    ValueError: naming ``name`` and the value, for 0, a negative number, a fraction
      above 1, a bool or a non-number.
  """
  if isinstance(rank, bool) or not isinstance(rank, numbers.Real):
    raise ValueError(f"{name} must be a positive integer or a fraction in (0, 1], got {rank!r}")
  if isinstance(rank, numbers.Integral):
    if rank < 1:
      raise ValueError(f"{name} must be a positive integer or a fraction in (0, 1], got {rank}")
    return int(rank)
  return validate.check_float(name, rank, low=0.0, high=1.0, low_open=True)


def check_energy(energy: Any) -> float:
  """The retained energy: a float in ``(0, 1]``.

  Raises:
    ValueError: naming the value, outside ``(0, 1]``.
  """
  return validate.check_float("energy", energy, low=0.0, high=1.0, low_open=True)


def check_ratio(ratio: Any) -> float:
  """A target parameter ratio (factor parameters over dense parameters) in ``(0, 1]``.

  Raises:
    ValueError: naming the value, outside ``(0, 1]``.
  """
  return validate.check_float("ratio", ratio, low=0.0, high=1.0, low_open=True)


def one_of(**rules: Any) -> str:
  """The name of the one rank rule given (the others ``None``).

  Raises:
    ValueError: if none or several are given.
  """
  given = [k for k, v in rules.items() if v is not None]
  if len(given) != 1:
    raise ValueError(f"give exactly one of {tuple(rules)}, got {given or 'none'}")
  return given[0]


def resolve_rank(rank: int | float, full: int, path: str, shape: tuple[int, ...], what: str = "rank") -> int:
  """A fixed rank (checked against ``full``) or a fraction of ``full`` (rounded up).

  Raises:
    ValueError: if an integer rank is beyond ``full``, naming the leaf.
  """
  if isinstance(rank, int):
    if rank > full:
      raise ValueError(f"{what}={rank} is beyond leaf {path!r} of shape {shape}: at most {full}")
    return rank
  return min(full, max(1, math.ceil(rank * full - 1e-9)))


def rank_for_energy(s: Any, energy: float) -> int:
  """The smallest rank whose singular values keep ``energy`` of ``sum(s²)``.

  Args:
    s: the singular values, ``float[k]`` descending (concrete).
    energy: the fraction of the energy ``sum(s**2)`` to keep, in ``(0, 1]``.

  Returns:
    An ``int`` in ``[1, k]`` (1 for an all-zero ``s``).
  """
  e = np.asarray(s, np.float64) ** 2
  total = e.sum()
  if total <= 0:
    return 1
  kept = np.cumsum(e) / total
  return int(min(len(e), max(1, np.searchsorted(kept, energy - 1e-12) + 1)))


def concrete(path: str, w: Any, rule: str) -> np.ndarray:
  """``w`` on the host, for a rank rule that looks at its values.

  Raises:
    ValueError: if ``w`` is traced (under ``jit``), naming the rule and the leaf.
  """
  if isinstance(w, jax.core.Tracer):
    raise ValueError(f"{rule} picks the rank of leaf {path!r} from its values: call init outside jit, or give a rank")
  return np.asarray(w)


class Decomposition(NamedTuple):
  """How :func:`build` factorizes one kind of kernel.

  Attributes:
    kind: the name in reports and packed leaves.
    ndim: the kernel rank it accepts (2: Dense ``(m, n)``; 4: conv ``(h, w, in, out)``).
    ranks: ``(path, kernel) -> ranks``, the rank rule (raises on bad ranks).
    params: ``(shape, ranks) -> int``, parameters of the factors.
    decompose: ``(kernel, ranks, key) -> factors`` (a ``NamedTuple`` of arrays).
    rebuild: ``(factors) -> kernel``, differentiable.
    pack: ``(factors, shape) -> CompressedLeaf`` on host arrays.
  """

  kind: str
  ndim: int
  ranks: Callable[[str, Any], tuple[int, ...]]
  params: Callable[[tuple[int, ...], tuple[int, ...]], int]
  decompose: Callable[[Any, tuple[int, ...], jax.Array], Any]
  rebuild: Callable[[Any], jax.Array]
  pack: Callable[[Any, tuple[int, ...]], Any]


def default_where(ndim: int) -> select.Predicate:
  """Floating leaves with exactly ``ndim`` dimensions (2: Dense kernels, 4: conv kernels)."""
  return lambda path, leaf: select.default(path, leaf) and len(getattr(leaf, "shape", ())) == ndim


SHAPE_WORDS = {2: "2-D Dense kernels (in, out)", 4: "4-D conv kernels in Flax layout (h, w, in, out)"}
ALTERNATIVE = {2: "lowrank.spatial_svd, lowrank.tucker2 or lowrank.cp", 4: "lowrank.svd"}


def from_scratch(dec: Decomposition, factors: Any, w: jax.Array, key: jax.Array) -> Any:
  """Random factors of the decomposition's shapes, scaled so that the kernel they rebuild
  has ``w``'s standard deviation (training from scratch rather than from the decomposition)."""
  leaves, treedef = jax.tree.flatten(factors)
  keys = jax.random.split(key, len(leaves))
  new = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  std = jnp.std(dec.rebuild(treedef.unflatten(new)))
  scale = (jnp.std(w) / jnp.maximum(std, 1e-30)) ** (1.0 / len(leaves))
  return treedef.unflatten([x * scale for x in new])


class LowRankState(NamedTuple):
  """State of a low-rank compressor.

  Attributes:
    count: ``int32`` step counter.
    leaves: a :class:`LeafReport` at each selected leaf, ``None`` elsewhere (no arrays).
    factors: the state of the ``factors=`` compressor over the factor tree, or ``None``.
  """

  count: jax.Array
  leaves: Any
  factors: Any = None

  def advance(self) -> LowRankState:
    """The same state one step later."""
    return self._replace(count=self.count + 1)


def _is_report(x: Any) -> bool:
  return x is None or isinstance(x, LeafReport)


def build(
  dec: Decomposition,
  *,
  init: str,
  seed: int,
  where: select.Where,
  factors: Compressor | None = None,
  always: bool = False,
) -> Compressor:
  """The :class:`~jaxcompress.Compressor` of a decomposition (see the module docstring).

  Args:
    dec: the decomposition.
    init: ``'decomposition'`` (fine-tune the factors of the trained kernel) or
      ``'random'`` (train the factors from scratch, see :func:`from_scratch`).
    seed: seeds the decomposition's and the scratch initialization's randomness.
    where: which leaves (``None``: floating leaves with ``dec.ndim`` dimensions).
    factors: a compressor applied to the factors themselves (``{path: factors}``), for
      example ``quantization.fake_quant(8)``: ``apply`` rebuilds the kernel from its view
      of the factors and ``pack`` stores its packed factors (``QArray`` s) in the
      ``Factorized`` leaf. It must keep the factors' structure (a weight quantizer; not
      one that adds learned parameters); a pruner's masks there stay inside the factors.
    always: factorize every selected leaf, however many parameters the factors hold
      (LoRA: its node holds the kernel too).

  Raises:
    ValueError: at ``init``, if a selected leaf does not have ``dec.ndim`` dimensions
      (naming it and its shape), as the rank rule, or if ``factors`` changes the
      factors' structure.
  """
  validate.check_choice("init", init, INITS)
  seed = validate.check_int("seed", seed)
  if factors is not None and not isinstance(factors, Compressor):
    raise TypeError(f"factors must be a Compressor (for example quantization.fake_quant(8)), got {factors!r}")
  root = jax.random.key(seed)
  user_where, where = where, default_where(dec.ndim) if where is None else where

  def split_nodes(params, state):
    reports, treedef = jax.tree.flatten(state.leaves, is_leaf=_is_report)
    try:
      nodes = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
      raise ValueError(f"the trainable tree does not match the compressor's state ({e})") from None
    sub = {r.path: n for r, n in zip(reports, nodes) if r is not None and r.factorized}
    return reports, treedef, nodes, sub

  def join(reports, treedef, nodes, sub):
    return treedef.unflatten([sub[r.path] if r is not None and r.factorized else n for r, n in zip(reports, nodes)])

  def init_fn(params, *, masks=None):
    del masks  # the factors are of the pruned view; the chain keeps pruned positions zero
    counter = [0]

    def init_leaf(path, w):
      key = jax.random.fold_in(root, counter[0])
      counter[0] += 1
      shape = tuple(int(d) for d in w.shape)
      if len(shape) != dec.ndim:
        raise ValueError(
          f"leaf {path!r} has shape {shape}: {dec.kind} factorizes {SHAPE_WORDS[dec.ndim]}; "
          f"use {ALTERNATIVE[dec.ndim]} for it, or narrow where="
        )
      ranks = tuple(int(r) for r in dec.ranks(path, w))
      dense, factored = math.prod(shape), int(dec.params(shape, ranks))
      leaf = LeafReport(path, dec.kind, shape, ranks, dense, factored, always or factored < dense)
      if not leaf.factorized:
        return w, leaf
      k_dec, k_scratch = jax.random.split(key)
      node = dec.decompose(jnp.asarray(w), ranks, k_dec)
      if init == "random":
        node = from_scratch(dec, node, jnp.asarray(w), k_scratch)
      return node, leaf

    by_rank = default_where(dec.ndim)
    if user_where is None and not any(by_rank(p, x) for p, x in leaves_with_paths(params)):
      kernels = [(p, tuple(x.shape)) for p, x in leaves_with_paths(params) if select.default(p, x)]
      if kernels:  # the default selects by rank: say which decomposition the kernels need
        raise ValueError(
          f"{dec.kind} factorizes {SHAPE_WORDS[dec.ndim]} and this tree has none (its kernels: "
          f"{kernels[:5]}); use {ALTERNATIVE[dec.ndim]} for them"
        )
    trainable, leaves = _reparam.init(params, where, init_leaf)
    state = LowRankState(jnp.asarray(0, jnp.int32), leaves)
    if factors is None:
      return trainable, state
    reports, treedef, nodes, sub = split_nodes(trainable, state)
    if not sub:
      return trainable, state
    sub_trainable, sub_state = factors.init(sub)
    if jax.tree.structure(sub_trainable) != jax.tree.structure(sub):
      raise ValueError(
        f"factors= must keep the factors' structure (a weight quantizer such as fake_quant); "
        f"it made {jax.tree.structure(sub_trainable)} of {jax.tree.structure(sub)}"
      )
    return join(reports, treedef, nodes, sub_trainable), state._replace(factors=sub_state)

  def dense(node, leaf):
    if not hasattr(node, "_fields"):
      raise ValueError(
        f"expected the {dec.kind} factors of leaf {leaf.path!r} in the trainable tree, got "
        f"{type(node).__name__}: pass the tree that init returned, not the model's params"
      )
    return dec.rebuild(node).astype(node[0].dtype)

  def apply(params, state):
    reports, treedef, nodes, sub = split_nodes(params, state)
    if factors is not None and state.factors is not None:
      sub = factors.apply(sub, state.factors)
    rebuilt = {r.path: dense(sub[r.path], r) for r in reports if r is not None and r.factorized}
    return join(reports, treedef, nodes, rebuilt)

  def update(params, state, *, grads=None, **extra):
    if factors is None or state.factors is None:
      return params, state.advance()
    reports, treedef, nodes, sub = split_nodes(params, state)
    sub_grads = None if grads is None else split_nodes(grads, state)[3]
    sub, sub_state = factors.update(sub, state.factors, grads=sub_grads, **extra)
    return join(reports, treedef, nodes, sub), state._replace(factors=sub_state).advance()

  def pack(params, state):
    reports, treedef, nodes, sub = split_nodes(params, state)
    if factors is not None and state.factors is not None:
      packed = factors.pack(sub, state.factors)
    else:
      packed = {path: type(node)(*(np.asarray(f) for f in node)) for path, node in sub.items()}
    by_path = {r.path: r for r in reports if r is not None}
    return join(reports, treedef, nodes, {path: dec.pack(node, by_path[path].shape) for path, node in packed.items()})

  return Compressor(init_fn, apply, update, pack)
