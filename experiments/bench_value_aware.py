"""Training memory of value-aware quantized back-propagation against the dense backward.

Run ``python -m experiments.bench_value_aware [--quick]``. For ReLU MLPs at batch 1024
(LeNet-300-100; 1024-4096-4096-10; a deep 1024-2048x8-10, where saved activations
dominate) it takes the gradient of the cross-entropy, dense and with every matmul's
saved activation value-aware-quantized (``quantization.value_aware_backward``: 4-bit
codes in int8 plus 1% outliers at float32), and prints side by side:

- *saved*: the bytes of every residual the forward pass keeps for the backward pass
  (``jax.ad_checkpoint.saved_residuals``, the params themselves excluded): the memory the
  method targets;
- *temp*: XLA's memory analysis of the compiled gradient (``temp_size_in_bytes``, every
  buffer alive inside the step at its peak, as the CPU compiler assigns them).

The ReLU here saves a 1-bit-per-entry ``bool`` mask for its own backward (a
``custom_vjp``), so the matmuls' saved activations are the only float residuals; with
``jax.nn.relu``, whose derivative reads its float input, the float pre-activation is
saved anyway and the quantized copy only adds to it. Memory, not time: nothing here
depends on the machine's load.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax._src.ad_checkpoint import saved_residuals  # public as print_saved_residuals only

from experiments.bench_overhead import init_mlp
from jaxcompress import graph, quantization

MODELS = {
  "lenet300100 784-300-100-10": (784, 300, 100, 10),
  "mlp 1024-4096-4096-10": (1024, 4096, 4096, 10),
  "deep 1024-2048x8-10": (1024, *([2048] * 8), 10),
}


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward keeps only the mask ``x > 0``."""
  return jnp.maximum(x, 0)


relu.defvjp(lambda x: (jnp.maximum(x, 0), x > 0), lambda mask, g: (jnp.where(mask, g, 0),))


def mlp(params: dict, x: jax.Array) -> jax.Array:
  """ReLU MLP over ``fc1, fc2, ...``; the last layer gives logits."""
  n = len(params)
  for i in range(1, n + 1):
    x = x @ params[f"fc{i}"]["kernel"] + params[f"fc{i}"]["bias"]
    x = relu(x) if i < n else x
  return x


def saved_bytes(fn, *args) -> int:
  """Bytes of the residuals ``fn``'s forward pass saves for its backward (arguments excluded)."""
  out = 0
  for aval, why in saved_residuals(fn, *args):
    if not why.startswith("from the argument"):
      out += int(np.prod(aval.shape)) * aval.dtype.itemsize
  return out


def temp_bytes(fn, *args) -> int:
  """Temporary bytes XLA allocates inside the compiled ``fn`` (its memory analysis)."""
  return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="only the smallest model")
  parser.add_argument("--batch", type=int, default=1024)
  args = parser.parse_args()
  rule = quantization.value_aware_backward(lambda site, a, w: site.compute(a, w), bits=4, outlier_fraction=0.01)
  mib = 2**20
  print(
    f"{'model':28s} {'saved dense':>12s} {'saved VAQ':>10s} {'ratio':>6s} {'temp dense':>11s} {'temp VAQ':>9s} {'ratio':>6s}"
  )
  for name, sizes in list(MODELS.items())[: 1 if args.quick else None]:
    params = init_mlp(sizes)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(args.batch, sizes[0])), jnp.float32)
    y = jnp.zeros((args.batch,), jnp.int32)

    def loss(p, x, y, apply=mlp):
      return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    def vaq(p, x, y):
      return loss(p, x, y, graph.rewrite(mlp, rule))

    sd, sv = saved_bytes(loss, params, x, y), saved_bytes(vaq, params, x, y)
    td, tv = temp_bytes(jax.grad(loss), params, x, y), temp_bytes(jax.grad(vaq), params, x, y)
    print(
      f"{name:28s} {sd / mib:10.2f}Mi {sv / mib:8.2f}Mi {sv / sd:6.2f} {td / mib:9.2f}Mi {tv / mib:7.2f}Mi {tv / td:6.2f}"
    )


if __name__ == "__main__":
  main()
