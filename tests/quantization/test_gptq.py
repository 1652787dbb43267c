"""GPTQ against a NumPy transcription of the paper's update rule, and its claims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.quantization import gptq, gptq_layer

# One kernel shape and one block size everywhere: each distinct compiled program costs seconds.
N_IN, N_OUT, GROUP, BLOCK = 64, 16, 16, 16


def correlated(seed=0, n=512, n_in=N_IN):
  """Inputs with strongly correlated features (where GPTQ's correction matters)."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(n_in, n_in)) / np.sqrt(n_in)
  return (rng.normal(size=(n, n_in)) @ mix + 0.2 * rng.normal(size=(n, n_in))).astype(np.float32)


@pytest.fixture(scope="module")
def problem():
  x = correlated()
  w = np.random.default_rng(1).normal(size=(N_IN, N_OUT)).astype(np.float32)
  h = (2 * x.T.astype(np.float64) @ x / len(x)).astype(np.float32)
  return x, w, h


def affine_grid(w, bits):
  """Per-row affine grid over [min(w, 0), max(w, 0)] (the paper's code), float64."""
  lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
  scale = np.maximum((hi - lo) / (2**bits - 1), np.finfo(np.float32).tiny)
  return scale, np.clip(-np.round(lo / scale), 0, 2**bits - 1)


def reference(w_flax, h, *, bits, group_size, damp=0.01, order=None, static=False):
  """GPTQ as equations (2)-(3) of the paper, column by column, without Cholesky or blocks:
  quantize column q, update the rest by -(w_q - quant(w_q)) / [H⁻¹]_qq · H⁻¹_{q,:}, then
  eliminate q from H⁻¹. Returns the integer codes in the (in, out) layout."""
  w = np.asarray(w_flax, np.float64).T.copy()  # (out, in)
  h = np.asarray(h, np.float64).copy()
  dead = np.diag(h) == 0
  h[dead, dead] = 1
  w[:, dead] = 0
  order = np.arange(w.shape[1]) if order is None else np.asarray(order)
  if static:  # grids from the original weights, groups in the original order
    grids = [affine_grid(w[:, g : g + group_size], bits) for g in range(0, w.shape[1], group_size)]
  w, h = w[:, order], h[np.ix_(order, order)]
  hinv = np.linalg.inv(h + damp * np.mean(np.diag(h)) * np.eye(len(h)))
  codes = np.zeros(w.shape, np.int64)
  for j in range(w.shape[1]):
    if static:
      scale, zero = grids[order[j] // group_size]
    elif j % group_size == 0:
      scale, zero = affine_grid(w[:, j : j + group_size], bits)
    q = np.clip(np.round(w[:, j] * (1 / scale)) + zero, 0, 2**bits - 1)
    codes[:, j] = q
    err = (w[:, j] - (q - zero) * scale) / hinv[j, j]
    w[:, j + 1 :] -= np.outer(err, hinv[j, j + 1 :])
    hinv = hinv - np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
  return codes[:, np.argsort(order)].T


def codes_of(qarray):
  return np.asarray(jc.export.materialize(qarray.codes))


def test_blocked_matches_unblocked_reference(problem):
  _, w, h = problem
  q, _, _ = gptq_layer(w, h, bits=4, group_size=GROUP, act_order=False, block_size=BLOCK)  # 4 lazy blocks
  np.testing.assert_array_equal(codes_of(q), reference(w, h, bits=4, group_size=GROUP))
  # A block that is not a multiple of the group is rounded up to one (1 -> 16): the same result.
  one, _, _ = gptq_layer(w, h, bits=4, group_size=GROUP, act_order=False, block_size=1)
  np.testing.assert_array_equal(codes_of(one), codes_of(q))


def test_act_order_permutation_undone(problem):
  _, w, h = problem
  order = np.argsort(-np.diag(h), kind="stable")
  q, _, _ = gptq_layer(w, h, bits=4, group_size=GROUP, act_order=True, block_size=BLOCK)
  expected = reference(w, h, bits=4, group_size=GROUP, order=order, static=True)
  np.testing.assert_array_equal(codes_of(q), expected)
  assert not np.array_equal(expected, reference(w, h, bits=4, group_size=GROUP, static=True))  # order matters


def round_to_nearest(w_flax, bits, group_size):
  """Affine round-to-nearest on GPTQ's grid (per group of inputs, per output), (in, out)."""
  w = np.asarray(w_flax, np.float64).T
  out = np.zeros_like(w)
  for g in range(0, w.shape[1], group_size):
    block = w[:, g : g + group_size]
    scale, zero = affine_grid(block, bits)
    q = np.clip(np.round(block * (1 / scale[:, None])) + zero[:, None], 0, 2**bits - 1)
    out[:, g : g + group_size] = (q - zero[:, None]) * scale[:, None]
  return out.T


@pytest.mark.parametrize("bits", [4, 3])
def test_beats_round_to_nearest(problem, bits):
  x, w, h = problem
  err = lambda k: float(np.sum((x @ w - x @ np.asarray(k, np.float64)) ** 2))
  rtn = round_to_nearest(w, bits, GROUP)
  for act_order in (False, True):
    q, dense, report = gptq_layer(w, h, bits=bits, group_size=GROUP, act_order=act_order, block_size=BLOCK)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(q.materialize()))  # what the model sees is stored
    assert err(dense) < 0.75 * err(rtn), (bits, act_order, err(dense), err(rtn))
    np.testing.assert_allclose(report.error, err(dense) / len(x), rtol=1e-3)


def test_singular_hessian_raises_damping():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, N_IN))  # 4 samples of 64 features: rank 4
  x[:, 5] = 0  # a dead input
  h = (2 * x.T @ x / 4).astype(np.float32)
  w = rng.normal(size=(N_IN, N_OUT)).astype(np.float32)
  with pytest.warns(UserWarning, match="damp raised to"):
    q, _, report = gptq_layer(w, h, bits=4, group_size=GROUP, damp=1e-8, block_size=BLOCK)
  dense = np.asarray(q.materialize())
  assert np.all(np.isfinite(dense)) and report.damp > 1e-8 and report.dead == 1
  np.testing.assert_array_equal(dense[5], 0.0)  # the dead input's weights are zero


