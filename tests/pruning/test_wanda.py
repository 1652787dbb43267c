"""Wanda (Sun et al. 2023): |W|·‖X‖ per output, against a NumPy reference and magnitude."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

IN, OUT, TOKENS = 16, 8, 96


def _outlier_inputs(seed, n=TOKENS):
  """Tokens whose channels 2 and 9 are 12x the others, as LLM activations' outlier features."""
  x = np.random.default_rng(seed).normal(size=(n, IN)).astype(np.float32)
  x[:, [2, 9]] *= 12.0
  return x


@pytest.fixture(scope="module")
def layer():
  w = np.random.default_rng(0).normal(size=(IN, OUT)).astype(np.float32)
  return {"dense": {"kernel": jnp.asarray(w), "bias": jnp.zeros(OUT)}}


def dense(p, x):
  return x @ p["dense"]["kernel"] + p["dense"]["bias"]


def _reference_mask(w, x, sparsity=None, nm=None):
  """The paper's rule in NumPy: S = |W| * ||X_j||, keep the best per output (column)."""
  score = np.abs(w) * np.linalg.norm(x.astype(np.float64), axis=0)[:, None]
  mask = np.zeros(w.shape, bool)
  for o in range(w.shape[1]):
    if nm is None:
      keep = w.shape[0] - round(sparsity * w.shape[0])
      mask[np.argsort(-score[:, o], kind="stable")[:keep], o] = True
    else:
      n, m = nm
      for g in range(0, w.shape[0], m):
        mask[g + np.argsort(-score[g : g + m, o], kind="stable")[:n], o] = True
  return mask


def test_score_is_magnitude_times_input_norm():
  w = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
  norms = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
  np.testing.assert_allclose(np.asarray(jc.pruning.wanda_score(w, norms)), np.abs(w) * norms[:, None], rtol=1e-6)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_masks_match_reference_with_padding_dropped(layer, nm):
  x = _outlier_inputs(1).reshape(4, TOKENS // 4, IN)  # (examples, tokens, features)
  mask = np.ones((4, TOKENS // 4), bool)
  mask[:, -5:] = False  # padding: these tokens must not count
  x_pad = x.copy()
  x_pad[~mask] = 1e3  # huge values at padding would change the ranking if they counted
  kwargs = {"n": 2, "m": 4} if nm else {"sparsity": 0.5}
  c_fn = lambda p, x, m: dense(p, x)  # the mask is the second input
  c = jc.pruning.wanda(apply_fn=c_fn, batches=[(jnp.asarray(x_pad), jnp.asarray(mask))], token_mask=1, **kwargs)
  _, state = c.init(layer)
  got = np.asarray(c.masks(state)["dense"]["kernel"])
  want = _reference_mask(np.asarray(layer["dense"]["kernel"]), x[mask], sparsity=0.5, nm=nm)
  np.testing.assert_array_equal(got, want)
  assert c.masks(state)["dense"]["bias"] is None


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_beats_magnitude_in_output_error(layer, nm):
  calib, held_out = _outlier_inputs(2), _outlier_inputs(3)
  if nm:
    w_c, m_c = jc.pruning.wanda(apply_fn=dense, batches=[(calib,)], n=2, m=4), jc.pruning.n_m(2, 4)
  else:
    w_c, m_c = jc.pruning.wanda(0.5, apply_fn=dense, batches=[(calib,)]), jc.pruning.magnitude(0.5)
  ref = dense(layer, held_out)

  def err(c):
    p, s = c.init(layer)
    return float(jnp.mean((dense(c.apply(p, s), held_out) - ref) ** 2))

  assert err(w_c) < 0.5 * err(m_c)


def test_bad_inputs_name_the_value(layer):
  x = _outlier_inputs(5)
  with pytest.raises(ValueError, match="sparsity"):
    jc.pruning.wanda(1.0, apply_fn=dense, batches=[(x,)])
  with pytest.raises(ValueError, match="n=2, m=4"):
    jc.pruning.wanda(0.5, apply_fn=dense, batches=[(x,)], n=2, m=4)
  six = {"dense": {"kernel": jnp.ones((6, 2)), "bias": jnp.zeros(2)}}
  with pytest.raises(ValueError, match=r"6 inputs.*m=4"):
    jc.pruning.wanda(apply_fn=dense, batches=[(jnp.ones((3, 6)),)], n=2, m=4).init(six)
  pad_only = (jnp.asarray(x[None]), jnp.zeros((1, TOKENS), bool))
  with pytest.raises(ValueError, match="no valid token"):
    jc.pruning.wanda(0.5, apply_fn=lambda p, x, m: dense(p, x), batches=[pad_only], token_mask=1).init(layer)
  with pytest.raises(ValueError, match="feed no Dense site"):
    jc.pruning.wanda(0.5, apply_fn=dense, batches=[(x,)], where="dense/bias").init(layer)


def test_zero_token_batches(layer):
  x = _outlier_inputs(6)
  empty = (jnp.zeros((0, IN)),)
  with pytest.raises(ValueError, match=r"no valid token.*every batch is empty"):
    jc.graph.dense_inputs(dense, layer, [empty])
  # An empty batch among real ones adds nothing.
  got = jc.graph.dense_inputs(dense, layer, [empty, (x,), empty])
  (site,) = got.values()
  assert site.count == TOKENS
  np.testing.assert_allclose(site.sqnorm, np.sum(x.astype(np.float64) ** 2, axis=0), rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_calibration_is_named(layer, bad):
  # Scores of NaN would rank arbitrarily; the padding row (masked out) may hold anything.
  x = _outlier_inputs(7)
  x[3, 5] = bad
  with pytest.raises(ValueError, match=r"site 'dense/kernel'.*not finite.*features \[5\]"):
    jc.pruning.wanda(0.5, apply_fn=dense, batches=[(x,)]).init(layer)
  keep = np.ones(TOKENS, bool)
  keep[3] = False
  jc.pruning.wanda(0.5, apply_fn=lambda p, x, m: dense(p, x), batches=[(x, keep)], token_mask=1).init(layer)
