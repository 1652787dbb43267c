import numpy as np
import pytest

from jaxcompress import export


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_every_width(bits, signed):
  lo, hi = export.code_range(bits, signed)
  rng = np.random.default_rng(bits)
  codes = rng.integers(lo, hi + 1, size=(7, 13))
  codes[0, :2] = lo, hi  # the extremes must survive
  packed = export.pack_bits(codes, bits, signed=signed)
  assert packed.nbytes == -(-codes.size * bits // 8)
  np.testing.assert_array_equal(np.asarray(packed.materialize()), codes)


def test_layout_is_lsb_first():
  packed = export.pack_bits(np.array([1, 2, 3, 0]), 2, signed=False)
  # codes 01, 10, 11, 00 laid LSB first: 0b00_11_10_01
  assert packed.data.tolist() == [0b00111001]


def test_codes_that_do_not_fit():
  with pytest.raises(ValueError, match=r"code 8 does not fit 4 signed bits \[-8, 7\]"):
    export.pack_bits(np.array([0, 8]), 4, signed=True)
  with pytest.raises(ValueError, match="bits must be in"):
    export.pack_bits(np.array([0]), 0, signed=False)
  with pytest.raises(ValueError, match="codes must be integers"):
    export.pack_bits(np.array([0.5]), 4, signed=False)
