"""The decompositions against tensorly's at the same ranks, on random and on trained kernels.

The relative reconstruction error ``|k - k̂| / |k|`` must be within 1% of tensorly's (no
worse than 1.01 times it).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcompress import export, lowrank
from tests.lowrank.test_lowrank import K_SHAPE

tl = pytest.importorskip("tensorly")
from tensorly.decomposition import parafac, partial_tucker  # noqa: E402


@functools.cache
def _trained_kernel() -> np.ndarray:
  """conv2 of a two-conv net trained 80 adam steps on 512 of sklearn's 8x8 digits."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = jnp.asarray(digits.images[:512, ..., None] / 16.0, jnp.float32)
  y = jnp.asarray(digits.target[:512])
  keys = jax.random.split(jax.random.key(0), 3)
  params = {
    "c1": jax.random.normal(keys[0], (3, 3, 1, K_SHAPE[2])) / 3.0,
    "c2": jax.random.normal(keys[1], K_SHAPE) / 6.0,
    "fc": jax.random.normal(keys[2], (K_SHAPE[3], 10)) / 2.0,
  }

  def loss(p, x, y):
    conv = lambda h, k: jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["c1"])), p["c2"]))
    logits = h.mean(axis=(1, 2)) @ p["fc"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  opt = optax.adam(3e-2)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p, x, y)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s

  s = opt.init(params)
  for _ in range(80):
    params, s = step(params, s)
  return np.asarray(params["c2"])


def _random_kernel() -> np.ndarray:
  return np.random.default_rng(0).normal(size=K_SHAPE).astype(np.float32)


KERNELS = {"random": _random_kernel, "trained": _trained_kernel}


def _rel(approx, k):
  return float(np.linalg.norm(np.asarray(approx, np.float64) - k) / np.linalg.norm(k))


def _ours_and_theirs(kind, k):
  kj = jnp.asarray(k)
  k64 = k.astype(np.float64)
  if kind == "spatial_svd":
    ours = export.rebuild_conv(kind, tuple(lowrank.spatial_factors(kj, 2)))
    u, s, v = tl.tenalg.svd_interface(np.asarray(lowrank.spatial_matrix(jnp.asarray(k64))), n_eigenvecs=2)
    theirs = np.transpose(((u * s) @ v).reshape(3, 4, 3, 6), (0, 2, 1, 3))
  elif kind == "tucker2":
    ours = export.rebuild_conv(kind, tuple(lowrank.tucker2_factors(kj, (2, 3), iterations=50)))
    (core, (a, b)), _ = partial_tucker(k64, rank=[2, 3], modes=[2, 3], n_iter_max=50, init="svd", tol=1e-12)
    theirs = np.einsum("hwab,ca,ob->hwco", core, a, b)
  else:
    ours = export.rebuild_conv(kind, tuple(lowrank.cp_als(kj, 12, iterations=200)))
    # rank 12 exceeds the modes' sizes: tensorly fills the SVD init's extra columns at random,
    # from its global RNG unless seeded (ours beat seeds 0-5 on both kernels)
    theirs = tl.cp_to_tensor(parafac(k64, rank=12, n_iter_max=200, init="svd", tol=1e-12, random_state=0))
  return _rel(ours, k), _rel(theirs, k)


@pytest.mark.parametrize("source", sorted(KERNELS))
@pytest.mark.parametrize("kind", ["cp", "spatial_svd", "tucker2"])
def test_reconstruction_error_within_one_percent_of_tensorly(kind, source):
  k = KERNELS[source]()
  ours, theirs = _ours_and_theirs(kind, k)
  print(f"{kind} {source}: ours {ours:.5f} tensorly {theirs:.5f}")
  assert ours <= 1.01 * theirs + 1e-6, (ours, theirs)
