"""Serving structured weights through their fast products, never forming the dense kernel.

Through :func:`jaxcompress.graph.rewrite`, a Dense site (``x @ W``) whose kernel is packed
as a :class:`~jaxcompress.export.DisplacementArray` runs :func:`ldr_matmul`, a
:class:`~jaxcompress.export.CirculantArray` :func:`circulant_matmul` and a
:class:`~jaxcompress.export.ToeplitzArray` :func:`toeplitz_matmul`, from the stored
numbers. Any other use of such a kernel (a transposed operand, a conv) rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress import export, graph
from jaxcompress.core.tree import PyTree, is_packed_leaf, path_str
from jaxcompress.sharing._circulant import circulant_matmul
from jaxcompress.sharing._ldr import ldr_matmul
from jaxcompress.sharing._toeplitz import toeplitz_matmul

_STRUCTURED = (export.DisplacementArray, export.CirculantArray, export.ToeplitzArray)


def _product(leaf: Any, x: jax.Array) -> jax.Array:
  n = leaf.dense_shape[-1]
  if isinstance(leaf, export.DisplacementArray):
    g, h = (jnp.asarray(export.materialize(a)) for a in (leaf.g, leaf.h))
    return ldr_matmul(x, g.astype(x.dtype), h.astype(x.dtype), n)
  if isinstance(leaf, export.CirculantArray):
    return circulant_matmul(x, jnp.asarray(export.materialize(leaf.vectors)).astype(x.dtype))
  return toeplitz_matmul(x, jnp.asarray(export.materialize(leaf.diagonals)).astype(x.dtype), n)


def structured(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
  """``apply_fn`` on a packed tree, with each structured Dense kernel's matmul run as its FFT product.

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the dense model.

  Returns:
    ``fn(packed, *inputs)``, pure (jit it, or give it to :func:`jaxcompress.graph.flops`).
    Other leaves are materialized. A structured kernel used other than as the right
    operand of ``x @ W`` (contracting ``W``'s first axis, 2-D) is rebuilt for that site.

  Raises:
    ValueError: at call time, if a site uses a structured kernel through a reshape,
      broadcast or slice.
  """

  def fn(packed: PyTree, *inputs: Any) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(packed, is_leaf=is_packed_leaf)
    leaves = {path_str(kp): leaf for kp, leaf in flat if isinstance(leaf, _STRUCTURED)}
    dtype = lambda leaf: jnp.result_type(*(jnp.asarray(export.materialize(a)).dtype for a in jax.tree.leaves(leaf)))
    dense = treedef.unflatten(
      [
        jnp.zeros(leaf.shape, dtype(leaf)) if isinstance(leaf, _STRUCTURED) else export.materialize(leaf)
        for _, leaf in flat
      ]
    )
    if not leaves:
      return apply_fn(dense, *inputs)

    def rule(site: graph.Site, activation: jax.Array, weight: jax.Array) -> jax.Array:
      del weight  # a placeholder: the stored numbers stand in for it
      leaf = leaves[site.path]
      dims = site.params.get("dimension_numbers")
      if (
        site.op == "dot_general"
        and len(leaf.dense_shape) == 2
        and site.weight_operand == 1
        and site.leaf_axes == (0, 1)
        and dims == (((activation.ndim - 1,), (0,)), ((), ()))
      ):
        return _product(leaf, activation).astype(site.activation_dtype)
      if site.leaf_axes is None:
        raise ValueError(
          f"site {site.key!r} ({site.op}) uses the structured kernel through a reshape, broadcast or slice; "
          "serve it dense (export.materialize_tree)"
        )
      return site.compute(activation, jnp.transpose(leaf.materialize(), site.leaf_axes))

    return graph.rewrite(apply_fn, rule, where=lambda path, site: path in leaves)(dense, *inputs)

  return fn


def serve(apply_fn: Callable[..., Any], packed: PyTree) -> Callable[..., Any]:
  """Runs a packed model with its structured kernels' FFT products (see :func:`structured`).

  Args:
    apply_fn: ``apply_fn(params, *inputs)`` of the dense model.
    packed: the packed params (from :func:`ldr`, :func:`circulant` or :func:`toeplitz`'s
      ``pack``, or a chain's).

  Returns:
    ``fn(*inputs) -> outputs``, jitted, with ``packed`` (put on the default device once,
    here) passed as an argument.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcompress import sharing
    >>> c = sharing.ldr(2)
    >>> packed = c.pack(*c.init({'w': jax.random.normal(jax.random.key(0), (16, 8))}))
    >>> x = jnp.ones((3, 16))
    >>> y = serve(lambda p, x: x @ p['w'], packed)(x)
    >>> bool(jnp.allclose(y, x @ packed['w'].materialize(), atol=1e-4))
    True
  """
  run = jax.jit(structured(apply_fn))
  on_device = jax.device_put(packed)
  return lambda *inputs: run(on_device, *inputs)
