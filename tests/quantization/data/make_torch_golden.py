"""Writes torch_fake_quant.json: PyTorch's fake quantization, observers and gradients on fixed inputs.

The tests in ``tests/quantization/test_uniform.py`` compare jaxcompress with these values. Torch
is not a dependency of this project (its package-index wheels pull gigabytes of CUDA libraries):
regenerate by hand in a throwaway environment with a CPU build of torch,

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install numpy torch --index-url https://download.pytorch.org/whl/cpu
  /tmp/torchenv/bin/python tests/quantization/data/make_torch_golden.py

and commit the JSON with the torch version it records.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch


def _inputs() -> np.ndarray:
  """4 x 6 float32: ties of the 0.5 step in the first row, normal x 2.5 elsewhere."""
  x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32) * 2.5
  x[0, :4] = [0.25, 0.75, -0.25, 1.25]  # halfway between codes at scale 0.5: round half to even
  x[2, 0] = -6.975  # outside every 4-bit range below
  return x


def _fake_quant(x, scale, zero_point, qmin, qmax):
  return torch.fake_quantize_per_tensor_affine(torch.tensor(x), scale, zero_point, qmin, qmax).numpy()


def _tensor_cases(x):
  for scale, zp, lo, hi in [
    (0.5, 0, -128, 127),
    (0.05, 3, -8, 7),
    (0.1, 128, 0, 255),
    (0.37, 0, -1, 1),
    (0.02, -5, -32768, 32767),
  ]:
    yield {
      "kind": "tensor",
      "scale": scale,
      "zero_point": zp,
      "qmin": lo,
      "qmax": hi,
      "y": _fake_quant(x, scale, zp, lo, hi),
    }


def _channel_case(x):
  amax = np.abs(x).max(axis=0)
  scale = (amax / 7.5 + 0.05).astype(np.float32)
  zp = np.array([2, 1, 1, -1, 3, -3], np.int32)
  y = torch.fake_quantize_per_channel_affine(torch.tensor(x), torch.tensor(scale), torch.tensor(zp), 1, -8, 7)
  return {"kind": "channel", "axis": 1, "scale": scale, "zero_point": zp, "qmin": -8, "qmax": 7, "y": y.numpy()}


def _learnable_cases(x):
  g = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
  for scale, zp, lo, hi in [(0.5, 0.0, -8, 7), (0.2, 2.0, 0, 15)]:
    xt = torch.tensor(x, requires_grad=True)
    s = torch.tensor([scale], requires_grad=True)
    z = torch.tensor([zp], requires_grad=True)
    y = torch._fake_quantize_learnable_per_tensor_affine(xt, s, z, lo, hi, 1.0)
    (y * torch.tensor(g)).sum().backward()
    yield {
      "kind": "learnable", "scale": scale, "zero_point": zp, "qmin": lo, "qmax": hi, "g": g, "y": y.detach().numpy(),
      "dx": xt.grad.numpy(), "dscale": float(s.grad[0]), "dzero_point": float(z.grad[0]),
    }  # fmt: skip


def _observer_cases(x):
  """MinMaxObserver / PerChannelMinMaxObserver qparams on x, and x fake-quantized with them."""
  ao = torch.ao.quantization
  configs = [
    ("per_tensor_symmetric", torch.qint8, None, None, None),
    ("per_tensor_symmetric", torch.qint8, -8, 7, None),
    ("per_tensor_affine", torch.quint8, None, None, None),
    ("per_tensor_affine", torch.qint8, None, None, None),
    ("per_channel_symmetric", torch.qint8, None, None, 1),
    ("per_channel_affine", torch.quint8, 0, 15, 1),
  ]
  for name, dtype, lo, hi, axis in configs:
    qscheme = getattr(torch, name)
    kwargs = {"dtype": dtype, "qscheme": qscheme}
    if lo is not None:
      kwargs.update(quant_min=lo, quant_max=hi)
    obs = ao.PerChannelMinMaxObserver(ch_axis=axis, **kwargs) if axis is not None else ao.MinMaxObserver(**kwargs)
    obs(torch.tensor(x))
    scale, zp = obs.calculate_qparams()
    qmin, qmax = obs.quant_min, obs.quant_max
    if axis is None:
      y = torch.fake_quantize_per_tensor_affine(torch.tensor(x), float(scale), int(zp), qmin, qmax)
    else:
      y = torch.fake_quantize_per_channel_affine(torch.tensor(x), scale, zp.to(torch.int32), axis, qmin, qmax)
    yield {
      "kind": "observer", "qscheme": name, "symmetric": "symmetric" in name, "axis": axis, "qmin": qmin,
      "qmax": qmax, "scale": scale.numpy(), "zero_point": zp.numpy(), "y": y.numpy(),
    }  # fmt: skip


def _gradient_cases():
  """The straight-through gradient at and around the ends of the code range, ties included."""
  for scale, zp, lo, hi in [(0.5, 0, -128, 127), (0.25, 3, -8, 7), (0.1, 0, 0, 255)]:
    v = np.array([lo - 1, lo - 0.5, lo - 0.49, lo, hi, hi + 0.49, hi + 0.5, hi + 0.51, hi + 1], np.float32)
    x = ((v - zp) * scale).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.fake_quantize_per_tensor_affine(xt, scale, zp, lo, hi).sum().backward()
    yield {"kind": "gradient", "scale": scale, "zero_point": zp, "qmin": lo, "qmax": hi, "x": x, "dx": xt.grad.numpy()}


def _jsonable(v):
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, dict):
    return {k: _jsonable(u) for k, u in v.items()}
  if isinstance(v, list):
    return [_jsonable(u) for u in v]
  return v


def main() -> None:
  x = _inputs()
  cases = [*_tensor_cases(x), _channel_case(x), *_learnable_cases(x), *_observer_cases(x), *_gradient_cases()]
  out = {"source": f"torch {torch.__version__}", "x": x, "cases": cases}
  path = pathlib.Path(__file__).with_name("torch_fake_quant.json")
  path.write_text(json.dumps(_jsonable(out)) + "\n")
  print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
  main()
