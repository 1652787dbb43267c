import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import export
from jaxcompress.export.sparse import _relative_layout


def sparse_matrix(density, shape=(64, 48), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  return np.where(rng.random(shape) < density, x, 0.0).astype(np.float32)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("fmt", [None, "bitmask", "relative"])
def test_sparse_round_trip_is_exact(density, fmt):
  x = sparse_matrix(density)
  s = export.from_dense(x, format=fmt)
  np.testing.assert_array_equal(np.asarray(s.materialize()), x)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda s: s.materialize())(s)), x)


def test_sparse_picks_the_smaller_format():
  dense_ish, very_sparse = sparse_matrix(0.5), sparse_matrix(0.01)
  assert export.from_dense(dense_ish).format == "bitmask"
  assert export.from_dense(very_sparse).format == "relative"
  for x in (dense_ish, very_sparse):
    chosen = export.from_dense(x).nbytes
    assert chosen == min(export.from_dense(x, format=f).nbytes for f in ("bitmask", "relative"))


def test_sparse_bytes_are_what_is_stored():
  x = sparse_matrix(0.5)
  s = export.from_dense(x, format="bitmask")
  nnz = np.count_nonzero(x)
  assert s.nbytes == 4 * nnz + x.size // 8


def test_relative_indices_insert_fillers_for_long_gaps():
  # Deep Compression's example: 3-bit gaps, a jump of more than 8 needs a filler zero.
  d, slot = _relative_layout(np.array([1, 4, 15]), 3)
  assert d.tolist() == [1, 2, 7, 2]  # position 12 is a filler: 4 + 7 + 1
  assert slot.tolist() == [0, 1, 3]
  assert (np.cumsum(d + 1) - 1).tolist() == [1, 4, 12, 15]


def test_sparse_integer_codes_at_their_bit_width():
  codes = np.array([[0, 3, 0, -4], [0, 0, 0, 1]], np.int32)
  s = export.from_dense(codes, value_bits=3, signed=True)
  np.testing.assert_array_equal(np.asarray(s.materialize()), codes)
  assert isinstance(s.values, export.BitPacked) and s.values.bits == 3


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_qarray_materializes_codes_times_scale(bits):
  rng = np.random.default_rng(bits)
  lo, hi = export.code_range(bits, True)
  codes = rng.integers(lo, hi + 1, size=(6, 5))
  scale = rng.uniform(0.01, 1.0, size=(1, 5)).astype(np.float32)
  q = export.QArray(export.store_codes(codes, bits, signed=True), scale, None, bits, "float32")
  np.testing.assert_array_equal(np.asarray(q.materialize()), codes.astype(np.float32) * scale)
  stored = q.codes.nbytes
  assert stored == (codes.size * bits + 7) // 8
  assert q.nbytes == stored + scale.nbytes


def test_qarray_with_zero_point():
  q = export.QArray(np.array([0, 5, 255], np.uint8), np.float32(0.5), np.int32(5), 8, "float32")
  np.testing.assert_array_equal(np.asarray(q.materialize()), [-2.5, 0.0, 125.0])


def test_codebook_array():
  codebook = np.array([-1.0, 0.0, 0.5], np.float32)
  idx = np.array([[0, 1], [2, 2]])
  c = export.from_assignments(codebook, idx)
  np.testing.assert_array_equal(np.asarray(c.materialize()), codebook[idx])
  assert c.indices.bits == 2 and c.nbytes == 12 + 1
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\)"):
    export.from_assignments(codebook, np.array([3]))


def test_factorized():
  u, v = jnp.ones((12, 2)), jnp.arange(8.0).reshape(2, 4)
  f = export.factorize(u, v, (3, 4, 4))
  np.testing.assert_allclose(f.materialize(), (u @ v).reshape(3, 4, 4))
  assert f.rank == 2 and f.nbytes == (24 + 8) * 4
  with pytest.raises(ValueError, match="do not make shape"):
    export.factorize(u, v, (5, 5))
