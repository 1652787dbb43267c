"""Test setup: 8 CPU devices, so pmap and sharding run on every test run; faster XLA compiles."""

import importlib.metadata
import os


def _fast_compile_flags(flags: str) -> str:
  """XLA:CPU flags that halve compile time, the suite's main cost (most tests compile tiny
  programs, eager ops included, and run them once). Every check compares runs made in one
  process under the same flags (a subprocess a test starts gets them too), never against a
  number made under other flags, so none depends on them. A flag already in XLA_FLAGS wins.
  ``xla_cpu_use_fusion_emitters=false`` (the legacy emitters, about half of the remaining
  compile time) is added only where jaxlib is known to have it: XLA aborts on a flag it does
  not know."""
  extra = ["--xla_backend_optimization_level=0"]
  try:
    version = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    version = (0, 0)
  if version >= (0, 10):
    extra.append("--xla_cpu_use_fusion_emitters=false")
  for flag in extra:
    if flag.split("=")[0] not in flags:
      flags += " " + flag
  return flags.strip()


os.environ["XLA_FLAGS"] = _fast_compile_flags(
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
