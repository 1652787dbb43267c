"""Header overhead of ``export.save`` (formats 2, 3, 4 and 5 side by side), and what Huffman coding saves,
on LeNet-300-100 packed with Deep Compression's pruning + clustering
(``chain(magnitude(0.9), kmeans(16))``).

Prints the file's bytes split into safetensors' 8-byte length, its JSON header and the tensor
data, before and after ``export.huffman``, in both formats (format 3's tree document is
zlib-compressed at the start of its data tensor: "data" then counts it), and one line per
integer stream (raw, coded, Shannon bound). Format 5's data starts with its 32-byte digest, the
document's length and its deflated document ("data" counts them too).

  python -m experiments.bench_header
"""

import json
import os
import struct
import tempfile

import jaxcompress as jc
from experiments import models
from jaxcompress import export, pruning, quantization


def split(path):
  """(length prefix, JSON header, data) bytes of a safetensors file, and the parsed header."""
  with open(path, "rb") as f:
    blob = f.read()
  (n,) = struct.unpack("<Q", blob[:8])
  return 8, n, len(blob) - 8 - n, json.loads(blob[8 : 8 + n])


def main():
  _, _, params = models.build("lenet300100", 0)
  c = jc.chain(pruning.magnitude(0.9), quantization.kmeans(16, iterations=30))
  packed = c.pack(*c.init(params))
  coded, reports = export.huffman(packed, with_report=True)
  worth = export.huffman(packed, min_saving=8)  # what a format-3 file gains, net of its header share
  with tempfile.TemporaryDirectory() as d:
    for version in (2, 3, 4, 5):
      for name, tree in (("prune90+kmeans16", packed), ("+ huffman", coded), ("+ huffman, 8 B", worth)):
        path = os.path.join(d, "m.safetensors")
        size = export.save(path, tree, version=version)
        prefix, header, data, parsed = split(path)
        leaf_bytes = jc.accounting.report(tree).bytes
        print(
          f"v{version} {name:18s} file {size:7d} B = prefix {prefix} + header {header:5d} "
          f"({100 * header / size:4.1f}%; {len(parsed) - 1} tensor entries) + data {data:6d} "
          f"(leaves' nbytes {leaf_bytes}; overhead {size - leaf_bytes} B)"
        )
  print(f"{'stream':36s} {'raw':>6s} {'coded':>6s} {'bound':>8s} used")
  for r in reports:
    print(f"{r.path:36s} {r.raw_bytes:6d} {r.coded_bytes:6d} {r.entropy_bytes:8.1f} {r.coded}")


if __name__ == "__main__":
  main()
