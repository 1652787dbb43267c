"""BatchNorm folding (Jacob et al. 2018, arXiv:1712.05877, §3.2 and Appendix C)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcompress as jc

Q = jc.quantization


class ConvBN(nnx.Module):
  def __init__(self, rngs, bias=True):
    self.conv = nnx.Conv(2, 3, (3, 3), padding="SAME", use_bias=bias, rngs=rngs)
    self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)
    self.fc = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    return self.fc(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))


class Residual(nnx.Module):  # the conv output also feeds the sum: it must not be folded
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 3, (1, 1), rngs=rngs)
    self.bn = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    h = self.conv(x)
    return self.bn(h) + h


def _split(model):
  graphdef, state, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)

  def apply(params, x):
    s = jax.tree.map(lambda v: v, state)
    nnx.replace_by_pure_dict(s, params)
    return nnx.merge(graphdef, s, rest)(x)

  return apply, state.to_pure_dict()


def _randomize(params, key):
  """Non-trivial BatchNorm statistics and affine leaves (positive variances)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.uniform(k, x.shape, x.dtype, 0.3, 2.0) for k, x in zip(keys, leaves)])


def _bn_model(bias=True):
  apply, params = _split(ConvBN(nnx.Rngs(0), bias=bias))
  stats = _randomize({"bn": params["bn"]}, jax.random.PRNGKey(1))
  params = {**params, "bn": {**stats["bn"], "mean": stats["bn"]["mean"] - 1.0}}
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 5, 2))
  return apply, params, x


def test_find_batchnorms_nnx_linen_and_residual():
  apply, params, x = _bn_model()
  folds = Q.find_batchnorms(apply, params, x)
  assert folds == {
    "conv/kernel": Q.BatchNormFold(
      "conv/kernel", "bn/mean", "bn/var", pytest.approx(1e-5), "bn/scale", "bn/bias", "conv/bias"
    )
  }
  apply_nb, params_nb, _ = _bn_model(bias=False)
  assert Q.find_batchnorms(apply_nb, params_nb, x)["conv/kernel"].conv_bias is None

  class Linen(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(4, use_bias=False)(x)
      return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x))

  variables = Linen().init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
  found = Q.find_batchnorms(Linen().apply, variables, jnp.ones((2, 3)))
  assert found == {
    "params/Dense_0/kernel": Q.BatchNormFold(
      "params/Dense_0/kernel",
      "batch_stats/BatchNorm_0/mean",
      "batch_stats/BatchNorm_0/var",
      pytest.approx(1e-3),
      "params/BatchNorm_0/scale",
      "params/BatchNorm_0/bias",
      None,
    )
  }
  apply_r, params_r = _split(Residual(nnx.Rngs(0)))
  assert Q.find_batchnorms(apply_r, params_r, jnp.ones((1, 2, 2, 3))) == {}


def test_fold_equals_unfolded_eval_and_drop_serves_without_bn():
  apply, params, x = _bn_model()
  folds = Q.find_batchnorms(apply, params, x)
  want = apply(params, x)
  folded = Q.fold_batchnorm(params, folds)
  np.testing.assert_allclose(apply(folded, x), want, rtol=1e-5, atol=1e-5)
  v = Q.identity_variance(1e-5)
  assert np.float32(v) + np.float32(1e-5) == np.float32(1.0)

  class NoBN(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 3, (3, 3), padding="SAME", rngs=rngs)
      self.fc = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.fc(nnx.relu(self.conv(x)).mean((1, 2)))

  plain, _ = _split(NoBN(nnx.Rngs(0)))
  dropped = Q.fold_batchnorm(params, folds, drop=True)
  assert "bn" not in dropped
  # the identity BatchNorm is exactly the identity: the same net with and without it
  np.testing.assert_array_equal(plain(dropped, x), apply(folded, x))
  np.testing.assert_array_equal(plain(Q.strip_batchnorm(folded, folds), x), apply(folded, x))
  # numpy reference of the folded kernel and bias
  bn, eps = params["bn"], 1e-5
  m = np.asarray(bn["scale"]) / np.sqrt(np.asarray(bn["var"]) + eps)
  np.testing.assert_allclose(folded["conv"]["kernel"], np.asarray(params["conv"]["kernel"]) * m, rtol=1e-6)
  b = np.asarray(bn["bias"]) + (np.asarray(params["conv"]["bias"]) - np.asarray(bn["mean"])) * m
  np.testing.assert_allclose(folded["conv"]["bias"], b, rtol=1e-5, atol=1e-6)


