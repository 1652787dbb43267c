"""JAX's multi-controller runtime: two processes of 4 CPU devices train as one of 8."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from tests.train._multiprocess_worker import train

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_process_of_eight_devices(tmp_path):
  env = dict(os.environ)
  # the workers set their own device count; every other XLA flag (conftest's) is kept, so
  # both sides compile under the same flags
  flags = os.environ.get("XLA_FLAGS", "").split()
  env["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  port = free_port()
  cmd = [sys.executable, "-m", "tests.train._multiprocess_worker"]
  procs = [
    subprocess.Popen([*cmd, str(i), str(port), str(tmp_path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for i in range(2)
  ]
  try:
    errors = [p.communicate(timeout=240)[1] for p in procs]
  finally:
    for p in procs:  # never leave a process (or its port) behind
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  got = dict(np.load(tmp_path / "params.npz"))

  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("d",))
  expected = train(mesh, lambda x, y, sharding: (jax.device_put(x, sharding), jax.device_put(y, sharding)))
  assert sorted(got) == sorted(expected)
  for k in expected:  # the same devices and reductions; only the transport differs
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert any((v == 0).mean() > 0.4 for v in expected.values())  # it pruned
