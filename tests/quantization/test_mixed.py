"""Mixed precision: per-leaf bits in fake_quant, HAWQ-v2's Hutchinson trace, the measured-loss
criterion and the exact knapsack allocation (Dong et al. 2020, arXiv:1911.03852)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc

Q = jc.quantization


def _quadratic():
  """A quadratic loss ½ xᵀHx + gᵀx over two leaves, with cross-leaf curvature."""
  a = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (10, 10)))
  h = a @ a.T / 10 + np.diag(np.arange(10.0))
  params = {"u": {"kernel": jnp.full((2, 3), 0.5)}, "v": {"kernel": jnp.full((2, 2), -0.25)}}

  def loss(p):
    x = jnp.concatenate([p["u"]["kernel"].ravel(), p["v"]["kernel"].ravel()])
    return 0.5 * x @ jnp.asarray(h, jnp.float32) @ x + x.sum()

  return params, loss, h


def test_hutchinson_matches_exact_trace():
  params, loss, h = _quadratic()
  exact = jax.hessian(lambda x: loss({"u": {"kernel": x[:6].reshape(2, 3)}, "v": {"kernel": x[6:].reshape(2, 2)}}))(
    jnp.zeros(10)
  )
  np.testing.assert_allclose(exact, h, rtol=1e-5, atol=1e-5)
  samples = 2000
  got = Q.hessian_trace(loss, params, (), jax.random.PRNGKey(0), samples)
  for path, block in (("u/kernel", slice(0, 6)), ("v/kernel", slice(6, 10))):
    n = block.stop - block.start
    want = np.trace(h[block, block]) / n
    # Var of v_lᵀ(Hv)_l with Rademacher v: 2 Σ_{i≠j, i∈l, j∈l} H_ij² + Σ_{i∈l, j∉l} H_ij² (cross terms).
    inner = h[block, block]
    var = 2 * (np.sum(inner**2) - np.sum(np.diag(inner) ** 2)) + np.sum(h[block] ** 2) - np.sum(inner**2)
    tol = 4 * np.sqrt(var / samples) / n
    assert abs(got[path] - want) < tol, (path, got[path], want, tol)


def test_negative_trace_is_clamped_with_a_warning():
  params = {"w": jnp.ones((2, 2))}
  with pytest.warns(UserWarning, match="negative trace estimates clamped"):
    got = Q.hessian_trace(lambda p: -0.5 * jnp.sum(p["w"] ** 2), params, (), jax.random.PRNGKey(0), 4)
  assert got == {"w": 0.0}


def _brute_force(cost, sizes, budget):
  paths = list(cost)
  best = None
  for combo in itertools.product(*(list(cost[p]) for p in paths)):
    total = sum(sizes[p][b] for p, b in zip(paths, combo))
    if total > budget:
      continue
    value = sum(cost[p][b] for p, b in zip(paths, combo))
    if best is None or value < best[0] - 1e-12:
      best = (value, dict(zip(paths, combo)))
  return best


def test_allocation_equals_brute_force():
  rng = np.random.default_rng(0)
  for trial in range(25):
    layers = int(rng.integers(1, 5))
    bits = (2, 3, 4, 8)
    cost, sizes = {}, {}
    for i in range(layers):
      n = int(rng.integers(1, 40))
      sizes[f"l{i}"] = {b: n * b + int(rng.integers(0, 4)) for b in bits}
      errs = np.sort(rng.exponential(size=len(bits)))[::-1]  # fewer bits, more error
      cost[f"l{i}"] = {b: float(e) for b, e in zip(bits, errs)}
    lo = sum(min(s.values()) for s in sizes.values())
    hi = sum(max(s.values()) for s in sizes.values())
    budget = int(rng.integers(lo, hi + 1))
    got = Q.allocate_bits(cost, sizes, budget)
    want_value, _ = _brute_force(cost, sizes, budget)
    assert sum(sizes[p][b] for p, b in got.items()) <= budget
    assert sum(cost[p][b] for p, b in got.items()) == pytest.approx(want_value, rel=1e-12, abs=1e-12), trial


def test_allocation_granularity_never_exceeds_budget():
  cost = {"a": {2: 3.0, 4: 1.0}, "b": {2: 5.0, 4: 0.5}}
  sizes = {"a": {2: 13, 4: 25}, "b": {2: 11, 4: 21}}
  exact = Q.allocate_bits(cost, sizes, 38)
  assert exact == {"a": 2, "b": 4}  # 13 + 21 = 34 <= 38; both at 4 bits is 46
  # In units of 8 bytes the sizes round up to a: 2/4, b: 2/3 units and the budget down to 4:
  # only (2, 2) fits, the optimum at that granularity (never over the budget, no longer exact).
  assert Q.allocate_bits(cost, sizes, 38, granularity=8) == {"a": 2, "b": 2}


def test_budget_below_minimum_names_both_numbers():
  cost = {"a": {2: 1.0, 4: 0.0}}
  sizes = {"a": {2: 10, 4: 20}}
  with pytest.raises(ValueError, match=r"budget_bytes=9 .* 10 bytes"):
    Q.allocate_bits(cost, sizes, 9)
  with pytest.raises(ValueError, match="sizes names"):
    Q.allocate_bits(cost, {"b": {2: 1}}, 100)
  with pytest.raises(ValueError, match="not all finite"):
    Q.allocate_bits({"a": {2: float("nan"), 4: 0.0}}, sizes, 100)
  assert Q.allocate_bits(cost, sizes, 10) == {"a": 2}
  assert Q.allocate_bits(cost, sizes, 20) == {"a": 4}


def _mlp():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {
    "fc0": {"kernel": jax.random.normal(k1, (8, 6)), "bias": jnp.zeros(6)},
    "fc1": {"kernel": jax.random.normal(k2, (6, 3)), "bias": jnp.zeros(3)},
  }
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
  y = jnp.arange(16) % 3

  def loss(p, x, y):
    h = jax.nn.relu(x @ p["fc0"]["kernel"] + p["fc0"]["bias"])
    logits = h @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

  return params, loss, (x, y)


def test_mixed_fake_quant_packs_each_leaf_at_its_bits():
  params, _, _ = _mlp()
  c = Q.fake_quant({"fc0/kernel": 3, "fc1/kernel": 8}, per_channel=True)
  trainable, state = c.init(params)
  view, packed = c.apply(trainable, state), c.pack(trainable, state)
  for path, b in (("fc0", 3), ("fc1", 8)):
    alone = Q.fake_quant(b, per_channel=True, where=f"{path}/kernel")
    t, s = alone.init(params)
    np.testing.assert_array_equal(view[path]["kernel"], alone.apply(t, s)[path]["kernel"])
    assert packed[path]["kernel"].bits == b
  sizes = Q.leaf_bytes(params, (3, 8))
  assert packed["fc0"]["kernel"].nbytes == sizes["fc0/kernel"][3]
  assert packed["fc1"]["kernel"].nbytes == sizes["fc1/kernel"][8]
  np.testing.assert_array_equal(params["fc0"]["bias"], view["fc0"]["bias"])
  # rules as (where, bits), first match wins; a rule matching nothing is an error
  c = Q.fake_quant([("fc0/.*", 2), (".*kernel", 4)])
  t, s = c.init(params)
  assert c.pack(t, s)["fc0"]["kernel"].bits == 2 and c.pack(t, s)["fc1"]["kernel"].bits == 4
  with pytest.raises(ValueError, match="matches no leaf"):
    Q.fake_quant({"fc9/kernel": 4}).init(params)
  with pytest.raises(ValueError, match="bits"):
    Q.fake_quant({"fc0/kernel": 1})


def test_perturbation_and_loss_criterion_match_direct_computation():
  params, loss, batch = _mlp()
  pert = Q.quantization_perturbation(params, (2, 4))
  measured = Q.loss_sensitivity(loss, params, batch, (2, 4))
  base = float(loss(params, *batch))
  for path in ("fc0", "fc1"):
    w = np.asarray(params[path]["kernel"])
    for b in (2, 4):
      qmax = 2 ** (b - 1) - 1
      scale = np.abs(w).max(axis=0) / qmax  # per output channel
      q = np.clip(np.round(w / scale), -qmax, qmax) * scale
      assert pert[f"{path}/kernel"][b] == pytest.approx(np.sum((q - w) ** 2), rel=1e-5)
      moved = jax.tree.map(lambda x: x, params)
      moved[path] = {**params[path], "kernel": jnp.asarray(q, jnp.float32)}
      assert measured[f"{path}/kernel"][b] == pytest.approx(float(loss(moved, *batch)) - base, abs=1e-5)


def test_choose_bits_spends_the_budget_where_it_matters():
  params, loss, batch = _mlp()
  sizes = Q.leaf_bytes(params, (2, 8))
  budget = sizes["fc0/kernel"][2] + sizes["fc1/kernel"][8]  # room for one layer at 8 bits
  for criterion in ("hessian", "loss"):
    got = Q.choose_bits(loss, params, batch, budget, candidates=(2, 8), criterion=criterion, samples=8)
    if criterion == "loss":
      cost = Q.loss_sensitivity(loss, params, batch, (2, 8))
    else:
      traces = Q.hessian_trace(loss, params, batch, jax.random.PRNGKey(0), 8)
      cost = Q.hawq_sensitivity(traces, Q.quantization_perturbation(params, (2, 8)))
    assert got == Q.allocate_bits(cost, sizes, budget)
    # the layer kept at 8 bits is the one whose move to 2 bits costs more
    gain = {p: cost[p][2] - cost[p][8] for p in cost}
    assert got[max(gain, key=gain.get)] == 8 and got[min(gain, key=gain.get)] == 2


def test_budget_above_every_total_and_bad_budget_types():
  cost = {"a": {2: 1.0, 4: 0.5, 8: 0.1}, "b": {2: 2.0, 4: 0.3, 8: 0.2}}
  sizes = {"a": {2: 8, 4: 16, 8: 32}, "b": {2: 3, 4: 6, 8: 12}}
  # A budget past the largest total (44) allows everything: the least cost at each layer,
  # without a table the size of the budget (10**12 bytes).
  assert Q.allocate_bits(cost, sizes, 10**12) == Q.allocate_bits(cost, sizes, 44) == {"a": 8, "b": 8}
  for bad in (30.5, float("inf"), True, "30"):
    with pytest.raises(ValueError, match="budget_bytes must be an integer"):
      Q.allocate_bits(cost, sizes, bad)
  with pytest.raises(ValueError, match=r"layer 'a'.*bit-widths.*'2'"):
    Q.allocate_bits({"a": {"2": 1.0}}, {"a": {"2": 1}}, 3)
  # The cap is in units: a = 25 bytes rounds up to 4 units of 8, past 25 // 8.
  assert Q.allocate_bits({"a": {2: 1.0, 4: 0.0}}, {"a": {2: 13, 4: 25}}, 10**12, granularity=8) == {"a": 4}


def test_array_batch_and_vector_loss_are_named():
  params = {"w": jnp.ones((3, 2))}
  x = jnp.ones((4, 3))
  scalar = lambda p, x: jnp.sum((x @ p["w"]) ** 2)
  with pytest.raises(TypeError, match=r"hessian_trace: batch must be a tuple.*shape \(4, 3\)"):
    Q.hessian_trace(scalar, params, x, jax.random.PRNGKey(0), 2)
  with pytest.raises(TypeError, match="loss_sensitivity: batch must be a tuple"):
    Q.loss_sensitivity(scalar, params, x, (2, 4))
  with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*\(4, 2\)"):
    Q.hessian_trace(lambda p, x: x @ p["w"], params, (x,), jax.random.PRNGKey(0), 2)
