"""chain as a pipeline: order, ownership of restructured leaves, the seams it combines."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress.quantization._lsq import LSQParams
from tests import helpers

PARAMS = helpers.mlp_params()


def test_stages_apply_left_to_right():
  # prune, then quantize: the 2-bit grid [-4, 0, 4] is set by the survivors (max |w| = 4)
  w = jnp.array([[0.1, -3.0], [0.3, 4.0]])
  c = jc.chain(jc.pruning.magnitude(0.5), jc.quantization.fake_quant(2))
  t, s = c.init({"w": w})
  np.testing.assert_array_equal(c.apply(t, s)["w"], [[0.0, -4.0], [0.0, 4.0]])
  # quantize, then prune what the quantizer made: 8-bit codes ranked by magnitude
  c = jc.chain(jc.quantization.fake_quant(8), jc.pruning.magnitude(0.5))
  t, s = c.init({"w": w})
  q = jc.quantization.fake_quant(8)
  expected = np.where(np.abs(w) > 1, np.asarray(q.apply(*q.init({"w": w}))["w"]), 0.0)
  np.testing.assert_array_equal(c.apply(t, s)["w"], expected)


def test_kmeans_after_pruning_clusters_the_survivors_and_never_revives():
  c = jc.chain(jc.pruning.magnitude(0.8), jc.quantization.kmeans(16))
  opt = optax.adam(1e-2)
  state = jc.train.init(PARAMS, opt, c)
  mask = np.asarray(c.masks(state.cstate)["fc0"]["kernel"])
  kernel = np.asarray(PARAMS["fc0"]["kernel"])
  codebook = np.asarray(state.params["fc0"]["kernel"])
  # every centroid is inside the survivors' range: none was pulled toward the pruned zeros
  survivors = kernel[mask]
  assert codebook.shape == (16,)
  assert np.all(codebook >= survivors.min()) and np.all(codebook <= survivors.max())
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  for i in range(20):
    state, _ = step(state, *helpers.batch(seed=i))
  view = np.asarray(c.apply(state.params, state.cstate)["fc0"]["kernel"])
  assert not np.any(view[~mask]) and np.all(view[mask] != 0)
  assert not np.array_equal(np.asarray(state.params["fc0"]["kernel"]), codebook)  # the codebook trained
  packed = c.pack(state.params, state.cstate)["fc0"]["kernel"]
  assert isinstance(packed, jc.export.CodebookArray) and isinstance(packed.indices, jc.export.SparseArray)
  np.testing.assert_array_equal(packed.materialize(), view)


def test_kmeans_after_pruning_is_kmeans_of_the_survivors():
  from jaxcompress.quantization._kmeans import init_centroids, kmeans_1d

  c = jc.chain(jc.pruning.magnitude(0.5), jc.quantization.kmeans(4, iterations=10))
  t, s = c.init(PARAMS)
  mask = np.asarray(c.masks(s)["fc0"]["kernel"])
  survivors = jnp.asarray(np.asarray(PARAMS["fc0"]["kernel"])[mask])
  expected, _ = kmeans_1d(survivors, init_centroids(survivors, 4), 10)
  np.testing.assert_allclose(t["fc0"]["kernel"], expected, rtol=1e-6)
  # clustering the pruned view with its zeros pulls a centroid toward 0 and fits the survivors worse
  km = jc.quantization.kmeans(4, iterations=10)
  zeros_in = km.apply(*km.init({"w": jnp.where(mask, PARAMS["fc0"]["kernel"], 0.0)}))["w"]
  err = lambda v: float(np.mean((np.asarray(v)[mask] - np.asarray(survivors)) ** 2))
  assert err(c.apply(t, s)["fc0"]["kernel"]) < err(zeros_in)


def test_prune_binary_int4_kmeans_bytes_against_each_stage():
  """The closing note's table: each chain against its stages packed alone (this tree)."""
  for q in (jc.quantization.binary_connect(), jc.quantization.fake_quant(4), jc.quantization.kmeans(16)):
    prune = jc.pruning.magnitude(0.9)
    both = jc.chain(prune, q)
    chained = jc.accounting.report(both.pack(*both.init(PARAMS))).bytes
    pruned = jc.accounting.report(prune.pack(*prune.init(PARAMS))).bytes
    quantized = jc.accounting.report(q.pack(*q.init(PARAMS))).bytes
    assert chained < min(quantized, pruned), (chained, quantized, pruned)


