"""Quantizer hyperparameters that vary over training accept schedules ``step -> value``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc

q = jc.quantization
W = jax.random.normal(jax.random.key(0), (16, 4))
FACTOR = optax.linear_schedule(0.5, 0.9, transition_steps=4)  # 0.5, 0.6, 0.7, 0.8, 0.9


def _states(c, params, steps):
  trainable, state = c.init(params)
  out = []
  for _ in range(steps):
    out.append(state)
    trainable, state = c.update(trainable, state)
  return trainable, out


@pytest.mark.parametrize("method", ["twn", "ttq"])
def test_threshold_factor_schedule_gives_each_steps_threshold(method):
  c = q.twn(FACTOR) if method == "twn" else q.ttq(FACTOR)
  trainable, states = _states(c, {"k": W}, 5)
  w = np.asarray(W)
  stat = np.abs(w).mean() if method == "twn" else np.abs(w).max()  # TWN: t * mean|w|, TTQ: t * max|w|
  apply = jax.jit(c.apply)
  kept = []
  for step, state in enumerate(states):
    t = 0.5 + 0.1 * step
    out = np.asarray(apply(trainable, state)["k"])
    np.testing.assert_array_equal(out != 0, np.abs(w) > np.float32(t) * np.float32(stat), err_msg=f"step {step}")
    np.testing.assert_array_equal(jc.export.materialize(c.pack(trainable, state)["k"]), out)
    if method == "twn":  # the same as the constant factor of that step
      np.testing.assert_array_equal(out, q.twn(t).apply({"k": W}, q.twn(t).init({"k": W})[1])["k"])
    kept.append(int((out != 0).sum()))
  assert kept == sorted(kept, reverse=True) and kept[0] > kept[-1]


def test_pact_alpha_decay_schedules():
  decay = optax.exponential_decay(1e-2, transition_steps=1, decay_rate=0.5)
  c = q.pact(4, alpha_decay=decay, per_channel=True)
  trainable, states = _states(c, {"k": W}, 3)
  alphas = np.asarray(trainable["k"].alpha)
  for step, state in enumerate(states):
    np.testing.assert_allclose(c.penalty(trainable, state), 1e-2 * 0.5**step * (alphas**2).sum(), rtol=1e-6)
  model = lambda p, x: x @ p["w"]
  acts = q.pact_activations(model, 4, inputs=(jnp.arange(3.0).reshape(1, 3),), alpha_decay=decay)
  tree, states = _states(acts, {"w": jnp.ones((3, 2))}, 3)
  total = sum(float(n["alpha"]) ** 2 for n in tree.extra.values())
  for step, state in enumerate(states):
    np.testing.assert_allclose(acts.penalty(tree, state), 1e-2 * 0.5**step * total, rtol=1e-6)
  assert q.pact(4).penalty(*q.pact(4).init({"k": W})) is None  # constant 0: no term


def test_bad_schedules_fail_at_construction():
  for factory in (q.twn, q.ttq):
    with pytest.raises(ValueError, match=r"threshold_factor\(0\) must be in \(0.0, inf\]"):
      factory(lambda step: 0.0 * step)
    with pytest.raises(ValueError, match="threshold_factor schedule must return a scalar"):
      factory(lambda step: jnp.ones(2))
  for factory in (
    q.pact,
    lambda alpha_decay: q.pact_activations(lambda p, x: x, 4, inputs=(), alpha_decay=alpha_decay),
  ):
    with pytest.raises(ValueError, match=r"alpha_decay\(0\) must be in \[0.0, inf\]"):
      factory(alpha_decay=lambda step: step - 1.0)
