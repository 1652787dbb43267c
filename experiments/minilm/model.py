"""The all-MiniLM-L6-v2 sentence encoder in Flax NNX: a BERT encoder, mean pooling, L2 norm.

BERT (Devlin et al. 2018, https://arxiv.org/abs/1810.04805) as Hugging Face's ``BertModel``
computes it: word + position + token-type embeddings, LayerNorm; then per layer, post-LN
self-attention and a GELU MLP (exact erf GELU, LayerNorm eps 1e-12). all-MiniLM-L6-v2
(Reimers & Gurevych 2019, https://arxiv.org/abs/1908.10084, on MiniLM: Wang et al. 2020,
https://arxiv.org/abs/2002.10957) averages the last hidden states over the attention mask
and L2-normalizes the mean. BERT's pooler is not part of the sentence embedding, so it is
not built here.

Every Dense layer is an ``nnx.Linear`` with a ``(in, out)`` kernel, so the param paths read
``layers/3/attention/query/kernel``, ``layers/3/attention/output/kernel``,
``layers/3/intermediate/kernel`` and ``layers/3/output/kernel``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Config:
  """The encoder's sizes (all-MiniLM-L6-v2's by default)."""

  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  mlp: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  eps: float = 1e-12


class Embeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm."""

  def __init__(self, cfg: Config, rngs: nnx.Rngs):
    self.word = nnx.Embed(cfg.vocab_size, cfg.hidden, rngs=rngs)
    self.position = nnx.Embed(cfg.max_positions, cfg.hidden, rngs=rngs)
    self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden, rngs=rngs)
    self.norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)

  def __call__(self, input_ids: jax.Array) -> jax.Array:
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = self.word(input_ids) + self.position(positions) + self.token_type(jnp.zeros_like(input_ids))
    return self.norm(x)


class Attention(nnx.Module):
  """Multi-head self-attention with BERT's additive mask; ``output`` is the projection after it."""

  def __init__(self, cfg: Config, rngs: nnx.Rngs):
    self.heads = cfg.heads
    self.query = nnx.Linear(cfg.hidden, cfg.hidden, rngs=rngs)
    self.key = nnx.Linear(cfg.hidden, cfg.hidden, rngs=rngs)
    self.value = nnx.Linear(cfg.hidden, cfg.hidden, rngs=rngs)
    self.output = nnx.Linear(cfg.hidden, cfg.hidden, rngs=rngs)

  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(d // self.heads, x.dtype))
    # Hugging Face's extended mask: the dtype's most negative value added at padded keys.
    bias = (1.0 - attention_mask[:, None, None, :].astype(x.dtype)) * jnp.finfo(x.dtype).min
    probs = jax.nn.softmax(scores + bias, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    return self.output(context)


class Layer(nnx.Module):
  """One post-LN BERT layer: ``x = LN(x + attn(x))``, ``x = LN(x + output(gelu(intermediate(x))))``."""

  def __init__(self, cfg: Config, rngs: nnx.Rngs):
    self.attention = Attention(cfg, rngs)
    self.attention_norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)
    self.intermediate = nnx.Linear(cfg.hidden, cfg.mlp, rngs=rngs)
    self.output = nnx.Linear(cfg.mlp, cfg.hidden, rngs=rngs)
    self.output_norm = nnx.LayerNorm(cfg.hidden, epsilon=cfg.eps, rngs=rngs)

  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, attention_mask))
    h = jax.nn.gelu(self.intermediate(x), approximate=False)
    return self.output_norm(x + self.output(h))


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """L2-normalized mean of ``hidden: float[B, T, D]`` over the tokens where ``attention_mask: [B, T]`` is 1.

  As sentence-transformers: the token count is clamped at 1e-9 and the norm at 1e-12, so
  an all-padding row gives zeros, never NaN.
  """
  m = attention_mask.astype(hidden.dtype)[..., None]
  mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


class MiniLM(nnx.Module):
  """The all-MiniLM-L6-v2 sentence encoder: ``model(input_ids, attention_mask) -> float32[B, 384]``.

  Args of ``__call__``: ``input_ids: int[B, T]`` token ids, ``attention_mask: int[B, T]``
  (1 at real tokens, 0 at padding). Returns the unit-norm sentence embeddings.
  """

  def __init__(self, cfg: Config | None = None, *, rngs: nnx.Rngs | None = None):
    cfg = cfg or Config()
    rngs = rngs or nnx.Rngs(0)
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs)
    self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.layers)])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    x = self.embeddings(input_ids)
    for layer in self.layers:
      x = layer(x, attention_mask)
    return mean_pool(x, attention_mask)


def functional(model: MiniLM) -> tuple[Any, dict, Callable[..., jax.Array]]:
  """The model as a pure function of a plain dict of its params.

  Returns:
    ``(graphdef, params, apply)``: ``params`` is the ``nnx.Param`` state as a pure nested
    dict (paths ``layers/0/attention/query/kernel``), and ``apply(params, input_ids,
    attention_mask) -> float32[B, 384]`` runs the model on such a dict (or on an
    ``nnx.State``), so every jaxcompress compressor, ``graph.trace`` and ``graph.capture``
    can work on it.
  """
  graphdef, state = nnx.split(model, nnx.Param)
  template = jax.tree.map(lambda v: v, state)

  def apply(params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    if isinstance(params, nnx.State):
      params = params.to_pure_dict()
    fresh = jax.tree.map(lambda v: v, template)
    nnx.replace_by_pure_dict(fresh, params)
    return nnx.merge(graphdef, fresh)(input_ids, attention_mask)

  return graphdef, state.to_pure_dict(), apply