def test_an_order_that_cannot_work_names_the_one_that_does():
  with pytest.raises(ValueError, match=r"stage 0 \(fake_quant\) changes 'fc0/kernel', which stage 1 \(kmeans\)"):
    jc.chain(jc.quantization.fake_quant(4), jc.quantization.kmeans(4)).init(PARAMS)
  with pytest.raises(ValueError, match=r"put stage 0 .* after stage 1"):
    jc.chain(jc.quantization.binary_connect(), jc.quantization.ttq()).init(PARAMS)
  with pytest.raises(ValueError, match=r"both restructure 'fc0/kernel'"):
    jc.chain(jc.quantization.lsq(4), jc.quantization.kmeans(4)).init(PARAMS)
  with pytest.raises(TypeError, match="chain argument 1 is not a Compressor"):
    jc.chain(jc.identity(), "prune")


def test_where_keeps_the_models_paths_after_a_restructuring_stage():
  c = jc.chain(jc.quantization.lsq(4), jc.pruning.magnitude(0.5, where="fc1/kernel"))
  t, s = c.init(PARAMS)
  assert isinstance(t["fc1"]["kernel"], LSQParams)
  masks = c.masks(s)
  assert masks["fc0"]["kernel"] is None and masks["fc1"]["kernel"].shape == (32, 8)
  view = c.apply(t, s)["fc1"]["kernel"]
  assert float(jnp.mean(view == 0)) >= 0.5


def test_chain_state_is_a_structure():
  c = jc.chain(jc.pruning.magnitude(0.5), jc.quantization.fake_quant(8))
  _, s = c.init(PARAMS)
  assert isinstance(s, jc.ChainState) and len(s.stages) == 2
  with pytest.raises(AttributeError):
    _ = s.count
  with pytest.raises(ValueError, match="expects the ChainState"):
    c.apply(PARAMS, (s.stages[0], s.stages[1]))


