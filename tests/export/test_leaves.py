import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import export
from jaxcompress.export._sparse import _relative_codes


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


def test_relative_indices_bridge_long_gaps_with_skip_codes():
  # 3-bit gaps: code 7 means "advance 7, no entry"; a real code c advances c + 1.
  codes = _relative_codes(np.array([1, 4, 15]), 3)
  assert codes.tolist() == [1, 2, 7, 3]  # 4 -> (skip 7) 11 -> 11 + 3 + 1 = 15
  s = export.from_mask(np.arange(16.0), np.isin(np.arange(16), [1, 4, 15]), format="relative")
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(s.present())), [1, 4, 15])
  # A gap of 6 fits one code; a gap of 7 needs a skip code first.
  assert _relative_codes(np.array([0, 7]), 3).tolist() == [0, 6]
  assert _relative_codes(np.array([0, 8]), 3).tolist() == [0, 7, 0]
  # Given the dense size, trailing skips carry the stream to within 7 of the end (16 of 20).
  assert _relative_codes(np.array([1]), 3, 20).tolist() == [1, 7, 7]
  s = export.from_mask(np.arange(20.0), np.arange(20) == 1, format="relative")
  assert s.positions.size == len(_relative_codes(np.array([1]), s.positions.bits, 20))
  assert np.flatnonzero(np.asarray(s.present())).tolist() == [1]


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_relative_codes_round_trip_every_gap(bits):
  rng = np.random.default_rng(bits)
  mask = rng.random(300) < 0.15
  mask[[0, -1]] = True, False
  x = np.where(mask, rng.integers(0, 3, 300), 0)  # stored values include 0: the mask is exact
  for b in (bits,):
    codes = _relative_codes(np.flatnonzero(mask), b)
    assert codes.max() <= (1 << b) - 1
  s = export.from_mask(x, mask, value_bits=2, signed=False, format="relative")
  np.testing.assert_array_equal(np.asarray(s.present()), mask)
  np.testing.assert_array_equal(np.asarray(s.materialize()), x)


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