def test_model_sequential_and_token_mask():
  k = jax.random.split(jax.random.key(0), 3)
  params = {"a": jax.random.normal(k[0], (N_IN, N_IN)) / 8, "b": jax.random.normal(k[1], (N_IN, N_OUT)) / 8}
  f = lambda p, x, m: jnp.tanh(x @ p["a"]) @ p["b"]
  x = jax.random.normal(k[2], (4, 32, N_IN))
  mask = jnp.arange(32)[None, :] < jnp.array([[32], [20], [9], [30]])  # padding at the ends
  opts = dict(bits=4, group_size=GROUP, block_size=BLOCK)
  r = gptq(f, params, [(x, mask)], token_mask=lambda b: b[1], **opts)
  assert isinstance(r.packed["a"], jc.export.QArray) and r.layers["a"].tokens == 91
  # Layer b's Hessian comes from the inputs of the quantized layer a, real tokens only.
  hidden = np.tanh(np.asarray(x)[np.asarray(mask)] @ np.asarray(r.packed["a"].materialize()))
  expected, _, _ = gptq_layer(params["b"], 2 * hidden.T @ hidden / 91, **opts)
  np.testing.assert_array_equal(codes_of(r.packed["b"]), codes_of(expected))
  with pytest.raises(ValueError, match="no valid token"):
    gptq(f, params, [(x, jnp.zeros_like(mask))], token_mask=lambda b: b[1], **opts)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"group_size": 48}, "group_size=48"),
    ({"bits": 9}, "bits"),
    ({"bits": 1}, "bits"),
    ({"damp": 0.0}, "damp"),
    ({"damp": -1.0}, "damp"),
  ],
)
def test_bad_inputs(problem, kwargs, match):
  _, w, h = problem
  with pytest.raises(ValueError, match=match):
    gptq_layer(w, h, **{"group_size": GROUP, **kwargs})


@pytest.mark.parametrize("kernel", [np.ones((8, 4), np.int32), np.ones((8, 4), bool)])
def test_integer_kernel_is_refused(kernel):
  with pytest.raises(TypeError, match=r"kernel.*int32|kernel.*bool"):
    gptq_layer(kernel, np.eye(8, dtype=np.float32), group_size=None)


def test_empty_kernel_is_refused():
  with pytest.raises(ValueError, match=r"kernel.*\(0, 4\)"):
    gptq_layer(np.zeros((0, 4), np.float32), np.zeros((0, 0), np.float32), group_size=None)


def test_hessian_overflow_from_finite_inputs_is_named():
  # 1e20² overflows float32 in XᵀX: the inputs are finite, and the message must not say otherwise.
  f = lambda p, x: x @ p["w"]
  with pytest.raises(ValueError, match=r"'w'.*overflows float32.*max\|x\|=1e\+20"):
    jc.graph.input_hessians(f, {"w": jnp.ones((2, 3))}, [jnp.full((4, 2), 1e20)])
  with pytest.raises(ValueError, match=r"'w'.*NaN or inf in its calibration inputs"):
    jc.graph.input_hessians(f, {"w": jnp.ones((2, 3))}, [jnp.full((4, 2), jnp.inf)])


def test_where_selecting_nothing_names_the_where():
  f = lambda p, x: x @ p["w"]
  with pytest.raises(ValueError, match=r"where='nothing' selects no leaf.*'w'"):
    gptq(f, {"w": jnp.ones((2, 3))}, [jnp.ones((4, 2))], group_size=None, where="nothing")


def test_hessian_scale_invariance_at_extremes():
  # GPTQ's update err / U_jj · U_j,: is invariant to H -> c·H (c > 0): a finite Hessian
  # near float32's range or among its denormals gives the well-scaled answer.
  x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
  h = 2 * x.T @ x / 32
  w = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
  _, ref, _ = gptq_layer(w, h, group_size=None)
  for c in (1e-40, 1e30):
    _, out, _ = gptq_layer(w, (h * c).astype(np.float32), group_size=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-5)
  skewed = np.diag([8.0] + [1.0] * 7).astype(np.float32)
  _, skew_ref, _ = gptq_layer(w, skewed, group_size=None)
  _, out, _ = gptq_layer(w, (skewed * np.float32(3e38 / 8)).astype(np.float32), group_size=None)
  np.testing.assert_allclose(np.asarray(out), np.asarray(skew_ref), rtol=1e-4, atol=1e-5)
