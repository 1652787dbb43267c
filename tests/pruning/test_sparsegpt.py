"""SparseGPT against a NumPy transcription of the OBS update, and its claims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.pruning import sparsegpt, sparsegpt_layer

# One kernel shape and one block size everywhere: each distinct compiled program costs seconds.
N_IN, N_OUT, BLOCK = 64, 16, 16


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(N_IN, N_IN)) / np.sqrt(N_IN)
  x = (rng.normal(size=(512, N_IN)) @ mix + 0.2 * rng.normal(size=(512, N_IN))).astype(np.float32)
  w = rng.normal(size=(N_IN, N_OUT)).astype(np.float32)
  h = (2 * x.T.astype(np.float64) @ x / len(x)).astype(np.float32)
  return x, w, h


def reference(w_flax, h, *, sparsity=0.5, n_m=None, block=BLOCK, damp=0.01):
  """SparseGPT with the paper's formulas and no Cholesky trick: the OBS saliency of column c
  is w² / [H_c⁻¹]_cc (the paper's w² / [chol(H⁻¹)]²_cc), with H_c the Hessian of the columns >= c (those not yet
  eliminated), inverted directly; pruning w_p updates the later weights by the OBS step
  δ = -w_p / [H⁻¹]_pp · H⁻¹_{p,:}, then p is eliminated from H⁻¹. Returns the pruned
  kernel and the keep-mask in the (in, out) layout."""
  w = np.asarray(w_flax, np.float64).T.copy()
  h = np.asarray(h, np.float64)
  h = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
  diag = np.array([np.linalg.inv(h[c:, c:])[0, 0] for c in range(len(h))])  # [H_c⁻¹]_cc
  hinv = np.linalg.inv(h)
  rows, cols = w.shape
  pruned = np.zeros(w.shape, bool)
  for j in range(cols):
    if n_m is None and j % block == 0:  # the block's lowest saliencies
      score = (w[:, j : j + block] ** 2 / diag[j : j + block]).ravel()
      k = round(sparsity * score.size)
      order = np.argsort(-score, kind="stable")
      pruned[:, j : j + block] = np.isin(np.arange(score.size), order[score.size - k :]).reshape(rows, -1)
    if n_m is not None and j % n_m[1] == 0:
      score = w[:, j : j + n_m[1]] ** 2 / diag[j : j + n_m[1]]
      ranks = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1, kind="stable")
      pruned[:, j : j + n_m[1]] = ranks >= n_m[0]
    p = pruned[:, j]
    delta = -np.outer(w[p, j] / hinv[j, j], hinv[j, :])  # the OBS update of every weight of these rows
    w[p] += delta
    assert np.allclose(w[p, j], 0.0)  # the step zeroes the pruned weight itself
    w[p, j] = 0.0
    hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]  # eliminate column j
  return w.T, ~pruned.T


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_obs_update_matches_reference(problem, n_m):
  _, w, h = problem
  dense, mask, _ = sparsegpt_layer(w, h, sparsity=0.5, n_m=n_m, block_size=BLOCK)
  expected, expected_mask = reference(w, h, n_m=n_m)
  np.testing.assert_array_equal(np.asarray(mask), expected_mask)
  np.testing.assert_allclose(np.asarray(dense), expected, rtol=1e-4, atol=1e-4)


def test_one_obs_step():
  """One pruned weight: w_1, w_2 of each row move by -w_0 [H⁻¹]_{0,j} / [H⁻¹]_00 (the OBS step),
  and nothing else moves. Inputs 0..2 are coupled, every other input is independent of
  them (a block-diagonal H), and only inputs 0..2 carry weights, w_0 the smallest."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=(3, 3))
  h = np.eye(N_IN)
  h[:3, :3] = a @ a.T + 0.5 * np.eye(3)
  w = np.zeros((N_IN, N_OUT), np.float32)
  w[0] = 0.01 * rng.choice([-1, 1], N_OUT)
  w[1:3] = rng.choice([-1, 1], (2, N_OUT)) * rng.uniform(1, 2, (2, N_OUT))
  dense, mask, _ = sparsegpt_layer(w, h.astype(np.float32), n_m=(2, 4), block_size=BLOCK)
  np.testing.assert_array_equal(
    np.asarray(mask)[:4], [[False] * N_OUT, [True] * N_OUT, [True] * N_OUT, [False] * N_OUT]
  )
  hinv = np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(N_IN))
  expected = w.astype(np.float64).copy()
  expected[1:3] -= np.outer(hinv[0, 1:3] / hinv[0, 0], w[0])
  expected[0] = 0.0
  np.testing.assert_allclose(np.asarray(dense), expected, rtol=1e-5, atol=1e-6)