def test_folding_errors():
  apply, params, x = _bn_model(bias=False)
  folds = Q.find_batchnorms(apply, params, x)
  with pytest.raises(ValueError, match="drop=True needs a conv bias"):
    Q.fold_batchnorm(params, folds, drop=True)
  bad = {"conv/kernel": folds["conv/kernel"]._replace(epsilon=0.0)}
  with pytest.raises(ValueError, match="epsilon must be finite and > 0"):
    Q.fold_batchnorm(params, bad)
  with pytest.raises(ValueError, match="does not have"):
    Q.fold_batchnorm(params, {"conv/kernel": folds["conv/kernel"]._replace(mean="bn/nope")})
  with pytest.raises(ValueError, match="freeze_step"):
    Q.batchnorm_fold(folds, freeze_step=-1)
  # with no conv bias, the BatchNorm's beta holds the folded bias and the model still agrees
  np.testing.assert_allclose(apply(Q.fold_batchnorm(params, folds), x), apply(params, x), rtol=1e-5, atol=1e-5)


def test_per_channel_ptq_commutes_with_folding():
  """Per output channel, Q(w·m) = Q(w)·m (codes identical for m > 0): folded int8 PTQ equals
  unfolded int8 PTQ with the BatchNorm after it, up to float rounding of the scales."""
  apply, params, x = _bn_model()
  folds = Q.find_batchnorms(apply, params, x)
  folded = Q.fold_batchnorm(params, folds)
  q_unfolded = Q.ptq(apply, params, weight_bits=8, per_channel=True)
  q_folded = Q.ptq(apply, folded, weight_bits=8, per_channel=True)
  np.testing.assert_array_equal(q_folded.packed["conv"]["kernel"].codes, q_unfolded.packed["conv"]["kernel"].codes)
  np.testing.assert_allclose(
    q_folded.apply(q_folded.packed, x), q_unfolded.apply(q_unfolded.packed, x), rtol=1e-5, atol=1e-5
  )


def _np_quant(w, bits):
  qmax = 2 ** (bits - 1) - 1
  s = np.abs(w).max() / qmax
  return np.clip(np.round(w / s), -qmax, qmax) * s


