"""Deep Compression end to end: gradual magnitude pruning, then k-means weight sharing of the
survivors with centroid fine-tuning, then Huffman coding of the indices and of the relative
positions, into one file (the main job reports each stage's file: the per-stage table).

The paper's schedule is kept: pruning is trained first (here Zhu & Gupta's gradual schedule
to the target, global magnitude ranking), then the pruned model is clustered and its
centroids fine-tuned (``chain(magnitude(target), kmeans(k))``: the pruner at the same target
keeps exactly the phase-1 mask, and k-means clusters the survivors only, so no zero revives),
then the packed tree is Huffman-coded (``export.huffman``).

Per-layer k: the paper's 8-bit conv / 5-bit fc indices serve layers of 10^4..10^6 survivors;
here a layer keeps 30..2000 weights, where a 256- or 32-entry codebook costs more than its
extra index bits save, so k = 16 (4-bit indices) for the big layers (LeNet-300-100's fc1/fc2,
LeNet-5's fc1/fc2), k = 8 for LeNet-5's conv1, conv2 and classifier (each keeps 36..130 weights;
k = 4 on conv1 cost ~2 points, one seed) and k = 4 for LeNet-300-100's classifier. Codebooks are
stored in float16 (``kmeans(codebook_dtype='float16')``: the fine-tuned centroids are float16
values, rounded in the forward pass with a straight-through gradient; the paper keeps float32,
the library's default): at this size the codebooks weigh as much as a layer's indices.
Relative positions use the gap width that minimizes the stored size (``SparseArray``, skip codes
instead of the paper's filler zeros); Huffman then codes the gaps and indices (``block='auto'``:
per stream the smallest of the paper's single-symbol code, pairs, and the extended codes, blocks
of 1..5 symbols under a stored single-symbol model whose table is 5..30 bytes, which at this size
win: within 1% of ``n * H`` where single symbols are 0.7..16% over; and 4 bytes, measured, is
what a coded stream costs format 5's header, so ``MIN_SAVING = 4``).

Sparsity: LeNet-300-100 is ranked globally (95%). LeNet-5 is pruned per layer, as the paper
does (Table 4: conv1 66%, conv2 12%, fc1 8%, fc2 19% of weights kept): conv1 keeps 66%, conv2
15%, fc1 6%, fc2 3.5% and the classifier 15% (this fc1 is 64x120, its fc2 120x84 the largest
layer).

Measured on the digits (3 seeds; bytes of the file on disk, format 5, against the dense float32
file in the same format; ``python -m experiments.digits --recipes deep_compression --seeds 3``):
LeNet-5 1,907..1,925 B (41.2..41.6x, mean 1,915 B, 41.4x) at -0.65 points (95.65% vs dense
96.30%); LeNet-300-100 3,417..3,447 B (mean 3,433 B, 59.0x) at 0.00 points (97.87% vs 97.87%).
With single-symbol and pair codes only (and ``MIN_SAVING = 8``): LeNet-5 1,944..1,963 B (mean
1,951 B, 40.6x), LeNet-300-100 3,452..3,492 B (mean 3,473 B, 58.3x). Before (float32
codebooks, k = 16 on conv2/fc3, fc2 4% kept, format 3): LeNet-5 2,352 B (33.7x) at -0.47. What
each lever took off the LeNet-5 file (the same trained model re-saved, seed 0): format 5's
header 160 B (497 -> 337 B), float16 codebooks 140 B, k = 8 on conv2/fc3 ~60 B, fc2 3.5% kept
the rest. Also measured (3 seeds): global 93% 31x at -1.1 points; fc1 5% / fc2 3.5% 42x at
-0.83; fc1 5% / fc2 4% 41x at -2.1 (the digits' 360 test images make a point 3.6 images).
The biases are 8-bit (``fake_quant(8)``, the library's "small leaves quantized when asked"):
at this scale a float32 bias is as large as a layer's codes.

Han, Mao & Dally 2016, "Deep Compression", https://arxiv.org/abs/1510.00149 (Table 1:
LeNet-300-100 40x, LeNet-5 39x on MNIST at no accuracy loss).
"""

import jaxcompress as jc
from experiments.recipes.base import FineTune, Recipe
from jaxcompress import pruning, quantization

# model: (global sparsity target, or {kernel path: sparsity} per layer; {kernel regex: clusters})
SETTINGS = {
  "lenet300100": (0.95, {"fc[12]/kernel": 16, "fc3/kernel": 4}),
  "lenet5": (
    {"conv1/kernel": 0.34, "conv2/kernel": 0.85, "fc1/kernel": 0.94, "fc2/kernel": 0.965, "fc3/kernel": 0.85},
    {"fc[12]/kernel": 16, "conv[12]/kernel|fc3/kernel": 8},
  ),
}
KERNELS = ".*kernel"
MIN_SAVING = 4  # bytes a Huffman-coded stream must save: its share of the file's (deflated) header (~3-4 B, format 5)
CODEBOOK_DTYPE = "float16"  # the paper's float32 codebooks are the library's default


def model_name(params):
  return "lenet5" if "conv1" in params else "lenet300100"


def _pruner(target, schedule):
  """Global magnitude pruning to a float target, or per-layer targets ``{kernel path: sparsity}``."""
  if isinstance(target, float):
    return pruning.magnitude(schedule(target), scope="global", where=KERNELS)
  overrides = {path: schedule(t) for path, t in target.items()}
  return pruning.magnitude(0.0, where=KERNELS, allocation=pruning.Allocation(overrides=overrides))


def build(params, trainer):
  target, clusters = SETTINGS[model_name(params)]
  epochs = trainer.epochs(60)
  end = max(2, int(0.6 * epochs * trainer.steps_per_epoch))
  frequency = max(1, trainer.steps_per_epoch // 2)
  schedule = lambda t: pruning.polynomial_sparsity(t, begin_step=0, end_step=end, frequency=frequency)
  quantizers = [
    quantization.kmeans(k, iterations=30, codebook_dtype=CODEBOOK_DTYPE, where=w) for w, k in clusters.items()
  ]
  biases = quantization.fake_quant(8, where=".*bias")
  prune = FineTune(_pruner(target, schedule), epochs=epochs, lr=3e-3, stage="pruned")
  # the pruner at the final target keeps exactly phase 1's mask (the survivors are its top-k)
  compressor = jc.chain(_pruner(target, lambda t: t), *quantizers, biases)
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