def test_exact_sparsity_and_pattern(problem):
  _, w, h = problem
  _, mask, _ = sparsegpt_layer(w, h, sparsity=0.5, block_size=BLOCK)
  assert int(np.asarray(mask).sum()) == N_IN * N_OUT // 2
  dense, mask, _ = sparsegpt_layer(w, h, n_m=(2, 4), block_size=BLOCK)
  per_group = np.asarray(mask).reshape(N_IN // 4, 4, N_OUT).sum(axis=1)
  np.testing.assert_array_equal(per_group, 2)  # 2 of every 4 consecutive inputs, per output
  np.testing.assert_array_equal(np.asarray(dense)[~np.asarray(mask)], 0.0)


def magnitude_pruned(w, n_m):
  """Magnitude pruning at 50% (the largest |w| of the kernel kept) or n:m along the inputs."""
  w = np.asarray(w)
  if n_m is None:
    keep = np.abs(w) >= np.sort(np.abs(w), axis=None)[w.size // 2]
  else:
    groups = np.abs(w).reshape(-1, n_m[1], w.shape[1])
    keep = (np.argsort(np.argsort(-groups, axis=1), axis=1) < n_m[0]).reshape(w.shape)
  return np.where(keep, w, 0.0)


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_beats_magnitude(problem, n_m):
  x, w, h = problem
  magnitude = magnitude_pruned(w, n_m)
  assert np.mean(magnitude == 0) == 0.5
  dense, _, report = sparsegpt_layer(w, h, sparsity=0.5, n_m=n_m, block_size=BLOCK)
  err = lambda k: float(np.sum((x @ w - x @ np.asarray(k)) ** 2))
  assert err(dense) < 0.8 * err(magnitude), (err(dense), err(magnitude))
  np.testing.assert_allclose(report.error, err(dense) / len(x), rtol=1e-3)


def test_model_seeds_fixed_pruner():
  k = jax.random.split(jax.random.key(0), 3)
  params = {"a": jax.random.normal(k[0], (N_IN, N_IN)) / 8, "b": jax.random.normal(k[1], (N_IN, N_OUT)) / 8}
  f = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]
  x = jax.random.normal(k[2], (256, N_IN))
  r = sparsegpt(f, params, [x[:128], x[128:]], n_m=(2, 4), block_size=BLOCK)
  assert set(r.layers) == {"a", "b"} and r.layers["b"].tokens == 256
  # Sequential: b is solved on the inputs of the pruned a.
  hidden = np.tanh(np.asarray(x) @ np.asarray(r.params["a"]))
  expected, _, _ = sparsegpt_layer(params["b"], 2 * hidden.T @ hidden / 256, n_m=(2, 4), block_size=BLOCK)
  np.testing.assert_allclose(np.asarray(r.params["b"]), np.asarray(expected), rtol=1e-5, atol=1e-6)
  # The masks seed a pruner (its training with masks is in the conformance suite's
  # `fixed_masks` case); pack stores the survivors sparse.
  c = jc.pruning.fixed(r.masks)
  trainable, state = c.init(r.params)
  np.testing.assert_array_equal(np.asarray(trainable["a"]), np.asarray(r.params["a"]))  # already pruned
  packed = c.pack(trainable, state)
  assert isinstance(packed["a"], jc.export.SparseArray)
  np.testing.assert_array_equal(np.asarray(packed["a"].materialize()), np.asarray(r.params["a"]))
  np.testing.assert_array_equal(np.asarray(c.masks(state)["b"]), np.asarray(r.masks["b"]))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"n_m": (2, 4), "shape": (6, 4)}, r"n_m=\(2, 4\).*6"),
    ({"damp": 0.0}, "damp"),
    ({"damp": -0.5}, "damp"),
    ({"sparsity": 1.0}, "sparsity"),
    ({"n_m": (3, 2)}, "n <= m"),
  ],
)
def test_bad_inputs(kwargs, match):
  shape = kwargs.pop("shape", (8, 4))
  w, h = np.ones(shape, np.float32), np.eye(shape[0], dtype=np.float32)
  with pytest.raises(ValueError, match=match):
    sparsegpt_layer(w, h, **kwargs)


