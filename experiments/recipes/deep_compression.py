"""Deep Compression end to end: gradual magnitude pruning, then k-means weight sharing of the
survivors with centroid fine-tuning, then Huffman coding of the indices and of the relative
positions, into one file (the main job reports each stage's file: the per-stage table).

The paper's schedule is kept: pruning is trained first (here Zhu & Gupta's gradual schedule
to the target, global magnitude ranking), then the pruned model is clustered and its
centroids fine-tuned (``chain(magnitude(target), kmeans(k))``: the pruner at the same target
keeps exactly the phase-1 mask, and k-means clusters the survivors only, so no zero revives),
then the packed tree is Huffman-coded (``export.huffman``). Biases are 8-bit (``fake_quant(8)``,
the library's "small leaves quantized when asked"): at this scale a float32 bias is as large
as a layer's codes.

Per-layer k: the paper's 8-bit conv / 5-bit fc indices serve layers of 10^4..10^6 survivors;
here a layer keeps 30..2000 weights, where a 256- or 32-entry float32 codebook costs more than
its extra index bits save, so k = 16 (4-bit indices) for the big layers and k = 4 for the
smallest kernels (LeNet-5's conv1, 54 weights, and the classifiers). Relative positions use the
gap width that minimizes the stored size (``SparseArray``, skip codes instead of the paper's
filler zeros); Huffman then codes the gaps.

Han, Mao & Dally 2016, "Deep Compression", https://arxiv.org/abs/1510.00149 (Table 1:
LeNet-300-100 40x, LeNet-5 39x on MNIST at no accuracy loss).
"""

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning, quantization

# model: (global sparsity target, {kernel regex: clusters})
SETTINGS = {
  "lenet300100": (0.95, {"fc[12]/kernel": 16, "fc3/kernel": 4}),
  "lenet5": (0.93, {"conv2/kernel|fc[12]/kernel": 16, "conv1/kernel|fc3/kernel": 4}),
}
KERNELS = ".*kernel"
MIN_SAVING = 8  # bytes a Huffman-coded stream must save: its share of the (format 3, zlib-compressed) header


def model_name(params):
  return "lenet5" if "conv1" in params else "lenet300100"


def build(params, trainer):
  target, clusters = SETTINGS[model_name(params)]
  epochs = trainer.epochs(60)
  end = max(2, int(0.6 * epochs * trainer.steps_per_epoch))
  schedule = pruning.polynomial_sparsity(
    target, begin_step=0, end_step=end, frequency=max(1, trainer.steps_per_epoch // 2)
  )
  prune = FineTune(pruning.magnitude(schedule, scope="global", where=KERNELS), epochs=epochs, lr=3e-3, stage="pruned")
  quantizers = [quantization.kmeans(k, iterations=30, where=w) for w, k in clusters.items()]
  biases = quantization.fake_quant(8, where=".*bias")
  compressor = jc.chain(pruning.magnitude(target, scope="global", where=KERNELS), *quantizers, biases)
  return FineTune(
    compressor,
    epochs=trainer.epochs(30),
    lr=1e-3,
    first=prune,
    stage="quantized",
    huffman=MIN_SAVING,
    huffman_block="auto",
  )


RECIPE = Recipe(
  "deep_compression",
  build,
  order=54,
  description="Deep Compression: gradual prune -> k-means of survivors -> Huffman, one file",
)
