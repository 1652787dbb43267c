import math

import numpy as np
import pytest

from jaxcompress import pruning

SHAPES = [(3, 3, 1, 16), (3, 3, 16, 32), (512, 120), (120, 10)]


def test_erk_matches_the_formula_and_the_budget():
  s = 0.9
  out = np.array([float(x) for x in pruning.erk_sparsities(SHAPES, s)])
  n = np.array([math.prod(x) for x in SHAPES], float)
  raw = np.array([sum(x) / math.prod(x) for x in SHAPES])
  density = 1 - out
  assert np.isclose((n * density).sum(), (1 - s) * n.sum(), rtol=1e-5)
  free = density < 1
  eps = density[free] / raw[free]
  np.testing.assert_allclose(eps, eps[0], rtol=1e-5)  # density proportional to raw ERK score
  assert (raw[~free] >= raw[free].max()).all()  # capped layers are the densest by ERK


def test_erk_caps_small_layers_at_dense():
  out = [float(x) for x in pruning.erk_sparsities([(2, 2), (1000, 1000)], 0.5)]
  assert out[0] == 0.0
  assert np.isclose(out[1], 1 - (0.5 * 1000004 - 4) / 1e6, atol=1e-5)


def test_overrides_and_exclusions():
  alloc = pruning.Allocation("uniform", overrides={"b/.*": 0.3}, exclude_first=True, exclude_last=True)
  paths = ["a/kernel", "b/kernel", "c/kernel", "d/kernel"]
  out = [float(x) for x in alloc.sparsities(paths, [(4, 4)] * 4, 0.8)]
  assert out == pytest.approx([0.0, 0.3, 0.8, 0.0])


def test_bad_allocations():
  with pytest.raises(ValueError, match="allocation method"):
    pruning.Allocation("erdos")
  with pytest.raises(ValueError, match="overrides"):
    pruning.Allocation(overrides={"x": 1.5})
  with pytest.raises(ValueError, match="regular expression"):
    pruning.Allocation(overrides={"(": 0.5})
