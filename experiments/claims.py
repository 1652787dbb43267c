"""Published claims the digits rows are compared with, keyed by recipe name (``reproduction.md``).

Each claim is what a paper reports (model, data, metric, number, and where in the paper), and
how its *direction* is checked on the digits: the row's accuracy against a reference row of
the same model (``versus``, the dense baseline unless said otherwise) may fall by at most
``max_drop`` points, and, with ``min_ratio``, the row must be at least that many times smaller
than the dense float32 file (or packed bytes, for rows without a file ratio). The digits are
not the papers' data and the models are smaller, so only the direction is compared, never the
number. A number is given only where it is certain from the paper; otherwise ``number`` is
``None`` and the claim is stated qualitatively. Other rows add theirs by adding an entry.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Claim:
  """One paper's claim about one technique.

  Attributes:
    technique: the family and method, as the table names it.
    reference: authors, year, and the arXiv link.
    where: the table, section or page of the paper that reports it.
    model: the paper's model.
    data: the paper's data set.
    metric: what the number measures.
    number: the paper's figure, verbatim in spirit (``None``: stated qualitatively in ``claim``).
    claim: the claim in words (its direction).
    max_drop: accuracy points the digits row may lose against ``versus`` and still agree.
    min_ratio: the compression the row must reach to agree (``None``: not checked).
    versus: the reference row (``'dense'``, or a control such as ``'ce'``).
  """

  technique: str
  reference: str
  where: str
  model: str
  data: str
  metric: str
  number: str | None
  claim: str
  max_drop: float
  min_ratio: float | None = None
  versus: str = "dense"


DEEP_COMPRESSION = "Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149"
PRUNING = "Han, Pool, Tran & Dally 2015, Learning both Weights and Connections, https://arxiv.org/abs/1506.02626"

CLAIMS: dict[str, Claim] = {
  "deep_compression": Claim(
    "hybrid: prune + k-means + Huffman",
    DEEP_COMPRESSION,
    "Table 1",
    "LeNet-300-100 / LeNet-5",
    "MNIST",
    "size and top-1 error",
    "LeNet-300-100 1070 KB -> 27 KB (40x), error 1.64% -> 1.58%; LeNet-5 1720 KB -> 44 KB (39x), 0.80% -> 0.74%",
    "about 40x smaller with no loss of accuracy",
    max_drop=1.0,
    min_ratio=39.0,
  ),
  "magnitude_90": Claim(
    "pruning: magnitude, retrained",
    PRUNING,
    "Table 1",
    "LeNet-300-100 / LeNet-5",
    "MNIST",
    "parameters and top-1 error",
    "LeNet-300-100 12x fewer weights, error 1.64% -> 1.59%; LeNet-5 12x, 0.80% -> 0.77%",
    "about 92% of the weights pruned with no loss of accuracy",
    max_drop=1.0,
  ),
  "gradual_90": Claim(
    "pruning: gradual (polynomial schedule)",
    "Zhu & Gupta 2017, To prune, or not to prune, https://arxiv.org/abs/1710.01878",
    "Section 5",
    "InceptionV3, MobileNets, LSTMs",
    "ImageNet, PTB, WMT",
    "accuracy at a given sparsity",
    None,
    "gradual pruning reaches high sparsity (75-90%) at a small accuracy loss",
    max_drop=1.0,
  ),
  "int8": Claim(
    "quantization: int8 weights",
    "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference, "
    "https://arxiv.org/abs/1712.05877",
    "Section 4",
    "ResNet, InceptionV3, MobileNets",
    "ImageNet, COCO",
    "top-1 accuracy",
    None,
    "8-bit quantized models stay close to float accuracy",
    max_drop=0.5,
  ),
  "ptq_int8": Claim(
    "quantization: post-training int8 per-channel",
    "Krishnamoorthi 2018, Quantizing deep convolutional networks for efficient inference, "
    "https://arxiv.org/abs/1806.08342",
    "Section 3",
    "MobileNet, ResNet, Inception, NASNet",
    "ImageNet",
    "top-1 accuracy",
    None,
    "per-channel 8-bit post-training weight quantization is close to float",
    max_drop=0.5,
  ),
  "binary_connect": Claim(
    "low-bit: BinaryConnect",
    "Courbariaux, Bengio & David 2015, BinaryConnect, https://arxiv.org/abs/1511.00363",
    "Section 3",
    "MLP",
    "permutation-invariant MNIST",
    "test error",
    None,
    "binary weights during propagations reach near float accuracy on MNIST",
    max_drop=2.0,
  ),
  "twn": Claim(
    "low-bit: ternary weight networks",
    "Li, Zhang & Liu 2016, Ternary Weight Networks, https://arxiv.org/abs/1605.04711",
    "Section 4",
    "LeNet-5, VGG, ResNet-18",
    "MNIST, CIFAR-10, ImageNet",
    "top-1 accuracy",
    None,
    "ternary weights come close to full precision, better than binary",
    max_drop=1.0,
  ),
  "ttq": Claim(
    "low-bit: trained ternary quantization",
    "Zhu, Han, Mao & Dally 2017, Trained Ternary Quantization, https://arxiv.org/abs/1612.01064",
    "Section 5",
    "ResNets, AlexNet",
    "CIFAR-10, ImageNet",
    "top-1 accuracy",
    None,
    "learned ternary scales match or slightly exceed full precision on CIFAR-10 ResNets",
    max_drop=1.0,
  ),
  "lsq_w4a4": Claim(
    "low-bit: learned step size quantization",
    "Esser et al. 2020, Learned Step Size Quantization, https://arxiv.org/abs/1902.08153",
    "Section 3",
    "ResNet, VGG, SqueezeNext",
    "ImageNet",
    "top-1 accuracy",
    None,
    "4-bit weights and activations reach full-precision accuracy",
    max_drop=1.0,
  ),
  "kmeans16": Claim(
    "sharing: k-means weight sharing, centroids fine-tuned",
    DEEP_COMPRESSION,
    "Section 3",
    "AlexNet, VGG-16, LeNets",
    "ImageNet, MNIST",
    "top-1 accuracy",
    None,
    "a few bits per weight (a small shared codebook) with no loss of accuracy",
    max_drop=0.5,
  ),
  "hashed_8": Claim(
    "sharing: HashedNets",
    "Chen, Wilson, Tyree, Weinberger & Chen 2015, Compressing Neural Networks with the Hashing Trick, "
    "https://arxiv.org/abs/1504.04788",
    "Section 6",
    "MLPs",
    "MNIST and variants",
    "test error",
    None,
    "random weight sharing keeps most of the accuracy at 1/8 of the parameters",
    max_drop=2.0,
  ),
  "svd25": Claim(
    "low-rank: truncated SVD of dense layers",
    "Denton, Zaremba, Bruna, LeCun & Fergus 2014, Exploiting Linear Structure Within Convolutional Networks, "
    "https://arxiv.org/abs/1404.0736",
    "Section 5",
    "a large ImageNet CNN",
    "ImageNet",
    "top-1 accuracy",
    None,
    "low-rank approximations of the layers cut their size and time at a loss within about 1%, after fine-tuning",
    max_drop=1.0,
  ),
  "spatial_svd": Claim(
    "low-rank: spatial (separable) decomposition",
    "Jaderberg, Vedaldi & Zisserman 2014, Speeding up Convolutional Neural Networks with Low Rank Expansions, "
    "https://arxiv.org/abs/1405.3866",
    "Section 4",
    "scene text character CNN",
    "ICDAR / text data",
    "accuracy",
    None,
    "rank-separable conv filters give a speed-up at a small (about 1%) accuracy drop",
    max_drop=1.0,
  ),
  "kd": Claim(
    "distillation: Hinton KD",
    "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network, https://arxiv.org/abs/1503.02531",
    "Section 3",
    "MLP 2x800 student, 2x1200 teacher",
    "MNIST",
    "test errors",
    "teacher 67 errors; student alone 146; distilled student 74",
    "a student trained on the teacher's soft targets beats the same student trained on labels alone",
    max_drop=0.0,
    versus="ce",
  ),
}
