import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcompress import pruning


def test_global_topk_keeps_the_largest_anywhere_exactly():
  scores = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate([(7, 3), (5,), (2, 2, 2)])]
  masks = pruning.global_topk_masks(scores, 0.7)
  flat = np.concatenate([np.asarray(s).ravel() for s in scores])
  kept = np.concatenate([np.asarray(m).ravel() for m in masks])
  assert kept.sum() == flat.size - round(0.7 * flat.size)
  assert flat[kept].min() > flat[~kept].max()


def test_global_ties_keep_the_earlier_leaf_then_element():
  masks = pruning.global_topk_masks([jnp.ones(3), jnp.ones(3)], 0.5)
  assert [m.tolist() for m in masks] == [[True, True, True], [False, False, False]]


def test_global_topk_is_the_same_on_sharded_leaves():
  mesh = Mesh(np.array(jax.devices()), ("x",))
  scores = [jax.random.normal(jax.random.key(0), (16, 8)), jax.random.normal(jax.random.key(1), (8, 32))]
  sharded = [jax.device_put(s, NamedSharding(mesh, P("x"))) for s in scores]
  expected = pruning.global_topk_masks(scores, 0.9)
  got = jax.jit(pruning.global_topk_masks, static_argnums=1)(sharded, 0.9)
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e, g)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("shape", [(16, 6), (3, 3, 8, 5)])
def test_nm_every_group_along_contraction_axis_has_exactly_n(n, m, shape):
  w = jax.random.normal(jax.random.key(0), shape)
  mask = np.asarray(pruning.nm_mask(jnp.abs(w), n, m))
  moved = np.moveaxis(mask, -2, -1)
  groups = moved.reshape(*moved.shape[:-1], -1, m)
  assert (groups.sum(-1) == n).all()
  # The kept ones are the n largest of each group.
  absw = np.moveaxis(np.abs(np.asarray(w)), -2, -1).reshape(groups.shape)
  assert (np.where(groups, absw, np.inf).min(-1) >= np.where(groups, -np.inf, absw).max(-1)).all()


def test_nm_ties_and_bad_input():
  assert pruning.nm_mask(jnp.ones((4, 1)), 2, 4).ravel().tolist() == [True, True, False, False]
  with pytest.raises(ValueError, match="n <= m, got n=5, m=4"):
    pruning.nm_mask(jnp.ones((8, 2)), 5, 4)
  with pytest.raises(ValueError, match="length 6, not divisible by m=4"):
    pruning.nm_mask(jnp.ones((6, 2)), 2, 4)


def test_block_mask_keeps_whole_blocks():
  w = jax.random.normal(jax.random.key(0), (8, 16))
  mask = np.asarray(pruning.block_mask(jnp.abs(w), 0.75, (1, 4)))
  blocks = mask.reshape(8, 4, 4)
  assert ((blocks.all(-1)) | (~blocks.any(-1))).all()
  assert blocks.all(-1).sum() == 32 - 24
  with pytest.raises(ValueError, match="not divisible by 4"):
    pruning.block_mask(jnp.ones((8, 6)), 0.5, (1, 4))


def test_all_equal_scores_keep_exactly_the_count_by_position():
  mask = pruning.topk_mask(jnp.zeros((10,)), 0.99)  # round(9.9) = 10 pruned
  assert int(mask.sum()) == 0
  mask = pruning.topk_mask(jnp.zeros((10,)), 0.94)
  assert mask.tolist() == [True] + [False] * 9


def test_radix_select_equals_a_stable_sort_with_ties_nan_and_signed_zeros():
  from jaxcompress.pruning._criteria import keep_top

  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, size=500).astype(np.float32)  # many ties
  x[::37] = np.nan
  x[5], x[6] = -0.0, 0.0
  ranked = np.where(np.isnan(x), -np.inf, x)
  order = np.argsort(-ranked, kind="stable")
  for keep in (0, 1, 7, 250, 499, 500):
    expected = np.zeros(x.size, bool)
    expected[order[:keep]] = True
    np.testing.assert_array_equal(np.asarray(keep_top(jnp.asarray(x), keep)), expected)