def test_penalties_add_up_and_rewrites_compose():
  slim = jc.pruning.slimming(0.5, where=".*bias")
  pact = jc.quantization.pact(4, init_alpha=2.0, alpha_decay=0.25)
  c = jc.chain(slim, pact)
  t, s = c.init(PARAMS)
  l1 = sum(float(jnp.abs(PARAMS[k]["bias"]).sum()) for k in PARAMS)
  np.testing.assert_allclose(c.penalty(t, s), 0.5 * l1 + 0.25 * 2 * 4.0, rtol=1e-6)
  x = helpers.batch()[0]
  two = jc.chain(jc.quantization.binary_activations(where="fc1/kernel"), jc.quantization.quantize_activations(8))
  t, s = two.init(PARAMS)
  out = two.rewrite(helpers.mlp_apply, t, s)(PARAMS, x)
  hidden = jax.nn.relu(x @ PARAMS["fc0"]["kernel"] + PARAMS["fc0"]["bias"])
  expected = jnp.where(hidden >= 0, 1.0, -1.0) @ PARAMS["fc1"]["kernel"] + PARAMS["fc1"]["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def _renamed(tree, old, new):
  return {(new if k == old else k): v for k, v in tree.items()}


def test_optimizer_state_maps_to_params_exactly_not_by_suffix():
  """Two same-shaped leaves whose paths share a suffix: pruning one must not touch the
  other's Adam moments, so renaming a leaf changes nothing."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {
    "mlp": {"kernel": jax.random.normal(k1, (16, 16))},
    "zblock": {"mlp": {"kernel": jax.random.normal(k2, (16, 16))}},
  }

  def loss(p, x):
    return jnp.mean((x @ p["mlp"]["kernel"] @ p["zblock"]["mlp"]["kernel"] - x) ** 2)

  def train(params, rename):
    tree = _renamed(params, "mlp", "a") if rename else params
    lossf = (lambda p, x: loss(_renamed(p, "a", "mlp"), x)) if rename else loss
    c = jc.pruning.magnitude(0.5, where="a/kernel" if rename else "mlp/kernel")
    opt = optax.adam(1e-2)
    state = jc.train.init(tree, opt, c)
    step = jax.jit(jc.train.make_step(lossf, opt, c))
    for i in range(20):
      state, _ = step(state, jax.random.normal(jax.random.key(i), (8, 16)))
    return _renamed(state.params, "a", "mlp") if rename else state.params

  jax.tree.map(np.testing.assert_array_equal, train(params, False), train(params, True))


def test_a_pruning_schedule_before_a_restructuring_stage_keeps_pruning():
  """magnitude on a schedule, then k-means on one leaf: the clustered leaf reaches the
  target too, and a global ranking spends its budget on real values, not placeholders."""
  k = jax.random.split(jax.random.key(4), 2)
  params = {"a": {"w": jax.random.normal(k[0], (32, 32))}, "c": {"w": jax.random.normal(k[1], (32, 32))}}
  for scope in ("layer", "global"):
    sched = jc.pruning.polynomial_sparsity(0.9, begin_step=0, end_step=10)
    c = jc.chain(jc.pruning.magnitude(sched, scope=scope), jc.quantization.kmeans(4, where="a/w"))
    t, s = c.init(params)
    for _ in range(12):
      t, s = c.update(t, s)
    masks = c.masks(s)
    for leaf in ("a", "c"):
      assert abs(1 - float(np.mean(np.asarray(masks[leaf]["w"]))) - 0.9) < 0.02, (scope, leaf)
    view = c.apply(t, s)
    assert not np.any(np.asarray(view["a"]["w"])[~np.asarray(masks["a"]["w"])])


def test_python_scalar_leaves_and_wrong_params_are_handled():
  params = {"w": jnp.ones((4, 4)), "t": 1.0}
  c = jc.chain(jc.pruning.magnitude(0.5), jc.identity())
  t, s = c.init(params)
  assert c.apply(t, s)["t"] == 1.0
  with pytest.raises(ValueError, match=r"leaf 'w' has shape \(2, 2\), init saw \(4, 4\)"):
    c.apply({"w": jnp.ones((2, 2)), "t": 1.0}, s)
  with pytest.raises(ValueError, match="structure the chain was initialized with"):
    c.apply({"w": jnp.ones((4, 4))}, s)
  lsq = jc.chain(
    jc.quantization.lsq(4),
    jc.quantization.lsq_activations(helpers.mlp_apply, 4, inputs=helpers.batch()[:1], signed=True),
  )
  t, s = lsq.init(PARAMS)
  with pytest.raises(ValueError, match="pass the tree init returned"):
    lsq.apply(t.params, s)


def test_channel_pruning_then_quantization_stores_the_narrow_codes():
  """chain(channel_prune, fake_quant): the packed kernel is the narrow block's codes inside
  the SlicedArray, no larger than quantizing the narrow model on its own."""
  apply_fn, x = helpers.mlp_apply, helpers.batch()[0]
  prune = jc.pruning.channel_prune(0.5, apply_fn=apply_fn, inputs=[x])
  c = jc.chain(prune, jc.quantization.fake_quant(8, per_channel=True))
  t, s = c.init(PARAMS)
  packed = c.pack(t, s)
  kernel = packed["fc0"]["kernel"]
  assert isinstance(kernel, jc.export.SlicedArray) and isinstance(kernel.values, jc.export.QArray)
  jax.tree.map(np.testing.assert_array_equal, jc.export.materialize_tree(packed), c.apply(t, s))
  narrow = jc.quantization.fake_quant(8, per_channel=True)
  alone = jc.accounting.report(narrow.pack(*narrow.init(t))).bytes
  flags = sum(
    int(np.prod(leaf.kept.data.shape))
    for leaf in jax.tree.leaves(packed, is_leaf=jc.export.is_compressed)
    if isinstance(leaf, jc.export.SlicedArray)
  )
  assert jc.accounting.report(packed).bytes <= alone + flags


def test_prune_w4_a8_is_one_compressor_on_a_linen_model():
  """The README's chain on a Flax Linen model: trained by make_step, pruned weights stay
  zero, the packed weights are what the model saw."""
  import flax.linen as nn

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(8)(jax.nn.relu(nn.Dense(32)(x)))

  x, y = helpers.batch(n=32)
  model = MLP()
  variables = model.init(jax.random.key(0), x)
  apply_fn = model.apply
  c = jc.chain(
    jc.pruning.magnitude(0.8),
    jc.quantization.fake_quant(4, per_channel=True),
    jc.quantization.quantize_activations(8, apply_fn=apply_fn, batches=[x]),
  )
  opt = optax.adam(1e-2)
  loss = lambda v, x, y: jnp.mean((apply_fn(v, x) - y) ** 2)
  state = jc.train.init(variables, opt, c)
  step = jax.jit(jc.train.make_step(loss, opt, c))
  first = None
  for _ in range(5):
    state, value = step(state, x, y)
    first = value if first is None else first
  assert float(value) < float(first)
  view = c.apply(state.params, state.cstate)
  kernel = np.asarray(view["params"]["Dense_0"]["kernel"])
  mask = np.asarray(c.masks(state.cstate)["params"]["Dense_0"]["kernel"])
  assert not np.any(kernel[~mask]) and np.mean(~mask) >= 0.8 - 1e-6
  packed = c.pack(state.params, state.cstate)
  assert isinstance(packed["params"]["Dense_0"]["kernel"], jc.export.QArray)
  jax.tree.map(np.testing.assert_array_equal, jc.export.materialize_tree(packed), view)


def test_collaborative_chains_keep_zeros_and_clusters_through_fine_tuning():
  # TF-MOT's collaborative optimization as one chain, prune -> cluster -> QAT (sparsity-preserving
  # clustering and cluster-preserving QAT at once): zeros and clusters counted after training
  from jaxcompress import export

  params = helpers.mlp_params(sizes=(16, 64, 8))
  x, y = helpers.batch(sizes=(16, 64, 8))
  c = jc.chain(jc.pruning.magnitude(0.8), jc.quantization.kmeans(8), jc.quantization.fake_quant(8))
  opt = optax.adam(1e-2)
  state = jc.train.init(params, opt, c)
  step = jax.jit(jc.train.make_step(helpers.mse_loss, opt, c))
  before = c.apply(state.params, state.cstate)
  for _ in range(2):
    state, _ = step(state, x, y)
  after = c.apply(state.params, state.cstate)
  packed = c.pack(state.params, state.cstate)
  for layer in before:
    w0, w1 = np.asarray(before[layer]["kernel"]), np.asarray(after[layer]["kernel"])
    assert not np.array_equal(w0, w1)  # it trained
    zeros = w0 == 0
    assert zeros.sum() == round(0.8 * w0.size)
    np.testing.assert_array_equal(w1 == 0, zeros)  # no zero revived, none added
    groups = {}  # weights that shared a centroid before still share one value: at most 8 values
    for a, b in zip(w0[~zeros], w1[~zeros]):
      groups.setdefault(float(a), set()).add(float(b))
    assert len(groups) <= 8 and all(len(g) == 1 for g in groups.values())
    np.testing.assert_array_equal(np.asarray(export.materialize(packed[layer]["kernel"])), w1)
  # cluster-preserving QAT packs a codebook (3-bit indices) where that is smaller than 8-bit codes
  kq = jc.chain(jc.quantization.kmeans(8), jc.quantization.fake_quant(8))
  assert isinstance(kq.pack(*kq.init(params))["fc1"]["kernel"], export.CodebookArray)


def test_a_stage_before_an_owner_sees_the_owners_straight_through_gradient():
  """A stage before LSQ (which owns the kernel as ``(weight, step)``) gets the gradient of
  LSQ's ``weight`` as that leaf's gradient (RigL regrows by it), and zeros before k-means
  (a codebook has no array of the leaf's shape)."""
  seen = {}

  def probe():
    def update(params, state, *, grads=None, **_):
      seen["g"] = grads
      return params, state

    return jc.Compressor(lambda p, **_: (p, ()), lambda p, s: p, update, lambda p, s: p)

  w = jax.random.normal(jax.random.key(0), (6, 4))
  params = {"l": {"kernel": w}}
  for owner, expect_grad in ((jc.quantization.lsq(4), True), (jc.quantization.kmeans(4), False)):
    c = jc.chain(probe(), owner)
    t, s = c.init(params)
    grads = jax.tree.map(lambda a: jnp.full_like(a, 3.0) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    c.update(t, s, grads=grads)
    g = np.asarray(seen["g"]["l"]["kernel"])
    assert g.shape == w.shape
    np.testing.assert_array_equal(g, np.full(w.shape, 3.0 if expect_grad else 0.0))
