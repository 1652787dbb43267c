"""QAT step time, jaxcompress vs Qwix, against this CPU's int8 ceiling and a hand-written limit.

Run ``python -m experiments.bench_qat [--quick]`` (served inference is ``experiments.bench_serve``).
For LeNet-300-100 and an MLP 1024-4096-4096-10 at batch 256 it prints the CPU's int8
features and the raw ``int8 x int8 -> int32`` over float32 dot speed-up at the model's
forward shapes (:mod:`experiments.ceiling`: the ceiling of any integer forward), then
times one adam cross-entropy training step of:

- dense float32;
- jaxcompress QAT W8A8 fake-quantized (``integer=False``);
- jaxcompress QAT with integer forward matmuls, W8A8 and W4A8 (``integer=True``), with the
  float backward at the quantized operands (the default, Jacob et al.'s graph), at the float
  operands (``backward_operands='float'``, as Qwix and the limit below), the same with
  symmetric activations (``act_symmetric=True``: Qwix's absmax per-tensor activation codes,
  where our default is Jacob et al.'s asymmetric codes with a zero point; ``float sym``), and
  with the opt-in int8 backward (``backward='int8'``: the whole step int8);
- Qwix's QAT (``QtProvider``, int8 forward, float backward) W8A8 and W4A8, when Qwix is
  installed (``pip install -e '.[qwix]'``; otherwise the rows are skipped with a note);
- two hand-written limits: ``limit int8 fwd + f32 bwd`` (per layer an int8 forward dot of
  the activation's per-tensor codes and weight codes computed once outside the step,
  then two float32 backward dots ``g @ w.T`` and ``x.T @ g`` on the float operands) and
  ``limit int8 fwd + int8 bwd`` (the same forward, and the backward of
  :func:`~jaxcompress.quantization._int8_backward.int8_matmul_grads`: the gradient
  stochastically rounded to int8 twice and two int8 dots). The elementwise work they keep
  as inherent: the activation's absmax, rounding and int8 cast, the int32 rescale, bias,
  ReLU and its mask, the loss, adam. What they leave out: the per-step weight
  quantization (absmax per channel, codes) and any float copy of the quantized weight.

Columns: median ms over interleaved repetitions; ``vs dense`` (step time ratio);
``vs limit`` (to the variant's own limit: float-backward limit for the integer-forward
rows and Qwix, int8 limit for the int8-backward rows); ``of ceiling``: the speed-up over
dense divided by the int8 dot ceiling (1.0 would be a step as much faster than dense as an
int8 dot is than a float32 one; a step with float backward cannot come near it).
Targets on the big MLP (reported, not asserted): integer W8A8 faster than Qwix W8A8 and
within 10% of its limit, checked for both backward choices and for Qwix's own configuration
(``float sym``: symmetric activations, the float-operand backward (``float-bwd``), as Qwix's and the limit's
backward; the default's backward reads a float copy of the quantized weight, which moves more
bytes per step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxcompress as jc
from experiments import ceiling, timing
from experiments.bench_overhead import MODELS, init_mlp, mlp
from jaxcompress import quantization
from jaxcompress.quantization._int8_backward import int8_matmul_grads

LIMIT_F32, LIMIT_I8 = "limit int8 fwd + f32 bwd", "limit int8 fwd + int8 bwd"


def ce(apply):
  return lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()


def our_step(apply, compressor, params, x, y):
  optimizer = optax.adam(1e-3)
  params = jax.tree.map(jnp.copy, params)  # the step donates its state: no sharing between variants
  state = jc.train.init(params, optimizer, compressor)
  step = jax.jit(jc.train.make_step(ce(apply), optimizer, compressor), donate_argnums=0)
  step = step.lower(state, x, y).compile()
  return (lambda s: step(s, x, y)[0]), state


def _activation_codes(a):
  scale = jnp.maximum(jnp.max(jnp.abs(a)), 1e-30) / 127
  return jnp.clip(jnp.round(a / scale), -127, 127).astype(jnp.int8), scale


def limit_dot(int8_backward: bool, key):
  """``x @ w`` with an int8 forward on given weight codes and a float32 or int8 backward."""

  @jax.custom_vjp
  def dot(a, w, codes, w_scale):
    return forward(a, w, codes, w_scale)[0]

  def forward(a, w, codes, w_scale):
    a_codes, a_scale = _activation_codes(a)
    acc = jax.lax.dot_general(a_codes, codes, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    res = (a_codes, a_scale, codes, w_scale) if int8_backward else (a, w)
    return acc.astype(jnp.float32) * (a_scale * w_scale), res

  def backward(res, g):
    if int8_backward:
      a_codes, a_scale, codes, w_scale = res
      da, dw = int8_matmul_grads(g, a_codes, None, a_scale, codes, w_scale, key)
      return da, dw, None, None
    a, w = res
    return g @ w.T, a.T @ g, None, None

  dot.defvjp(forward, backward)
  return dot


def limit_runner(params, x, y, int8_backward: bool):
  """The hand-written limit step (module docstring): weight codes made once, outside the step."""
  codes = {}
  for name, layer in params.items():
    w_scale = jnp.max(jnp.abs(layer["kernel"]), axis=0) / 127
    codes[name] = (jnp.clip(jnp.round(layer["kernel"] / w_scale), -127, 127).astype(jnp.int8), w_scale)
  dot = limit_dot(int8_backward, jax.random.key(0))

  def apply(p, x):
    n = len(p)
    for i in range(1, n + 1):
      layer = p[f"fc{i}"]
      x = dot(x, layer["kernel"], *codes[f"fc{i}"]) + layer["bias"]
      x = jax.nn.relu(x) if i < n else x
    return x

  return our_step(apply, jc.identity(), params, x, y)


class NnxMLP(nnx.Module):
  def __init__(self, params: dict):
    self.layers = nnx.List()
    for i in range(1, len(params) + 1):
      k = params[f"fc{i}"]["kernel"]
      layer = nnx.Linear(k.shape[0], k.shape[1], rngs=nnx.Rngs(0))
      layer.kernel[...] = k
      self.layers.append(layer)

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      x = jax.nn.relu(x) if i < len(self.layers) - 1 else x
    return x


def qwix_step(params, weight_qtype, x, y):
  import qwix

  rules = [qwix.QtRule(module_path=".*", weight_qtype=weight_qtype, act_qtype=jnp.int8)]
  model = qwix.quantize_model(NnxMLP(params), qwix.QtProvider(rules), x)
  graphdef, qparams, rest = nnx.split(model, nnx.Param, ...)
  return our_step(lambda p, x: nnx.merge(graphdef, p, rest)(x), jc.identity(), qparams, x, y)


def training_runners(sizes, x, y, with_qwix):
  """``{name: (runner, limit name or None)}`` of every variant (module docstring)."""
  params = init_mlp(sizes)
  runners = {"dense float32": (our_step(mlp, jc.identity(), params, x, y), None)}
  runners[LIMIT_F32] = (limit_runner(params, x, y, False), None)
  runners[LIMIT_I8] = (limit_runner(params, x, y, True), None)
  runners["ours fake-quant W8A8"] = (our_step(mlp, quantization.qat(8, 8, integer=False), params, x, y), None)
  for bits in (8, 4):
    c = quantization.qat(bits, 8, integer=True)
    runners[f"ours int W{bits}A8"] = (our_step(mlp, c, params, x, y), LIMIT_F32)
  for bits in (8, 4):
    c = quantization.qat(bits, 8, integer=True, backward_operands="float")
    runners[f"ours int W{bits}A8 float-bwd"] = (our_step(mlp, c, params, x, y), LIMIT_F32)
  for bits in (8, 4):  # Qwix's activation quantization: symmetric (absmax) per tensor
    c = quantization.qat(bits, 8, integer=True, backward_operands="float", act_symmetric=True)
    runners[f"ours int W{bits}A8 float sym"] = (our_step(mlp, c, params, x, y), LIMIT_F32)
  for bits in (8, 4):
    c = quantization.qat(bits, 8, integer=True, backward="int8")
    runners[f"ours int8-bwd W{bits}A8"] = (our_step(mlp, c, params, x, y), LIMIT_I8)
  if with_qwix:
    runners["qwix W8A8"] = (qwix_step(params, jnp.int8, x, y), LIMIT_F32)
    runners["qwix W4A8"] = (qwix_step(params, jnp.int4, x, y), LIMIT_F32)
  return runners


def main(argv=None) -> int:
  parser = timing.parser(__doc__)
  args = parser.parse_args(argv)
  try:
    import qwix

    with_qwix, qwix_version = True, qwix.__version__
  except ImportError:
    with_qwix, qwix_version = False, "not installed (pip install -e '.[qwix]' for its rows)"
  print(timing.banner(args.batch, f", qwix {qwix_version}"))
  rng = np.random.default_rng(1)
  for model, sizes in MODELS.items():
    big = max(sizes) >= 1024
    reps = (3 if args.quick else 7) if big else (5 if args.quick else 21)
    inner = 1 if big else (10 if args.quick else 50)
    shapes = ceiling.mlp_shapes(sizes, args.batch)
    ceil = ceiling.int8_dot_ceiling(shapes, reps=3 if args.quick else 7, inner=inner)
    dots = ", ".join(f"{m}x{k}x{n} {s:.2f}x" for (m, k, n), s in zip(shapes, ceil["speedup"]))
    print(f"\n{model}: int8 dot ceiling {ceil['total_speedup']:.2f}x over float32 ({dots})")
    head = f"{'variant':<29} {'ms':>9} {'vs dense':>9} {'vs limit':>9} {'of ceiling':>11}"
    print(head + "\n" + "-" * len(head))
    x = jnp.asarray(rng.normal(size=(args.batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], size=args.batch), jnp.int32)
    variants = training_runners(sizes, x, y, with_qwix)
    times = timing.interleaved({name: r for name, (r, _) in variants.items()}, reps, inner)
    ms = {name: timing.median_ms(t) for name, t in times.items()}
    base = ms["dense float32"]
    for name, (_, limit) in variants.items():
      vs_limit = f"{ms[name] / ms[limit]:>8.3f}x" if limit else f"{'':>9}"
      print(
        f"{name:<29} {ms[name]:>9.3f} {ms[name] / base:>8.3f}x {vs_limit} {base / ms[name] / ceil['total_speedup']:>11.3f}"
      )
    if big and with_qwix:
      for name in ("ours int W8A8", "ours int W8A8 float-bwd", "ours int W8A8 float sym"):
        faster, near = ms[name] < ms["qwix W8A8"], ms[name] <= 1.1 * ms[LIMIT_F32]
        print(
          f"targets: {name} <= 1.1x its limit: {'ok' if near else 'MISS'}; "
          f"faster than qwix W8A8: {'ok' if faster else 'MISS'}"
        )
    if not with_qwix:
      print("(qwix rows skipped: not installed)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
