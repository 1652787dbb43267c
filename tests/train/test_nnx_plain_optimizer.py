"""A plain nnx.Optimizer on a jc.train.Compressed model is caught: it would train the Params
without the masks, the projection and compressor.update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress.train import _nnx

X = jax.random.normal(jax.random.key(1), (8, 4))
TX = optax.adamw(0.1, b1=0.9, weight_decay=0.5)


def _model():
  return jc.train.Compressed(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), jc.pruning.magnitude(0.5))


def _loss(m):
  return (m(X) ** 2).mean()


def test_plain_nnx_optimizer_is_refused_at_the_next_concrete_use():
  model = _model()
  keep = np.asarray(model.compressor.masks(model.cstate.get_value())["kernel"])
  opt = nnx.Optimizer(model, TX, wrt=nnx.Param)  # what a user might write

  @nnx.jit
  def step(model, opt):
    opt.update(model, nnx.grad(_loss)(model))

  step(model, opt)  # inside jit nothing can tell
  kernel = np.asarray(model.trainable()["kernel"])
  assert np.any(kernel[~keep] != 0)  # the defect it guards against: pruned weights regrew
  for use in (model.pack, model.model_params, model.eval, lambda: model(X)):
    with pytest.raises(ValueError, match=r"jc\.train\.Optimizer"):
      use()
  with pytest.raises(ValueError, match=r"plain nnx\.Optimizer"):
    jc.train.Optimizer(model, TX).update(model, nnx.grad(_loss)(model))
  model.set_trainable(model.trainable())  # written on purpose: accepted
  model.pack()


def test_jc_optimizer_passes_the_check_jitted_and_eager():
  model = _model()
  opt = jc.train.Optimizer(model, TX)
  jitted = nnx.jit(lambda m, o: o.update(m, nnx.grad(_loss)(m)))
  jitted(model, opt)
  opt.update(model, nnx.grad(_loss)(model))  # eager: checks before the step, rewrites the digest after
  jitted(model, opt)
  model.check_trained()
  kernel = np.asarray(model.trainable()["kernel"])
  keep = np.asarray(model.compressor.masks(model.cstate.get_value())["kernel"])
  assert not np.any(kernel[~keep]) and np.all(kernel[keep] != 0)


def test_digest_sees_one_ulp_and_matches_a_numpy_reference():
  w = np.asarray(jax.random.normal(jax.random.key(0), (3, 5)), np.float32)
  b = np.arange(4, dtype=np.float16)
  got = int(_nnx._digest([w, b]))

  def mix(h):  # MurmurHash3's fmix32, in uint64 arithmetic reduced mod 2^32
    h = np.asarray(h, np.uint64)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) % np.uint64(2**32)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) % np.uint64(2**32)
    return h ^ (h >> np.uint64(16))

  want = 0
  for i, x in enumerate([w, b]):
    bits = x.view(np.uint32 if x.itemsize == 4 else np.uint16).ravel().astype(np.uint64)
    where = (np.arange(bits.size, dtype=np.uint64) * np.uint64(0x9E3779B9) + np.uint64(i * 0x27D4EB2F)) % np.uint64(
      2**32
    )
    want += int(mix(bits ^ mix(where)).sum())
  assert got == want % 2**32
  w2 = w.copy()
  w2[1, 2] = np.nextafter(w2[1, 2], np.float32(np.inf))
  assert int(_nnx._digest([w2, b])) != got
  assert int(jax.jit(_nnx._digest)([w, b])) == got  # exact under jit too
  assert int(_nnx._digest([jnp.asarray(w)])) != int(_nnx._digest([jnp.asarray(w.T)]))  # positions count


def test_digest_of_a_large_leaf_reads_a_sample_and_sees_an_update_there():
  w = jnp.zeros((3000,))
  base = int(_nnx._digest([w]))
  assert int(_nnx._digest([w.at[1].set(1.0)])) == base  # between sampled positions (stride 3)
  assert int(_nnx._digest([w.at[3].set(1.0)])) != base
  assert int(_nnx._digest([w - 1e-3])) != base  # an optimizer step moves every weight
  assert int(_nnx._digest([jnp.zeros((0,))])) == 0