def test_qat_correction_matches_numpy_and_freezes():
  """Figure C.8's training graph on a Dense + BatchNorm, against a NumPy reference."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4)).astype(np.float32)
  b = rng.normal(size=4).astype(np.float32)
  gamma, beta = rng.uniform(0.5, 2, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
  mu, var, eps = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32), 1e-3
  params = {"fc": {"kernel": w, "bias": b}, "bn": {"scale": gamma, "bias": beta, "mean": mu, "var": var}}
  params = jax.tree.map(jnp.asarray, params)

  def apply(p, x):
    z = x @ p["fc"]["kernel"] + p["fc"]["bias"]
    return (z - p["bn"]["mean"]) * (jax.lax.rsqrt(p["bn"]["var"] + eps) * p["bn"]["scale"]) + p["bn"]["bias"]

  x = rng.normal(size=(16, 3)).astype(np.float32)
  folds = Q.find_batchnorms(apply, params, x)
  assert list(folds) == ["fc/kernel"]
  sigma = np.sqrt(var + eps)
  z = x @ w
  mu_b, sigma_b = z.mean(0), np.sqrt(z.var(0) + eps)
  for bits, quant in ((None, lambda a: a), (4, lambda a: _np_quant(a, 4))):
    fold = Q.batchnorm_fold(folds, freeze_step=1)
    c = fold if bits is None else jc.chain(fold, Q.fake_quant(bits))
    trainable, state = c.init(params)
    out = c.rewrite(apply, trainable, state)(c.apply(trainable, state), x)
    want = (x @ quant(w * gamma / sigma)) * (sigma / sigma_b) + beta - gamma * mu_b / sigma_b
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    if bits is None:  # before quantization it is training-mode BatchNorm exactly
      np.testing.assert_allclose(out, gamma * (x @ w + b - (z + b).mean(0)) / sigma_b + beta, rtol=2e-5, atol=2e-5)
    trainable, state = c.update(trainable, state)  # step 1: frozen, the inference graph
    out = c.rewrite(apply, trainable, state)(c.apply(trainable, state), x)
    want = x @ quant(w * gamma / sigma) + beta + gamma * (b - mu) / sigma
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
  # With apply_fn and batches, the update that reaches the freeze re-estimates the statistics
  # as the population moments of the float layer's outputs (here z + b over both halves).
  c = Q.batchnorm_fold(folds, freeze_step=1, apply_fn=apply, batches=[x[:6], x[6:]])
  trainable, state = c.init(params)
  trainable, state = jax.jit(c.update)(trainable, state)
  np.testing.assert_allclose(trainable["bn"]["mean"], (z + b).mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(trainable["bn"]["var"], z.var(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(trainable["fc"]["kernel"], w)
  with pytest.raises(ValueError, match="go together"):
    Q.batchnorm_fold(folds, freeze_step=1, apply_fn=apply)


def test_qat_correction_equals_nnx_training_mode_batchnorm():
  apply, params, x = _bn_model()
  folds = Q.find_batchnorms(apply, params, x)
  c = Q.batchnorm_fold(folds)
  trainable, state = c.init(params)
  got = c.rewrite(apply, trainable, state)(c.apply(trainable, state), x)
  model = ConvBN(nnx.Rngs(0))
  graphdef, state_, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  nnx.replace_by_pure_dict(state_, params)
  model = nnx.merge(graphdef, state_, rest)
  model.bn.use_running_average = False
  np.testing.assert_allclose(got, model(x), rtol=1e-4, atol=1e-5)


def test_batchnorm_statistics_are_population_moments():
  apply, params, x = _bn_model()
  folds = Q.find_batchnorms(apply, params, x)
  batches = [x[:2], x[2:]]
  new = Q.batchnorm_statistics(apply, params, folds, batches)
  _, cap = jc.graph.capture(apply, where="conv/kernel")(params, x)
  z = np.asarray(cap["conv/kernel"]["output"], np.float64).reshape(-1, 3) + np.asarray(params["conv"]["bias"])
  np.testing.assert_allclose(new["bn"]["mean"], z.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["bn"]["var"], z.var(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new["bn"]["scale"], params["bn"]["scale"])


def _dense_bn_tree(dtype=jnp.float32, **bn):
  leaves = {"mean": np.zeros(4), "var": np.ones(4), "scale": np.ones(4), "bias": np.zeros(4), **bn}
  return {
    "d": {"kernel": jnp.ones((3, 4), dtype), "bias": jnp.zeros(4, dtype)},
    "bn": {k: jnp.asarray(v, dtype) for k, v in leaves.items()},
  }


_DENSE_FOLD = {"d/kernel": Q.BatchNormFold("d/kernel", "bn/mean", "bn/var", 1e-5, "bn/scale", "bn/bias", "d/bias")}


@pytest.mark.parametrize(
  "tree, match",
  [
    (_dense_bn_tree(var=-np.ones(4)), r"'bn/var'.*-1"),
    (_dense_bn_tree(var=np.full(4, np.nan)), r"'bn/var'.*not finite"),
    (_dense_bn_tree(scale=np.full(4, np.inf)), r"'bn/scale'.*not finite"),
    # finite statistics whose fold does not fit the dtype: γ/σ = 3e38 / 0.01, 6e4 / 0.03 in float16
    (_dense_bn_tree(scale=np.full(4, 3e38), var=np.full(4, 1e-4)), r"overflows float32 at 'd/kernel'"),
    (_dense_bn_tree(jnp.float16, scale=np.full(4, 6e4), var=np.full(4, 1e-3)), r"overflows float16 at 'd/kernel'"),
    (_dense_bn_tree(mean=np.full(4, -3e38), bias=np.full(4, 3e38)), r"overflows float32 at 'd/bias'"),
  ],
)
def test_fold_refuses_bad_statistics_and_overflow(tree, match):
  with pytest.raises(ValueError, match=match):
    Q.fold_batchnorm(tree, _DENSE_FOLD)


def test_fold_refuses_integer_kernel_and_non_number_epsilon():
  tree = _dense_bn_tree()
  tree["d"]["kernel"] = jnp.ones((3, 4), jnp.int32)
  with pytest.raises(TypeError, match=r"'d/kernel'.*int32"):
    Q.fold_batchnorm(tree, _DENSE_FOLD)
  bad = {"d/kernel": _DENSE_FOLD["d/kernel"]._replace(epsilon="1e-5")}
  with pytest.raises(ValueError, match="epsilon must be finite and > 0, got '1e-5'"):
    Q.fold_batchnorm(_dense_bn_tree(), bad)
