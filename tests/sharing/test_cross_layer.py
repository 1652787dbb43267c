"""Cross-layer sharing: one weight for several layers, gradients summed, stored once."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import jaxcompress as jc

SIZES = (8, 8, 8, 8, 4)


def _params():
  keys = jax.random.split(jax.random.key(0), len(SIZES) - 1)
  return {
    f"fc{i}": {"kernel": jax.random.normal(keys[i], (m, n)) / 3, "bias": jnp.zeros(n)}
    for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:]))
  }


def _apply(params, x):
  for i in range(len(params)):
    x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
    x = jax.nn.relu(x) if i < len(params) - 1 else x
  return x


def _loss(params, x, y):
  return jnp.mean((_apply(params, x) - y) ** 2)


def test_same_shaped_layers_share_one_weight_and_sum_their_gradients():
  params = _params()
  c = jc.sharing.cross_layer(init="mean")
  trainable, state = c.init(params)
  assert isinstance(trainable["fc0"]["kernel"], jc.sharing.Shared)
  assert isinstance(trainable["fc1"]["kernel"], jc.sharing.Tied)
  assert not isinstance(trainable["fc3"]["kernel"], jc.sharing.Shared | jc.sharing.Tied)  # 8x4: alone
  view = c.apply(trainable, state)
  mean = sum(params[f"fc{i}"]["kernel"] for i in range(3)) / 3
  for i in range(3):
    np.testing.assert_allclose(view[f"fc{i}"]["kernel"], mean, rtol=1e-6)
  x = jax.random.normal(jax.random.key(1), (4, 8))
  y = jnp.zeros((4, 4))
  g = jax.jit(jax.grad(lambda p: _loss(c.apply(p, state), x, y)))(trainable)["fc0"]["kernel"].weight
  g_view = jax.jit(jax.grad(_loss))(view, x, y)
  np.testing.assert_allclose(g, sum(g_view[f"fc{i}"]["kernel"] for i in range(3)), rtol=1e-5, atol=1e-7)


def test_trains_with_make_step_and_packs_the_weight_once():
  c = jc.sharing.cross_layer(groups=["fc[01]/kernel"])
  opt = optax.adam(1e-2)
  state = jc.train.init(_params(), opt, c)
  step = jax.jit(jc.train.make_step(_loss, opt, c))
  x = jax.random.normal(jax.random.key(1), (4, 8))
  state, _ = step(state, x, jnp.ones((4, 4)))
  view = c.apply(state.params, state.cstate)
  np.testing.assert_array_equal(view["fc0"]["kernel"], view["fc1"]["kernel"])
  assert not np.array_equal(view["fc1"]["kernel"], view["fc2"]["kernel"])
  packed = c.pack(state.params, state.cstate)
  assert packed["fc0"]["kernel"].nbytes == 8 * 8 * 4 and packed["fc1"]["kernel"].nbytes == 0
  np.testing.assert_array_equal(jc.export.materialize_tree(packed)["fc1"]["kernel"], view["fc1"]["kernel"])
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.safetensors")
    size = jc.export.save(path, packed, version=2)  # format 2 keeps one tensor per array, to inspect
    stored = jc.accounting.report(packed).bytes  # the shared weight counted once
    assert stored < sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(view))
    assert size < stored + 3000  # the rest is the JSON header (format 2: dtypes, shapes, digests)
    kernels = [a for a in safetensors.numpy.load_file(path).values() if a.shape == (8, 8)]
    assert len(kernels) == 2  # fc0 = fc1 written once, and fc2
    loaded = jc.export.materialize_tree(jc.export.load(path))
    np.testing.assert_array_equal(loaded["fc1"]["kernel"], view["fc1"]["kernel"])


def test_bad_groups_raise():
  with pytest.raises(ValueError, match="selects 1 leaves"):
    jc.sharing.cross_layer(groups=["fc0/kernel"]).init(_params())
  with pytest.raises(ValueError, match="mixes shapes"):
    jc.sharing.cross_layer(groups=["fc[23]/kernel"]).init(_params())
  with pytest.raises(ValueError, match="no two selected leaves"):
    jc.sharing.cross_layer(where="fc3/kernel").init(_params())
  with pytest.raises(ValueError, match="init"):
    jc.sharing.cross_layer(init="last")


def test_kmeans_is_the_quantization_familys():
  assert jc.sharing.kmeans is jc.quantization.kmeans
