"""Accounting: bytes as stored, sparsity and bits per weight, and analytic FLOPs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcompress.core.tree import PyTree, is_packed_leaf, path_str

FP32_BYTES = 4


@dataclasses.dataclass(frozen=True)
class LeafReport:
  """One leaf of a param tree or packed tree.

  Attributes:
    path: the leaf's path string.
    kind: ``'dense'`` or the compressed leaf's type with its key parameters.
    shape: the dense shape.
    dtype: the dense dtype.
    size: number of weights.
    nonzeros: nonzero weights in the dense view.
    bytes: bytes as stored.
  """

  path: str
  kind: str
  shape: tuple[int, ...]
  dtype: str
  size: int
  nonzeros: int
  bytes: int

  @property
  def sparsity(self) -> float:
    """Fraction of zero weights."""
    return 1.0 - self.nonzeros / self.size if self.size else 0.0

  @property
  def bits_per_weight(self) -> float:
    """Stored bits divided by the number of weights."""
    return 8.0 * self.bytes / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class Report:
  """Per-leaf rows and totals; ``str(report)`` renders a table."""

  leaves: tuple[LeafReport, ...]

  @property
  def size(self) -> int:
    return sum(r.size for r in self.leaves)

  @property
  def nonzeros(self) -> int:
    return sum(r.nonzeros for r in self.leaves)

  @property
  def bytes(self) -> int:
    """Total bytes as stored."""
    return sum(r.bytes for r in self.leaves)

  @property
  def dense_fp32_bytes(self) -> int:
    """What the same weights take as dense float32."""
    return FP32_BYTES * self.size

  @property
  def compression_ratio(self) -> float:
    """Dense float32 bytes divided by stored bytes."""
    return self.dense_fp32_bytes / self.bytes if self.bytes else math.inf

  def __str__(self) -> str:
    header = f"{'path':<28} {'kind':<26} {'shape':<16} {'sparsity':>8} {'bits/w':>7} {'bytes':>10}"
    lines = [header, "-" * len(header)]
    for r in self.leaves:
      lines.append(
        f"{r.path:<28} {r.kind:<26} {r.shape!s:<16} {r.sparsity:>8.3f} {r.bits_per_weight:>7.2f} {r.bytes:>10,}"
      )
    lines.append("-" * len(header))
    sparsity = 1 - self.nonzeros / self.size if self.size else 0.0
    bits = 8 * self.bytes / self.size if self.size else 0.0
    lines.append(
      f"{'total':<28} {'':<26} {f'{self.size:,} weights':<16} {sparsity:>8.3f} {bits:>7.2f} {self.bytes:>10,}"
    )
    lines.append(f"compression ratio vs dense float32: {self.compression_ratio:.2f}x")
    return "\n".join(lines)


def _kind(leaf: Any) -> str:
  if not is_packed_leaf(leaf):
    return "dense"
  name = type(leaf).__name__
  if hasattr(leaf, "bits"):
    inner = getattr(leaf, "codes", None)
    return f"{name}({leaf.bits}b{', sparse' if type(inner).__name__ == 'SparseArray' else ''})"
  if hasattr(leaf, "format"):
    return f"{name}({leaf.format})"
  return name


def report(tree: PyTree) -> Report:
  """Accounts for every leaf of a param tree or a packed tree.

  Dense arrays count ``size * itemsize`` bytes; compressed leaves count their
  ``nbytes`` (every array they store). Nonzeros are counted on the dense view.

  Args:
    tree: params, or the output of ``Compressor.pack``; must hold concrete arrays.

  Returns:
    A :class:`Report`.

  Example:
    >>> import jax.numpy as jnp
    >>> r = report({'w': jnp.zeros((4, 4)), 'b': jnp.ones(4)})
    >>> r.bytes, r.nonzeros, r.compression_ratio
    (80, 4, 1.0)
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_packed_leaf)
  packed = [leaf for _, leaf in flat if is_packed_leaf(leaf)]
  # One jitted call materializes every compressed leaf (eager unpacking would compile
  # each small op of each leaf separately); dense leaves are read as they are.
  unpacked = iter(jax.jit(lambda ls: [x.materialize() for x in ls])(packed))
  rows = []
  for keypath, leaf in flat:
    dense = np.asarray(next(unpacked) if is_packed_leaf(leaf) else leaf)
    rows.append(
      LeafReport(
        path=path_str(keypath),
        kind=_kind(leaf),
        shape=tuple(dense.shape),
        dtype=str(dense.dtype),
        size=int(dense.size),
        nonzeros=int(np.count_nonzero(dense)),
        bytes=int(leaf.nbytes) if is_packed_leaf(leaf) else int(dense.nbytes),
      )
    )
  return Report(tuple(rows))