def test_fixed_rejects_bad_masks():
  with pytest.raises(ValueError, match="boolean"):
    jc.pruning.fixed({"w": np.ones((2, 2))})
  with pytest.raises(ValueError, match="shape"):
    jc.pruning.fixed({"w": np.ones((2, 3), bool)}).init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="names no param"):
    jc.pruning.fixed({"v": np.ones((2, 2), bool)}).init({"w": jnp.ones((2, 2))})


def test_float16_at_its_max_saturates(n_m=None):
  # The OBS update pushes surviving weights past float16's range: they saturate at ±65504
  # (as QArray.materialize does), never inf, and equal the float32 result clipped and cast.
  x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
  h = 2 * x.T @ x / 32
  w = np.where(np.random.default_rng(1).normal(size=(8, 4)) > 0, 65504.0, -65504.0)
  out, mask, report = sparsegpt_layer(w.astype(np.float16), h, n_m=n_m)
  ref, ref_mask, _ = sparsegpt_layer(w.astype(np.float32), h, n_m=n_m)
  assert out.dtype == jnp.float16 and np.isfinite(report.error)
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
  np.testing.assert_array_equal(np.asarray(out), np.clip(np.asarray(ref), -65504, 65504).astype(np.float16))


@pytest.mark.parametrize("kernel", [np.ones((8, 4), np.int32), np.ones((8, 4), bool)])
def test_integer_kernel_is_refused(kernel):
  with pytest.raises(TypeError, match=r"kernel.*int32|kernel.*bool"):
    sparsegpt_layer(kernel, np.eye(8, dtype=np.float32))


def test_empty_kernel_is_refused():
  with pytest.raises(ValueError, match=r"kernel.*\(0, 4\)"):
    sparsegpt_layer(np.zeros((0, 4), np.float32), np.zeros((0, 0), np.float32))


def test_hessian_scale_invariance_at_extremes():
  # The OBS update (err / U_jj · U_j,:) and the saliency ranking do not change when H is
  # multiplied by c > 0; finite Hessians near float32's range or its denormals must give
  # the well-scaled problem's answer, not NaN.
  x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
  h = 2 * x.T @ x / 32
  w = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
  ref, ref_mask, _ = sparsegpt_layer(w, h)
  skewed = np.diag([8.0] + [1.0] * 7).astype(np.float32)
  skew_ref, _, _ = sparsegpt_layer(w, skewed)
  for c in (1e-40, 1e30):
    out, mask, _ = sparsegpt_layer(w, (h * c).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-5)
  out, _, _ = sparsegpt_layer(w, (skewed * np.float32(3e38 / 8)).astype(np.float32))
  np.testing.assert_allclose(np.asarray(out), np.asarray(skew_ref), rtol=1e-4, atol=1e-5)
