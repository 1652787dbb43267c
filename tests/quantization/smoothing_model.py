"""A tiny pre-LN attention block with outlier channels, shared by the SmoothQuant and AWQ tests.

``h = LN(x)`` feeds only q, k and v (pre-LN: the residual bypasses it), so the LayerNorm
can absorb their smoothing; the context ``softmax(q kᵀ) v`` feeds ``o``, whose smoothing
folds into v's output columns; ``fc`` follows a GELU, so its scale stays explicit.
"""

import jax
import jax.numpy as jnp
import numpy as np

OUTLIERS = (3, 17)
PRODUCERS = {
  "q/kernel": ("ln/scale", "ln/bias"),
  "k/kernel": ("ln/scale", "ln/bias"),
  "v/kernel": ("ln/scale", "ln/bias"),
  "o/kernel": ("v/kernel", "v/bias"),
}


def params(features: int = 32, hidden: int = 24, seed: int = 0):
  rng = np.random.default_rng(seed)
  gamma = 1.0 + 0.1 * rng.normal(size=features)
  gamma[list(OUTLIERS)] = 25.0  # LayerNorm scales make the outlier channels, as in OPT
  dense = lambda i, o: {
    "kernel": jnp.asarray(rng.normal(size=(i, o)) / np.sqrt(i), jnp.float32),
    "bias": jnp.asarray(0.1 * rng.normal(size=o), jnp.float32),
  }
  return {
    "ln": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.asarray(0.1 * rng.normal(size=features), jnp.float32)},
    "q": dense(features, features),
    "k": dense(features, features),
    "v": dense(features, features),
    "o": dense(features, features),
    "fc": dense(features, hidden),
  }


def apply(p, x):
  """``x: float[batch, tokens, features]``."""
  mu = x.mean(-1, keepdims=True)
  h = (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * p["ln"]["scale"] + p["ln"]["bias"]
  lin = lambda name, a: a @ p[name]["kernel"] + p[name]["bias"]
  q, k, v = lin("q", h), lin("k", h), lin("v", h)
  att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / np.sqrt(q.shape[-1]), axis=-1)
  y = x + lin("o", jnp.einsum("bts,bsd->btd", att, v))
  return lin("fc", jax.nn.gelu(y))


def inputs(seed: int, batch: int = 4, tokens: int = 16, features: int = 32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, tokens, features)), jnp.float32)
