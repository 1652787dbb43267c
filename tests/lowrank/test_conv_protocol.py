"""The protocol checks that matter for the compressors the MLP conformance suite cannot hold.

tests/test_conformance.py trains MLPs, so the conv factorizations (spatial SVD, Tucker-2, CP)
and LoRA are checked here on a tiny conv net, in ``chain(stage, int8, magnitude)``
(one chain each, for CI time), for the properties of its suite that a restructuring stage
can break: a jitted step equals the eager one, and ``pack`` then ``materialize`` is
``apply`` bit for bit (also through a saved file).
"""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
    "conv": {"kernel": jax.random.normal(k1, (3, 3, 4, 6)) / 6, "bias": jnp.full((6,), 0.1)},
    "fc": {"kernel": jax.random.normal(k2, (6, 4)) / 3, "bias": jnp.zeros(4)},
  }


def _apply(params, x):
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=dn)
  y = jax.nn.relu(y + params["conv"]["bias"]).mean(axis=(1, 2))
  return y @ params["fc"]["kernel"] + params["fc"]["bias"]


def _loss(params, x, y):
  return jnp.mean((_apply(params, x) - y) ** 2)


X = jax.random.normal(jax.random.key(1), (4, 5, 5, 4))
Y = jax.random.normal(jax.random.key(2), (4, 4))
OPT = optax.adam(1e-2)
CASES = {
  "spatial_svd": lambda: jc.lowrank.spatial_svd(2),
  "tucker2": lambda: jc.lowrank.tucker2((2, 3)),
  # CP at test_lowrank's kernel shape and rank (3, 3, 4, 6), 12: its ALS compilation is shared with those tests
  "cp": lambda: jc.lowrank.cp(12, iterations=5),
  "lora": lambda: jc.lowrank.lora(2),
}


def _packs_exactly(c, state):
  packed = c.pack(state.params, state.cstate)
  dense = jc.export.materialize_tree(packed)
  jax.tree.map(np.testing.assert_array_equal, dense, c.apply(state.params, state.cstate))
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.safetensors")
    jc.export.save(path, packed)
    jax.tree.map(np.testing.assert_array_equal, jc.export.materialize_tree(jc.export.load(path)), dense)


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_net_chained_with_int8_and_magnitude_jit_equals_eager_and_packs_exactly(name):
  # one chain per compressor (its init is the costly part): the stage, then int8, then magnitude
  c = jc.chain(CASES[name](), jc.quantization.fake_quant(8), jc.pruning.magnitude(0.5))
  state = jc.train.init(_params(), OPT, c)
  step = jc.train.make_step(_loss, OPT, c)
  jitted = jax.jit(step)(state, X, Y)[0]
  eager = step(state, X, Y)[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), jitted, eager)
  _packs_exactly(c, jitted)
