import jax.numpy as jnp
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress.core import select

PARAMS = {
  "Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
  "layers": [{"kernel": jnp.ones((3, 3)), "scale": jnp.ones(3)}],
  "step": jnp.zeros((2, 2), jnp.int32),
}


def selected(where):
  return [p for p, _, s in select.explain(where, PARAMS) if s]


def test_default_selects_floating_matrices_only():
  assert selected(None) == ["Dense_0/kernel", "layers/0/kernel"]


def test_regex_must_match_the_whole_path():
  assert selected("Dense_0/kernel") == ["Dense_0/kernel"]
  assert selected(".*kernel") == ["Dense_0/kernel", "layers/0/kernel"]
  with pytest.raises(
    ValueError, match=r"selects no leaf \(a where= regex must match the whole path: did you mean '\.\*kernel'"
  ):
    selected("kernel")  # a substring is not a full match; the error suggests the fix


def test_predicate_and_combinations():
  is_bias = lambda path, leaf: path.endswith("bias")
  assert selected(is_bias) == ["Dense_0/bias"]
  assert selected(select.any_of(is_bias, "layers/.*")) == ["Dense_0/bias", "layers/0/kernel", "layers/0/scale"]
  assert selected(select.all_of(None, select.none_of("Dense.*"))) == ["layers/0/kernel"]


def test_where_matching_nothing_raises_listing_the_leaves():
  with pytest.raises(ValueError, match=r"where='conv.\*' selects no leaf; the leaves are: .*Dense_0/kernel"):
    select.explain("conv.*", PARAMS)
  with pytest.raises(ValueError, match="selects no leaf"):
    jc.pruning.magnitude(0.5, where="conv.*").init(PARAMS)


def test_bad_where_kinds():
  with pytest.raises(ValueError, match="not a valid regular expression"):
    select.as_predicate("(")
  with pytest.raises(TypeError, match="where must be"):
    select.as_predicate(3)


def test_nnx_state_paths_drop_the_value_attribute():
  model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  _, params = nnx.split(model, nnx.Param)
  assert selected_of(params) == ["kernel"]


def selected_of(params):
  return [p for p, _, s in select.explain(None, params) if s]
