import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc
from jaxcompress import graph
from jaxcompress.quantization import QuantSpec, activation_rule, qat
from tests import helpers
from tests.graph import models as M

SIZES = (16, 64, 8)
PARAMS = helpers.mlp_params(sizes=SIZES)
X, Y = helpers.batch(sizes=SIZES)


@pytest.mark.parametrize("weight_bits", [8, 4, 2])
def test_integer_forward_equals_fake_quant(weight_bits):
  integer = qat(helpers.mlp_apply, weight_bits=weight_bits, integer=True)
  fake = qat(helpers.mlp_apply, weight_bits=weight_bits, integer=False)
  a, b = integer.apply(PARAMS, X), fake.apply(PARAMS, X)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
  # fake=False is the same as fake-quantizing both operands with the library's quantizers
  c = jc.quantization.fake_quant(weight_bits, per_channel=True)
  w_fq = c.apply(*c.init(PARAMS))
  reference = graph.rewrite(helpers.mlp_apply, activation_rule(QuantSpec(8)))(w_fq, X)
  np.testing.assert_allclose(b, reference, rtol=1e-6, atol=1e-6)


def test_integer_and_fake_gradients_agree():
  r = jax.random.normal(jax.random.key(0), (X.shape[0], SIZES[-1]))
  grads = [
    jax.grad(lambda p, q=q: jnp.sum(q.apply(p, X) * r))(PARAMS)
    for q in (qat(helpers.mlp_apply, integer=True), qat(helpers.mlp_apply, integer=False))
  ]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_compiled_step_has_int8_dots(weight_bits):
  q = qat(helpers.mlp_apply, weight_bits=weight_bits, integer=True)
  opt = optax.adam(1e-3)
  state = jc.train.init(PARAMS, opt, q.compressor)
  step = jax.jit(jc.train.make_step(lambda p, x, y: jnp.mean((q.apply(p, x) - y) ** 2), opt, q.compressor))
  hlo = step.lower(state, X, Y).as_text()
  int8_dots = [d for d in re.findall(r"stablehlo.dot_general[^\n]*", hlo) if "xi8>" in d]
  assert len(int8_dots) == 2 and all("xi32>" in d for d in int8_dots)  # the forward of each layer
  assert "i4>" not in hlo
  state, loss = step(state, X, Y)
  assert bool(jnp.isfinite(loss))


def test_qat_trains_and_packs_a_conv_model():
  from flax import nnx

  apply_fn, variables = M.nnx_apply(M.Inception(nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, 3))
  y = jax.random.normal(jax.random.key(2), (4, 5))
  q = qat(apply_fn, weight_bits=4, integer=True)
  fake = qat(apply_fn, weight_bits=4, integer=False)
  np.testing.assert_allclose(q.apply(variables, x), fake.apply(variables, x), rtol=1e-4, atol=1e-4)
  opt = optax.adam(1e-2)
  loss = lambda p, x, y: jnp.mean((q.apply(p, x) - y) ** 2)
  state = jc.train.init(variables, opt, q.compressor)
  step = jax.jit(jc.train.make_step(loss, opt, q.compressor))
  first = None
  for _ in range(30):
    state, value = step(state, x, y)
    first = value if first is None else first
  assert float(value) < float(first)
  packed = q.compressor.pack(state.params, state.cstate)
  kernel = packed["merge"]["kernel"].get_value()  # NNX state: the packed leaf sits in its Param
  assert isinstance(kernel, jc.export.QArray) and kernel.bits == 4


def test_packed_weights_are_the_weights_the_sites_used():
  """The QAT compressor's apply is the identity (weights are quantized at the op, not in
  the tree), so the conformance property pack -> materialize == apply holds for QAT.apply
  instead: the packed weights reproduce the fake-quant forward."""
  fake = qat(helpers.mlp_apply, weight_bits=4, integer=False)
  packed = fake.compressor.pack(*fake.compressor.init(PARAMS))
  dense = jc.export.materialize_tree(packed)
  np.testing.assert_array_equal(
    graph.rewrite(helpers.mlp_apply, activation_rule(QuantSpec(8)))(dense, X), fake.apply(PARAMS, X)
  )


def test_bad_bits():
  with pytest.raises(ValueError, match=r"weight_bits must be in \[2, 8\], got 16"):
    qat(helpers.mlp_apply, weight_bits=16)
  with pytest.raises(ValueError, match=r"act_bits must be in \[2, 16\], got 0"):
    qat(helpers.mlp_apply, act_bits=0, integer=False)
