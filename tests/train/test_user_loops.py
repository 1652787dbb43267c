"""The researcher's own loop: nnx.Optimizer on a Compressed NNX model, Flax TrainState with
masked_optimizer, BatchNorm statistics and dropout through the step, one QAT rewrite for
training and evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import jaxcompress as jc


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


X = jax.random.normal(jax.random.key(1), (16, 8))
Y = jnp.arange(16) % 3
TX = optax.adamw(3e-2, b1=0.9, weight_decay=0.5)  # momentum and a strong decay: both would revive a weight


@nnx.jit
def nnx_step(model, opt, x, y):
  loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
  opt.update(model, grads)
  return loss


def reference(compressor, steps=3):
  """The same training through make_step on the pure dict of the model's params."""
  graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
  state = jc.train.init(nnx.to_pure_dict(params), TX, compressor)
  step = jax.jit(jc.train.make_step(lambda p, x, y: xent(nnx.merge(graphdef, p)(x), y), TX, compressor))
  for _ in range(steps):
    state, _ = step(state, X, Y)
  return state


@pytest.mark.parametrize(
  "make",
  [
    lambda: jc.pruning.magnitude(0.6),
    lambda: jc.quantization.kmeans(4),  # restructures: a codebook in the trainable tree
    lambda: jc.quantization.ttq(),
  ],
  ids=["magnitude", "kmeans", "ttq"],
)
def test_nnx_optimizer_is_make_step(make):
  c = make()
  model = jc.train.Compressed(MLP(nnx.Rngs(0)), c)
  opt = jc.train.Optimizer(model, TX)
  assert isinstance(opt, nnx.Optimizer)
  for _ in range(3):
    nnx_step(model, opt, X, Y)
  ref = reference(c)
  got, want = model.trainable(), ref.params
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  view = model.model_params()
  masks = c.masks(model.cstate.get_value())
  if masks is not None:  # no weight revived by momentum or weight decay, moments zero there
    keep = np.asarray(masks["l1"]["kernel"])
    assert 0 < keep.mean() < 1 and not np.any(np.asarray(view["l1"]["kernel"])[~keep])
    mu = nnx.as_pure(opt.opt_state)[0].mu["l1"]["kernel"]  # adamw = chain(scale_by_adam, ...)
    if mu.shape == keep.shape:  # the weight itself is trained (not a codebook)
      assert not np.any(np.asarray(mu)[~keep]) and np.any(np.asarray(mu)[keep] != 0)
  assert int(opt.step.get_value()) == 3


