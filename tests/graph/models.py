"""Small models for the graph tests, in Flax NNX (and one in Linen)."""

import jax
import jax.numpy as jnp
from flax import linen, nnx


class MLP(nnx.Module):
  """LeNet-300-100 shaped MLP."""

  def __init__(self, rngs, sizes=(64, 300, 100, 10)):
    self.layers = nnx.List([nnx.Linear(m, n, rngs=rngs) for m, n in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


class ResidualConvNet(nnx.Module):
  """conv-BN-relu stem, a residual block of two conv-BN, pooling, flatten into Dense."""

  def __init__(self, rngs, c=8):
    self.stem = nnx.Conv(1, c, (3, 3), rngs=rngs)
    self.stem_bn = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
    self.conv1 = nnx.Conv(c, c, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
    self.conv2 = nnx.Conv(c, c, (3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
    self.head = nnx.Linear(4 * 4 * c, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.stem_bn(self.stem(x)))
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    x = jax.nn.relu(x + y)
    x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(x.reshape(x.shape[0], -1))


class DepthwiseSeparable(nnx.Module):
  """conv -> depthwise 3x3 -> pointwise 1x1 -> global pool -> Dense."""

  def __init__(self, rngs, c=6, out=12):
    self.conv = nnx.Conv(3, c, (3, 3), strides=2, rngs=rngs)
    self.depthwise = nnx.Conv(c, c, (3, 3), feature_group_count=c, padding="VALID", rngs=rngs)
    self.pointwise = nnx.Conv(c, out, (1, 1), rngs=rngs)
    self.head = nnx.Linear(out, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.conv(x))
    x = jax.nn.relu(self.depthwise(x))
    x = jax.nn.relu(self.pointwise(x))
    return self.head(x.mean(axis=(1, 2)))


class Inception(nnx.Module):
  """Two branches concatenated along channels, then a 1x1 conv."""

  def __init__(self, rngs):
    self.branch_a = nnx.Conv(3, 4, (1, 1), rngs=rngs)
    self.branch_b = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.merge = nnx.Conv(10, 5, (1, 1), rngs=rngs)

  def __call__(self, x):
    x = jnp.concatenate([jax.nn.relu(self.branch_a(x)), jax.nn.relu(self.branch_b(x))], axis=-1)
    return self.merge(x).mean(axis=(1, 2))


class TransformerBlock(nnx.Module):
  """Pre-norm attention (q/k/v/o through einsum) and an MLP."""

  def __init__(self, rngs, d=16, heads=2, hidden=32):
    k = d // heads
    self.scale = 1.0 / k**0.5  # fixed at construction, so removing head dims keeps it
    init = nnx.initializers.lecun_normal()
    key = rngs.params
    self.wq = nnx.Param(init(key(), (d, heads, k)))
    self.wk = nnx.Param(init(key(), (d, heads, k)))
    self.wv = nnx.Param(init(key(), (d, heads, k)))
    self.wo = nnx.Param(init(key(), (heads, k, d)))
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, d, rngs=rngs)

  def __call__(self, x):
    h = self.ln1(x)
    q = jnp.einsum("bsd,dhk->bshk", h, self.wq[...])
    k = jnp.einsum("bsd,dhk->bshk", h, self.wk[...])
    v = jnp.einsum("bsd,dhk->bshk", h, self.wv[...])
    att = jax.nn.softmax(jnp.einsum("bshk,bthk->bhst", q, k) * self.scale, axis=-1)
    x = x + jnp.einsum("bhst,bthk,hkd->bsd", att, v, self.wo[...])
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class ScannedMLP(nnx.Module):
  """Four identical layers stacked and applied with lax.scan."""

  def __init__(self, rngs, d=16, depth=4):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (depth, d, d)) / jnp.sqrt(d))
    self.b = nnx.Param(jnp.zeros((depth, d)))

  def __call__(self, x):
    def layer(h, wb):
      w, b = wb
      return jnp.tanh(h @ w + b), None

    return jax.lax.scan(layer, x, (self.w[...], self.b[...]))[0]


class LinenCNN(linen.Module):
  """The flatten-into-Dense case, in Linen."""

  @linen.compact
  def __call__(self, x):
    x = linen.relu(linen.Conv(4, (3, 3), name="conv")(x))
    x = x.reshape(x.shape[0], -1)
    return linen.Dense(10, name="dense")(x)


def nnx_apply(model):
  """(apply_fn, variables) for an NNX model: apply_fn(variables, x) = model(x)."""
  graphdef, state = nnx.split(model)
  return (lambda s, x: nnx.merge(graphdef, s)(x)), state


def plain_depthwise(v, x):
  """Depthwise-separable block as a plain function: channel counts come from the arrays."""
  dn = ("NHWC", "HWIO", "NHWC")
  c = v["depthwise"].shape[-1]
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, v["conv"], (1, 1), "SAME", dimension_numbers=dn))
  h = jax.lax.conv_general_dilated(h, v["depthwise"], (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
  h = jax.nn.relu(h + v["depthwise_bias"])
  h = jax.lax.conv_general_dilated(h, v["pointwise"], (1, 1), "SAME", dimension_numbers=dn)
  return h.mean(axis=(1, 2)) @ v["head"]


def plain_depthwise_params(key):
  k = jax.random.split(key, 4)
  return {
    "conv": jax.random.normal(k[0], (3, 3, 3, 6)),
    "depthwise": jax.random.normal(k[1], (3, 3, 1, 6)),
    "depthwise_bias": jnp.zeros(6),
    "pointwise": jax.random.normal(k[2], (1, 1, 6, 12)),
    "head": jax.random.normal(k[3], (12, 10)),
  }