def dense_flops(batch: int, in_features: int, out_features: int, *, bias: bool = True) -> int:
  """FLOPs of ``x @ kernel (+ bias)`` for ``x`` of shape ``(batch, in_features)``.

  A multiply-accumulate counts as 2 FLOPs; the bias adds ``batch * out_features``.
  """
  return 2 * batch * in_features * out_features + (batch * out_features if bias else 0)


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
  """Output length of one spatial axis for ``'SAME'`` or ``'VALID'`` padding.

  Raises:
    ValueError: for another padding, or a ``'VALID'`` kernel larger than the input.
  """
  if padding == "SAME":
    return -(-size // stride)
  if padding == "VALID":
    if kernel > size:
      raise ValueError(f"VALID kernel of size {kernel} is larger than the input size {size}")
    return -(-(size - kernel + 1) // stride)
  raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _valid_taps(size: int, kernel: int, stride: int, padding: str) -> int:
  """Kernel taps that land inside the input, summed over one axis's output positions."""
  out = conv_output_size(size, kernel, stride, padding)
  pad_before = max((out - 1) * stride + kernel - size, 0) // 2 if padding == "SAME" else 0
  total = 0
  for o in range(out):
    start = o * stride - pad_before
    total += min(start + kernel, size) - max(start, 0)
  return total


def conv_flops(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  *,
  strides: Sequence[int] | int = 1,
  padding: str = "SAME",
  feature_group_count: int = 1,
  bias: bool = True,
  count_padding: bool = True,
) -> tuple[int, tuple[int, ...]]:
  """FLOPs of a 2-D convolution in Flax layout, and its output shape.

  Each output element takes ``kh * kw * in / groups`` multiply-accumulates (2 FLOPs
  each), the convention of the papers (MobileNet's ``Dk² M N DF²``); the bias adds one
  FLOP per output element. With ``count_padding=False`` the taps that fall on
  ``'SAME'`` zero padding are not counted, which is what XLA's cost analysis reports.

  Args:
    input_shape: ``(batch, height, width, in_channels)``.
    kernel_shape: ``(kh, kw, in_channels / feature_group_count, out_channels)``.
    strides: an int or ``(sh, sw)``.
    padding: ``'SAME'`` or ``'VALID'``.
    feature_group_count: groups (``in_channels`` for depthwise).
    bias: whether a bias is added.
    count_padding: count multiplications by padding zeros.

  Returns:
    ``(flops, (batch, out_h, out_w, out_channels))``.

  Raises:
    ValueError: if the kernel's input channels do not equal
      ``in_channels / feature_group_count``, or the padding is unknown.
  """
  n, h, w, cin = input_shape
  kh, kw, kin, cout = kernel_shape
  if kin * feature_group_count != cin:
    raise ValueError(f"kernel input channels {kin} x feature_group_count {feature_group_count} != input channels {cin}")
  sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
  out = (n, conv_output_size(h, kh, sh, padding), conv_output_size(w, kw, sw, padding), cout)
  outputs = math.prod(out)
  if count_padding:
    macs = outputs * kh * kw * kin
  else:
    macs = n * cout * kin * _valid_taps(h, kh, sh, padding) * _valid_taps(w, kw, sw, padding)
  return 2 * macs + (outputs if bias else 0), out
