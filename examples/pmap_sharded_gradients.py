"""Compressed gradients for data-parallel training: QSGD under pmap and under a sharded mesh.

Eight CPU "devices" (``--xla_force_host_platform_device_count=8``, set before JAX is
imported) each take a shard of every batch of scikit-learn's bundled digits (nothing is
downloaded). Each device encodes its gradient with QSGD (Alistarh et al. 2017,
https://arxiv.org/abs/1610.02132; 4-bit codes plus one float32 scale per bucket), only
those codes cross devices (``all_gather``), and every device decodes and averages them;
the model is pruned by magnitude at the same time. The same step runs

  1. under ``jax.pmap`` (the replicas must stay identical: same params, same masks), and
  2. under ``jax.jit`` of ``jax.shard_map`` over a one-axis ``Mesh`` (must equal the pmap run).

  python examples/pmap_sharded_gradients.py    # --smoke: 5 steps, the same checks
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

import jaxcompress as jc

gc = jc.quantization.gradient_compression
DEVICES = 8


def apply(params, x):
  h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return h @ params["out"]["kernel"] + params["out"]["bias"]


def loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


@jax.jit
def _plain(tree):
  """``tree`` with PRNG keys as their raw uint32 data (one compiled call: eager ops compile one by one)."""
  return jax.tree.map(lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a, tree)


def host(tree):
  return jax.device_get(_plain(tree))


def main(steps: int) -> None:
  assert jax.device_count() == DEVICES, f"expected {DEVICES} host devices, got {jax.devices()}"
  digits = load_digits()
  x = np.asarray(digits.data / 16.0, np.float32)
  y = np.asarray(digits.target, np.int32)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {
    "hidden": {"kernel": jax.random.normal(k1, (64, 64)) * 0.125, "bias": jnp.zeros(64)},
    "out": {"kernel": jax.random.normal(k2, (64, 10)) * 0.125, "bias": jnp.zeros(10)},
  }

  # QSGD replaces the cross-device mean, so make_step must not also average float gradients
  opt = optax.chain(gc.qsgd(16, axis_name="d", bucket_size=512), optax.adam(3e-3))
  compressor = jc.pruning.magnitude(jc.pruning.polynomial_sparsity(0.5, begin_step=0, end_step=steps, frequency=1))
  step = jc.train.make_step(loss, opt, compressor, axis_name="d", reduce_gradients=False)
  state = jc.train.init(params, opt, compressor)

  rng = np.random.default_rng(0)
  batches = [rng.choice(1500, DEVICES * 32, replace=False) for _ in range(steps)]
  shard = lambda a: a.reshape(DEVICES, -1, *a.shape[1:])  # [devices, per-device batch, ...]

  # 1. pmap: the state is replicated (a leading device axis), the batch split over devices
  pstep = jax.pmap(step, axis_name="d")
  pstate = jax.jit(lambda s: jax.tree.map(lambda a: jnp.broadcast_to(a, (DEVICES, *a.shape)), s))(state)
  for idx in batches:
    pstate, ploss = pstep(pstate, shard(x[idx]), shard(y[idx]))
    # wait for each step: with fewer cores than host devices, XLA's CPU collectives of two
    # queued steps can starve each other's rendezvous (it aborts after 40 s)
    jax.block_until_ready(pstate)
  replicas = host(pstate)
  for leaf in jax.tree.leaves(replicas):
    assert all(np.array_equal(leaf[0], leaf[i]) for i in range(DEVICES)), "pmap replicas diverged"

  # 2. the same step under jit over a mesh: state replicated (P()), batch sharded on "d"
  mesh = Mesh(np.array(jax.devices()), ("d",))
  sstep = jax.jit(
    jax.shard_map(
      lambda s, xb, yb: step(s, xb, yb),
      mesh=mesh,
      in_specs=(P(), P("d"), P("d")),
      out_specs=(P(), P()),
      check_vma=False,
    )
  )
  sstate = state
  for idx in batches:
    sstate, sloss = jax.block_until_ready(sstep(sstate, x[idx], y[idx]))
  for a, b in zip(jax.tree.leaves(replicas), jax.tree.leaves(host(sstate)), strict=True):
    assert np.array_equal(a[0], b), "the sharded-jit run differs from the pmap run"
  assert float(sloss) == float(ploss[0]), "the losses differ"

  model = jax.device_get(jax.jit(compressor.apply)(sstate.params, sstate.cstate))
  accuracy = float(np.mean(np.asarray(jax.jit(apply)(model, x[1500:])).argmax(-1) == y[1500:]))
  sent, dense = gc.bytes_sent(params, gc.qsgd_codec(16, 512)), gc.bytes_sent(params, None)
  print(f"{steps} steps on {DEVICES} devices: pmap replicas identical; shard_map run == pmap run (bit for bit)")
  print(f"loss {float(sloss):.4f}  hidden sparsity {np.mean(np.asarray(model['hidden']['kernel']) == 0):.2f}")
  print(f"test accuracy {accuracy:.3f}")
  print(f"bytes each device sends per step: QSGD {sent} B vs float32 {dense} B ({dense / sent:.1f}x less)")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--smoke", action="store_true", help="5 steps: the whole path and every check")
  args = parser.parse_args()
  main(5 if args.smoke else args.steps)
