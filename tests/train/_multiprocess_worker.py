"""One process of the two-process training run of ``test_multiprocess.py``.

``python -m tests.train._multiprocess_worker PROCESS_ID PORT OUT_DIR`` joins JAX's
multi-controller runtime on 127.0.0.1 (CPU collectives over gloo) with 4 CPU devices,
runs :func:`train` on the 8-device global mesh and, from process 0, writes the final
params to ``OUT_DIR/params.npz``. Nothing runs on import.
"""

import os
import sys

STEPS = 3
PER_DEVICE = 4


def train(mesh, batch_for):
  """Trains the test MLP with pruning + integer QAT + QSGD-compressed gradients.

  Args:
    mesh: a 1-D ``Mesh`` with axis ``"d"`` over all (global) devices.
    batch_for: ``batch_for(global_x, global_y, sharding) -> (x, y)``, global arrays
      sharded along ``"d"``.

  Returns:
    ``{path: np.ndarray}`` of the final trainable params (replicated, so any shard).
  """
  import jax
  import numpy as np
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import jaxcompress as jc
  from jaxcompress.quantization import gradient_compression as gc
  from tests import helpers

  c = jc.chain(jc.pruning.magnitude(0.5), jc.quantization.qat(8, 8, integer=True, axis_name="d"))
  opt = optax.chain(gc.qsgd(16, axis_name="d"), optax.adam(1e-2))
  step = jc.train.make_step(helpers.mse_loss, opt, c, axis_name="d", reduce_gradients=False)
  state = jc.train.init(helpers.mlp_params(), opt, c)
  sharded = jax.jit(
    jax.shard_map(step, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=(P(), P()), check_vma=False)
  )
  n = PER_DEVICE * mesh.size
  for t in range(STEPS):
    x, y = helpers.batch(seed=t, n=n)
    state, _ = sharded(state, *batch_for(np.asarray(x), np.asarray(y), NamedSharding(mesh, P("d"))))
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  return {jax.tree_util.keystr(k): np.asarray(v.addressable_shards[0].data) for k, v in flat}


def main(process_id: int, port: int, out_dir: str) -> None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np
  from jax.sharding import Mesh

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  try:
    assert jax.device_count() == 8 and jax.local_device_count() == 4, (jax.device_count(), jax.local_device_count())
    mesh = Mesh(np.array(jax.devices()), ("d",))  # process 0's devices first

    def batch_for(x, y, sharding):  # each process holds its own half of the global batch
      half = x.shape[0] // 2
      rows = slice(process_id * half, (process_id + 1) * half)
      return (
        jax.make_array_from_process_local_data(sharding, x[rows], x.shape),
        jax.make_array_from_process_local_data(sharding, y[rows], y.shape),
      )

    params = train(mesh, batch_for)
    if process_id == 0:
      tmp = os.path.join(out_dir, "params.tmp.npz")
      np.savez(tmp, **params)
      os.replace(tmp, os.path.join(out_dir, "params.npz"))
  finally:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
