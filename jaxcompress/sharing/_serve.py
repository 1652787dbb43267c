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
from jaxcompress.core.tree import PyTree
from jaxcompress.graph._packed import packed_sites, served
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


def _dtype(leaf: Any) -> Any:
  return jnp.result_type(*(jnp.asarray(export.materialize(a)).dtype for a in jax.tree.leaves(leaf)))


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

  def op(site: graph.Site, activation: jax.Array, leaf: Any) -> jax.Array | None:
    if (
      site.op == "dot_general"
      and len(leaf.dense_shape) == 2
      and site.weight_operand == 1
      and site.leaf_axes == (0, 1)
      and site.params.get("dimension_numbers") == (((activation.ndim - 1,), (0,)), ((), ()))
    ):
      return _product(leaf, activation).astype(site.activation_dtype)
    return None

  return packed_sites(apply_fn, _STRUCTURED, op, _dtype, "structured")


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
  return served(structured(apply_fn), packed)