class BNNet(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 6, rngs=rngs)
    self.bn = nnx.BatchNorm(6, momentum=0.5, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.l2 = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


def test_nnx_channel_prune_narrows_batch_stats_and_steps_rngs_and_mode():
  net = BNNet(nnx.Rngs(0, dropout=1))
  net.eval()
  c = jc.pruning.channel_prune(0.5, apply_fn=jc.train.Compressed.apply_fn(net), inputs=[X])
  model = jc.train.Compressed(net, c)
  model.train()
  mean = [v for v in model.leaves if isinstance(v, nnx.BatchStat)]
  assert sorted(v.get_value().shape for v in mean) == [(3,), (3,)]  # the statistics follow the prune
  opt = jc.train.Optimizer(model, TX)
  before = model.trainable()
  kept = np.asarray(model.cstate.get_value().kept["bn"]["mean"][0])
  nnx_step(model, opt, X, Y)
  # BatchNorm's running mean: momentum * old + (1 - momentum) * batch mean, at the kept channels
  h = np.asarray(X @ c.apply(before, model.cstate.get_value())["l1"]["kernel"]) + np.asarray(
    c.apply(before, model.cstate.get_value())["l1"]["bias"]
  )
  want = 0.5 * np.asarray(before["bn"]["mean"]) + 0.5 * h.mean(0)[kept]
  np.testing.assert_allclose(np.asarray(model.trainable()["bn"]["mean"]), want, rtol=1e-5, atol=1e-6)
  forward = nnx.jit(lambda m, x: m(x))
  a, b = forward(model, X), forward(model, X)  # dropout draws new masks: its RNG count advances
  assert not np.allclose(np.asarray(a), np.asarray(b))
  model.eval()
  narrow = jc.pruning.narrow_nnx(net, model.cstate.get_value(), model.trainable())
  narrow.eval()
  np.testing.assert_allclose(np.asarray(forward(model, X)), np.asarray(forward(narrow, X)), rtol=1e-5, atol=1e-5)


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(3)(x.mean(axis=(1, 2)))


CX = jax.random.normal(jax.random.key(2), (8, 6, 6, 1))
CY = jnp.arange(8) % 3


def linen_loss(v, x, y, key):
  logits, mutated = CNN().apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
  return xent(logits, y), mutated


@pytest.fixture(scope="module")
def cnn_variables():
  return CNN().init(jax.random.key(0), CX, train=False)


def test_linen_train_state_threads_batch_stats_through_a_channel_prune(cnn_variables):
  c = jc.pruning.channel_prune(0.5, apply_fn=lambda v, x: CNN().apply(v, x, train=False), inputs=[CX])
  params, cstate = c.init(cnn_variables)
  state = train_state.TrainState.create(
    apply_fn=CNN().apply, params=params, tx=jc.train.masked_optimizer(TX, c, cstate)
  )
  step = jax.jit(jc.train.train_state_step(linen_loss, c))
  key = jax.random.key(3)
  # what Flax itself computes for the statistics at this step, at the model's shapes
  _, mutated = jax.jit(linen_loss)(c.apply(state.params, cstate), CX, CY, key)
  new, _ = step(state, CX, CY, key)
  got = c.apply(new.params, jc.train.compressor_state(new.opt_state))["batch_stats"]
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(mutated["batch_stats"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # held: weight decay did not touch them
  assert new.params["batch_stats"]["BatchNorm_0"]["mean"].shape == (2,)  # narrowed with the channels
  # the params take make_step's step (the statistics do not enter a training-mode loss)
  ref = jc.train.init(cnn_variables, TX, c)
  ref, _ = jax.jit(jc.train.make_step(linen_loss, TX, c, has_aux=True))(ref, CX, CY, key)
  for a, b in zip(jax.tree.leaves(new.params["params"]), jax.tree.leaves(ref.params["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  kernel = np.asarray(c.apply(new.params, jc.train.compressor_state(new.opt_state))["params"]["Conv_0"]["kernel"])
  assert np.mean(np.all(kernel == 0, axis=(0, 1, 2))) == 0.5  # two of four filters removed, still zero


def test_qat_rewrite_honours_train_flag(cnn_variables):
  c = jc.quantization.qat(4, 8)
  params, cstate = c.init(cnn_variables)
  view = c.apply(params, cstate)
  key = jax.random.key(4)

  def run(v, x, train):
    return CNN().apply(v, x, train=train, rngs={"dropout": key}, mutable=["batch_stats"] if train else False)

  one = jax.jit(c.rewrite(run, params, cstate), static_argnums=2)
  for train in (False, True):
    fixed = jax.jit(c.rewrite(lambda v, x, t=train: run(v, x, t), params, cstate))
    np.testing.assert_array_equal(
      np.asarray(jax.tree.leaves(one(view, CX, train))[0]), np.asarray(jax.tree.leaves(fixed(view, CX))[0])
    )
  assert not np.allclose(np.asarray(one(view, CX, True)[0]), np.asarray(one(view, CX, False)))
  # the rewrite changes the output (activations quantized); keywords: see the next test
  assert not np.allclose(np.asarray(one(view, CX, False)), np.asarray(jax.jit(run, static_argnums=2)(view, CX, False)))


def test_rewrite_passes_python_flags_and_keywords_untraced():
  def f(p, x, train, *, scale=1.0):
    return (x @ p["w"]) * (2.0 if train else 1.0) * scale  # Python control flow on the flag

  double = jc.graph.rewrite(f, lambda site, a, w: 10.0 * site.compute(a, w))
  params, x = {"w": jnp.array([[1.0], [2.0]])}, jnp.array([[1.0, 1.0]])
  assert double(params, x, True).tolist() == [[60.0]]
  assert double(params, x, False, scale=3.0).tolist() == [[90.0]]


def test_bad_inputs():
  c = jc.pruning.magnitude(0.5)
  params, cstate = c.init({"w": jnp.ones((4, 4))})
  tx = jc.train.masked_optimizer(optax.sgd(0.1), c, cstate)
  with pytest.raises(ValueError, match="params="):
    tx.update({"w": jnp.ones((4, 4))}, tx.init(params))
  with pytest.raises(ValueError, match="masked_optimizer"):
    jc.train.compressor_state(optax.sgd(0.1).init(params))
  with pytest.raises(ValueError, match="not a leaf"):
    jc.train.update_mutable(c, params, cstate, {"v": jnp.ones(4)})
  with pytest.raises(ValueError, match="shape"):
    jc.train.update_mutable(c, params, cstate, {"w": jnp.ones(4)})
  with pytest.raises(TypeError, match="Compressed"):
    jc.train.Optimizer(MLP(nnx.Rngs(0)), optax.sgd(0.1))
