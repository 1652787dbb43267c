"""Low-rank compressors: rank rules, bad inputs, factor training, chains, packing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import export, lowrank
from tests import helpers


def _small():
  return jax.random.normal(jax.random.key(7), (8, 6))


def _rel(a, b):
  return float(jnp.linalg.norm(jnp.asarray(a) - jnp.asarray(b)) / jnp.linalg.norm(jnp.asarray(b)))


def test_truncated_svd_error_is_the_tail_energy():
  w = jax.random.normal(jax.random.key(0), (12, 9))
  s = np.linalg.svd(np.asarray(w), compute_uv=False)
  f = lowrank.truncated_svd(w, 4)
  np.testing.assert_allclose(float(jnp.linalg.norm(f.u @ f.v - w)), np.sqrt((s[4:] ** 2).sum()), rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(f.u, axis=0), np.linalg.norm(f.v, axis=1), rtol=1e-4)  # balanced


def test_energy_is_on_sigma_squared():
  w = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
  # σ² energies 9/14 = 0.64, 13/14 = 0.93; on σ it would be 3/6, 5/6 = 0.83 (rank 3 at 0.9)
  assert lowrank.svd_rank(w, rank=None, energy=0.9, ratio=None) == 2
  assert lowrank.svd_rank(w, rank=None, energy=0.95, ratio=None) == 3
  assert lowrank.svd_rank(w, rank=None, energy=0.5, ratio=None) == 1
  assert lowrank.svd_rank(w, rank=None, energy=1.0, ratio=None) == 3


def test_ratio_and_fraction_ranks():
  w = jnp.ones((64, 300))
  assert lowrank.svd_rank(w, rank=None, energy=None, ratio=0.25) == 13  # floor(0.25 * 19200 / 364)
  assert lowrank.svd_rank(w, rank=0.25, energy=None, ratio=None) == 16
  assert lowrank.svd_rank(w, rank=0.1, energy=None, ratio=None) == 7  # ceil(6.4)
  assert lowrank.svd_rank(w, rank=None, energy=None, ratio=1e-6) == 1  # clamped to >= 1


def test_a_layer_is_left_dense_where_factors_would_be_larger():
  params = {"big": jnp.ones((40, 30)), "small": jax.random.normal(jax.random.key(1), (6, 5))}
  c = lowrank.svd(0.5)  # big: rank 15, 15*70 < 1200; small: rank 3, 3*11 >= 30
  trainable, state = c.init(params)
  assert isinstance(trainable["big"], lowrank.SVDFactors)
  assert trainable["small"] is params["small"]
  rows = {r.path: r for r in lowrank.report(state)}
  assert rows["big"].factorized and rows["big"].ranks == (15,)
  assert not rows["small"].factorized and "left dense" in str(rows["small"])
  packed = c.pack(trainable, state)
  assert isinstance(packed["big"], export.Factorized) and packed["big"].nbytes == 15 * 70 * 4
  np.testing.assert_array_equal(packed["small"], params["small"])


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: lowrank.svd(0), "rank must be a positive integer or a fraction in \\(0, 1\\], got 0"),
    (lambda: lowrank.svd(-3), "got -3"),
    (lambda: lowrank.svd(1.5), "got 1.5"),
    (lambda: lowrank.svd(energy=0.0), "energy must be in \\(0.0, 1.0\\], got 0.0"),
    (lambda: lowrank.svd(energy=1.2), "energy .* got 1.2"),
    (lambda: lowrank.svd(ratio=0), "ratio .* got 0"),
    (lambda: lowrank.svd(2, energy=0.9), "exactly one of"),
    (lambda: lowrank.svd(), "exactly one of"),
    (lambda: lowrank.svd(2, init="zeros"), "init must be one of"),
    (lambda: lowrank.tucker2((0, 2)), "ranks\\[0\\] .* got 0"),
    (lambda: lowrank.tucker2((1, 2, 3)), "pair"),
    (lambda: lowrank.cp(0), "rank must be in \\[1, inf\\], got 0"),
    (lambda: lowrank.cp(ratio=2.0), "ratio .* got 2.0"),
    (lambda: lowrank.spatial_svd(energy=-0.1), "energy .* got -0.1"),
  ],
)
def test_bad_hyperparameters_name_the_value(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_leaves_name_the_leaf_and_value():
  params = {"fc": {"kernel": jnp.ones((8, 6))}, "conv": {"kernel": jnp.ones((3, 3, 4, 8))}}
  with pytest.raises(ValueError, match=r"rank=7 is beyond leaf 'fc/kernel' of shape \(8, 6\): at most 6"):
    lowrank.svd(7).init(params)
  with pytest.raises(ValueError, match=r"leaf 'conv/kernel' has shape \(3, 3, 4, 8\): svd factorizes 2-D.*spatial_svd"):
    lowrank.svd(2, where=".*kernel").init(params)
  with pytest.raises(ValueError, match=r"leaf 'fc/kernel' has shape \(8, 6\): tucker2 factorizes 4-D.*lowrank.svd"):
    lowrank.tucker2(2, where=".*kernel").init(params)
  with pytest.raises(ValueError, match=r"ranks\[1\] \(output channels\)=9 is beyond leaf 'conv/kernel'"):
    lowrank.tucker2((2, 9)).init(params)
  with pytest.raises(
    ValueError, match=r"svd factorizes 2-D.*has none \(its kernels: \[\('conv/kernel', \(3, 3, 4, 8\)\)\]\).*cp"
  ):
    lowrank.svd(2).init({"conv": params["conv"]})  # the default where: no Dense kernel at all
  with pytest.raises(ValueError, match="energy= picks the rank of leaf 'fc/kernel'"):
    jax.jit(lambda p: lowrank.svd(energy=0.9).init(p)[0])(params)


# One conv shape and one setting per decomposition across these tests: each compiles once.
K_SHAPE = (3, 3, 4, 6)
CONV = {
  "spatial_svd": (lambda **kw: lowrank.spatial_svd(2, **kw), 2 * (12 + 18)),
  "tucker2": (lambda **kw: lowrank.tucker2((2, 3), iterations=2, **kw), 8 + 54 + 18),
  "cp": (lambda **kw: lowrank.cp(12, iterations=5, **kw), 12 * 16),
}


def _kernel(seed=2):
  return jax.random.normal(jax.random.key(seed), K_SHAPE)


def test_init_is_jittable_and_deterministic_for_a_given_key():
  params = {"fc": jax.random.normal(jax.random.key(1), (8, 6)), "k": _kernel()}
  c = jc.chain(lowrank.svd(2), lowrank.tucker2((2, 3), iterations=2))
  eager, _ = c.init(params)
  jitted = jax.jit(lambda p: c.init(p)[0])(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), eager, jitted)
  make = CONV["cp"][0]
  one, again, other = make(seed=3).init(params)[0], make(seed=3).init(params)[0], make(seed=4).init(params)[0]
  jax.tree.map(np.testing.assert_array_equal, one, again)
  assert not np.allclose(one["k"].first, other["k"].first)  # rank 12 > 6: columns drawn from the key


def test_exact_decompositions_reconstruct():
  ks = jax.random.split(jax.random.key(3), 2)
  sep = jnp.einsum("hcr,wro->hwco", jax.random.normal(ks[0], (3, 4, 2)), jax.random.normal(ks[1], (3, 2, 6)))
  assert _rel(export.rebuild_conv("spatial_svd", tuple(lowrank.spatial_factors(sep, 2))), sep) < 1e-5
  k = _kernel()
  assert _rel(export.rebuild_conv("tucker2", tuple(lowrank.tucker2_factors(k, (4, 6)))), k) < 1e-5


def test_vbmf_recovers_a_planted_rank():
  rng = np.random.default_rng(0)
  for r in (2, 5):
    y = rng.normal(size=(30, r)) @ rng.normal(size=(r, 80)) * 2 + 0.2 * rng.normal(size=(30, 80))
    assert lowrank.vbmf_rank(y) == r
    assert lowrank.vbmf_rank(y.T) == r
  assert lowrank.vbmf_rank(np.zeros((4, 5))) == 1


def _evbmf_rank_reference(y):
  """Nakajima et al. 2013 (JMLR 14), EVB: the noise variance minimizing the free energy
  sum_h psi(gamma_h^2 / (M sigma^2)) by brute force over a dense log grid on
  [1e-6, 1] * sum(gamma^2) / (LM), then the count of gamma_h above sigma sqrt(M x_bar)."""
  y = np.asarray(y, np.float64)
  y = y.T if y.shape[0] > y.shape[1] else y
  L, M = y.shape
  a = L / M
  g2 = np.linalg.svd(y, compute_uv=False) ** 2
  t = 2.5129 * np.sqrt(a)  # the zero of log(t + 1) + a log(t / a + 1) - t, as the authors' code approximates it
  x_bar = (1 + t) * (1 + a / t)
  s2 = np.geomspace(1e-6, 1.0, 4000)[:, None] * g2.sum() / (L * M)
  x = g2 / (M * s2)
  xs = np.maximum(x, x_bar)  # psi1 counts only above x_bar, where tau is real and positive
  tau = 0.5 * (xs - 1 - a + np.sqrt((xs - 1 - a) ** 2 - 4 * a))
  psi1 = np.log1p(tau) + a * np.log1p(tau / a) - tau
  free = np.sum(x - np.log(x) + np.where(x > x_bar, psi1, 0.0), axis=1)
  return int(np.sum(g2 > M * s2[np.argmin(free), 0] * x_bar))


def test_vbmf_rank_matches_the_papers_free_energy_minimized_by_brute_force():
  rng = np.random.default_rng(0)
  seen = set()
  for shape in [(6, 144), (16, 54), (54, 16)]:  # LeNet-5 conv2's channel unfoldings among them
    for r in (1, 2, 4):
      for snr in (0.2, 0.5, 1.0, 3.0):
        y = rng.normal(size=(shape[0], r)) @ rng.normal(size=(r, shape[1])) * snr + rng.normal(size=shape)
        expected = _evbmf_rank_reference(y)
        seen.add(expected)
        assert lowrank.vbmf_rank(y) == max(1, expected), (shape, r, snr)
  assert {0, 1, 2, 4} <= seen  # the cases span pruned-to-nothing through the planted ranks


def test_vbmf_ranks_for_tucker2():
  rng = np.random.default_rng(1)
  core = rng.normal(size=(3, 3, 3, 4))
  k = np.einsum("hwab,ca,ob->hwco", core, rng.normal(size=(12, 3)), rng.normal(size=(16, 4)))
  k = (k + 0.01 * rng.normal(size=k.shape)).astype(np.float32)
  _, state = lowrank.tucker2().init({"k": k})
  assert lowrank.report(state)[0].ranks == (3, 4)
  _, state = lowrank.tucker2(weakening=0.5).init({"k": k})  # Gusak et al. 2019: r + floor(w (n - r))
  assert lowrank.report(state)[0].ranks == (3 + 4, 4 + 6)
  with pytest.raises(ValueError, match="weakening"):
    lowrank.tucker2(weakening=1.5)
  with pytest.raises(ValueError, match="weakening"):
    lowrank.tucker2((2, 2), weakening=0.5)


def test_factors_train_through_make_step():
  c = lowrank.svd(2)
  opt = optax.adam(1e-2)
  state = jc.train.init(helpers.mlp_params(), opt, c)
  start = state.params["fc0"]["kernel"]
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  x, y = helpers.batch()
  loss = lambda s: float(helpers.mse_loss(c.apply(s.params, s.cstate), x, y))
  before = loss(state)
  for _ in range(10):
    state, _ = step(state, x, y)
  end = state.params["fc0"]["kernel"]
  assert isinstance(end, lowrank.SVDFactors) and not np.allclose(end.u, start.u)
  assert loss(state) < before


def test_from_scratch_factors_match_the_kernels_scale():
  params = helpers.mlp_params()
  trainable, state = lowrank.svd(2, init="random", seed=1).init(params)
  decomposed, _ = lowrank.svd(2).init(params)
  assert not np.allclose(trainable["fc0"]["kernel"].u, decomposed["fc0"]["kernel"].u)
  view = lowrank.svd(2, init="random", seed=1).apply(trainable, state)["fc0"]["kernel"]
  np.testing.assert_allclose(float(jnp.std(view)), float(jnp.std(params["fc0"]["kernel"])), rtol=1e-3)


@pytest.mark.parametrize("later, leaf_type", [("int8", export.QArray), ("prune", export.MaskedArray)])
def test_chain_packs_a_later_stages_leaf(later, leaf_type):
  stage = jc.quantization.fake_quant(8) if later == "int8" else jc.pruning.magnitude(0.5)
  c = jc.chain(lowrank.svd(2), stage)
  trainable, state = c.init({"w": _small()})
  assert isinstance(trainable["w"], lowrank.SVDFactors)
  packed = c.pack(trainable, state)["w"]
  assert isinstance(packed, leaf_type)
  if later == "prune":  # the mask is stored beside the factors
    assert isinstance(packed.inner, export.Factorized)


@pytest.mark.parametrize("kind", sorted(CONV))
def test_conv_factors_pack_and_save(kind, tmp_path):
  make, n = CONV[kind]
  c = make()
  trainable, state = c.init({"k": _kernel()})
  packed = c.pack(trainable, state)
  assert isinstance(packed["k"], export.ConvFactorized) and packed["k"].nbytes == 4 * n
  np.testing.assert_array_equal(packed["k"].materialize(), c.apply(trainable, state)["k"])
  export.save(tmp_path / "m.safetensors", packed)
  np.testing.assert_array_equal(export.load(tmp_path / "m.safetensors")["k"].materialize(), packed["k"].materialize())
  assert lowrank.report(state)[0].factor_params == n


def test_factors_quantized_by_a_nested_quantizer_pack_as_qarrays():
  # (training through it runs in the conformance suite, case svd_int8_factors)
  c = lowrank.svd(2, factors=jc.quantization.fake_quant(8, per_channel=True))
  trainable, state = c.init({"w": _small()})
  packed = c.pack(trainable, state)["w"]
  assert isinstance(packed, export.Factorized)
  assert isinstance(packed.u, export.QArray) and isinstance(packed.v, export.QArray)
  assert packed.u.codes.nbytes + packed.v.codes.nbytes == 2 * (8 + 6)  # int8 factors
  np.testing.assert_array_equal(packed.materialize(), c.apply(trainable, state)["w"])
  with pytest.raises(TypeError, match="factors must be a Compressor"):
    lowrank.svd(2, factors="int8")


def test_lora_trains_the_update_and_packs_the_merged_kernel():
  c = lowrank.lora(2, alpha=4.0)
  opt = optax.sgd(0.1)
  params = helpers.mlp_params()
  state = jc.train.init(params, opt, c)
  np.testing.assert_array_equal(c.apply(state.params, state.cstate)["fc0"]["kernel"], params["fc0"]["kernel"])
  state, _ = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))(state, *helpers.batch())
  node = state.params["fc0"]["kernel"]
  np.testing.assert_array_equal(node.base, params["fc0"]["kernel"])  # frozen
  assert np.abs(np.asarray(node.b)).max() > 0  # trained
  merged = c.pack(state.params, state.cstate)["fc0"]["kernel"]
  np.testing.assert_allclose(merged, node.base + 2.0 * node.a @ node.b, atol=1e-6)
  assert lowrank.report(state.cstate)[0].factor_params == 2 * (16 + 32)
