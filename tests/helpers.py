"""Small shared fixtures: param trees shaped like Flax models, and a loss."""

import jax
import jax.numpy as jnp


def mlp_params(seed: int = 0, sizes=(16, 32, 8)):
  """A dict tree like a Flax MLP: {'fc0': {'kernel', 'bias'}, ...}."""
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  params = {}
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"fc{i}"] = {
      "kernel": jax.random.normal(keys[i], (m, n)) / jnp.sqrt(m),
      "bias": jnp.full((n,), 0.1),
    }
  return params


def mlp_apply(params, x):
  n = len(params)
  for i in range(n):
    x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def mse_loss(params, x, y):
  return jnp.mean((mlp_apply(params, x) - y) ** 2)


def batch(seed: int = 1, n: int = 16, sizes=(16, 32, 8)):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, sizes[0])), jax.random.normal(ky, (n, sizes[-1]))