def _stable_sort_mask(x, keep):
  ranked = np.where(np.isnan(x), -np.inf, x.astype(np.float32))
  expected = np.zeros(x.size, bool)
  expected[np.argsort(-ranked, kind="stable")[:keep]] = True
  return expected


@pytest.mark.parametrize(  # bitwise below 2**16 scores, 16-bit histograms from there on
  "dtype,size", [(np.float32, 300), (np.float32, 70_000), (np.float16, 70_000), (jnp.bfloat16, 70_000)]
)
def test_histogram_select_equals_a_stable_sort(dtype, size):
  from jaxcompress.pruning._criteria import keep_top

  rng = np.random.default_rng(size)
  big = 3e38 if dtype == np.float32 else float(jnp.finfo(dtype).max)
  magnitudes = rng.choice(np.array([1.0, 1e-3, big], np.float32), size=size)
  x = (rng.integers(-5, 6, size=size) * magnitudes / 5).astype(np.float32)  # many ties, extremes included
  x[:3] = [big, -big, -0.0]
  x = np.asarray(jnp.asarray(x, dtype)).astype(np.float32)  # the values the dtype holds
  select = jax.jit(keep_top)
  for keep in (0, 1, size // 3, size // 2, size - 1, size):
    got = np.asarray(select(jnp.asarray(x, dtype), keep))
    np.testing.assert_array_equal(got, _stable_sort_mask(x, keep), err_msg=f"keep={keep}")
  for equal in (np.zeros(size, np.float32), np.full(size, big, np.float32)):  # all equal: by position
    np.testing.assert_array_equal(
      np.asarray(select(jnp.asarray(equal, dtype), size // 2)), _stable_sort_mask(equal, size // 2)
    )


def test_global_histogram_select_equals_a_stable_sort_over_the_concatenation():
  rng = np.random.default_rng(3)
  scores = [rng.integers(0, 4, size=s).astype(np.float32) for s in ((300, 210), (5000,), (7, 3))]  # 68,021: histograms
  flat = np.concatenate([s.ravel() for s in scores])
  masks = jax.jit(pruning.global_topk_masks, static_argnums=1)([jnp.asarray(s) for s in scores], 0.6)
  keep = flat.size - round(0.6 * flat.size)
  np.testing.assert_array_equal(np.concatenate([np.asarray(m).ravel() for m in masks]), _stable_sort_mask(flat, keep))


def test_global_masks_keeping_one_equal_ranking_with_each_leafs_best_raised():
  from jaxcompress.pruning._masking import first_kept, global_masks_keeping_one

  rng = np.random.default_rng(4)
  big = rng.integers(1, 4, size=(6, 5)).astype(np.float32)
  both = jax.jit(
    lambda scores: (
      global_masks_keeping_one(scores, 0.8),
      pruning.global_topk_masks([first_kept(s) for s in scores], 0.8),
    )
  )
  for small in (np.full(4, 0.5, np.float32), rng.integers(1, 4, size=4).astype(np.float32)):  # emptied / not
    got, expected = both([jnp.asarray(big), jnp.asarray(small)])
    for g, e in zip(got, expected):
      np.testing.assert_array_equal(g, e)
    assert all(bool(g.any()) for g in got)


def test_global_masks_keeping_one_on_the_histogram_path_equals_a_stable_sort_with_each_leafs_best_raised():
  # 2**16+ scores: whether a leaf would be emptied is read from the histograms' per-leaf counts, ties included
  from jaxcompress.pruning._masking import global_masks_keeping_one

  select = jax.jit(global_masks_keeping_one)
  big = np.ones((300, 220), np.float32)  # 66,000 ties
  # the small leaf: emptied by ties, kept by ties, below every big score, above them
  for value, sparsity in [(1.0, 0.5), (1.0, 1e-5), (0.5, 0.1), (2.0, 0.5)]:
    small = np.full(4, value, np.float32)
    raised = np.concatenate([big.ravel(), small])
    raised[[0, big.size]] = np.inf  # each leaf's best (the first of equals) ranks first
    keep = raised.size - round(sparsity * raised.size)
    got = select([jnp.asarray(big), jnp.asarray(small)], sparsity)
    flat = np.concatenate([np.asarray(m).ravel() for m in got])
    np.testing.assert_array_equal(flat, _stable_sort_mask(raised, keep), err_msg=f"{value=}, {sparsity=}")
