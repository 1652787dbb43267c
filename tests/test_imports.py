"""Import hygiene: the library imports without the experiments' extras and touches no device."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
  """
  import sys

  class Block:
    blocked = ("sklearn", "matplotlib", "tqdm", "orbax", "pandas", "seaborn")

    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in self.blocked:
        raise ImportError(f"blocked in this test: {name}")
      return None

  sys.meta_path.insert(0, Block())
  import jaxcompress
  from jax._src import xla_bridge

  assert not xla_bridge._backends, f"a JAX backend was initialized: {list(xla_bridge._backends)}"
  print(bool(jaxcompress.__all__))
  """
)


def test_import_needs_no_extras_and_initializes_no_backend():
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "True"  # ruff (RUF022) keeps __all__ sorted
