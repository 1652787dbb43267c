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
    versus_model: the model whose ``versus`` row is the reference (``None``: the row's own
      model; ``'lenet5'`` compares the compact networks with LeNet-5's dense row).
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
  versus_model: str | None = None


DEEP_COMPRESSION = "Han, Mao & Dally 2016, Deep Compression, https://arxiv.org/abs/1510.00149"
PRUNING = "Han, Pool, Tran & Dally 2015, Learning both Weights and Connections, https://arxiv.org/abs/1506.02626"
HINTON = "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network, https://arxiv.org/abs/1503.02531"
ADMM = (
  "Leng, Dou, Li, Zhu & Jin 2018, Extremely Low Bit Neural Network: Squeeze the Last Bit Out with ADMM, "
  "https://arxiv.org/abs/1707.09870"
)
ZHUANG = (
  "Zhuang, Shen, Tan, Liu & Reid 2018, Towards Effective Low-bitwidth Convolutional Neural Networks, "
  "https://arxiv.org/abs/1711.00205"
)
KRISHNAMOORTHI = "Krishnamoorthi 2018, Quantizing deep convolutional networks for efficient inference, https://arxiv.org/abs/1806.08342"
JACOB = (
  "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference, "
  "https://arxiv.org/abs/1712.05877"
)
HAWQ_V2 = "Dong et al. 2020, HAWQ-V2: Hessian Aware trace-Weighted Quantization, https://arxiv.org/abs/1911.03852"
FILTERS = (
  "Li, Kadav, Durdanovic, Samet & Graf 2017, Pruning Filters for Efficient ConvNets, https://arxiv.org/abs/1608.08710"
)
TUCKER = (
  "Kim et al. 2016, Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile Applications, "
  "https://arxiv.org/abs/1511.06530"
)
SINDHWANI = (
  "Sindhwani, Sainath & Kumar 2015, Structured Transforms for Small-Footprint Deep Learning, "
  "https://arxiv.org/abs/1510.01722"
)

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
    "abstract",
    "InceptionV3, MobileNets, LSTMs",
    "ImageNet, PTB, WMT",
    "accuracy at a given sparsity",
    "up to 10x fewer non-zero parameters with minimal loss in accuracy",
    "gradual pruning of a large model reaches high sparsity at a small accuracy loss (and beats a small dense model of the same size)",
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
  "kd_conv": Claim(
    "distillation: Hinton KD, conv student",
    HINTON,
    "Section 3",
    "MLP 2x800 student, 2x1200 teacher",
    "MNIST",
    "test errors",
    "teacher 67 errors; student alone 146; distilled student 74",
    "a student trained on the teacher's soft targets beats the same student trained on labels alone",
    max_drop=0.0,
    versus="ce_conv",
  ),
  "fitnets": Claim(
    "distillation: FitNets hints, then KD",
    "Romero et al. 2015, FitNets: Hints for Thin Deep Nets, https://arxiv.org/abs/1412.6550",
    "abstract",
    "deep thin student, wider teacher",
    "CIFAR-10",
    "accuracy",
    "a student with almost 10.4x fewer parameters outperforms its larger teacher on CIFAR-10",
    "hints from the teacher's intermediate layer, beyond its outputs, improve the student's training and final accuracy",
    max_drop=0.0,
    versus="kd_conv",
  ),
  "dkd": Claim(
    "distillation: decoupled KD",
    "Zhao et al. 2022, Decoupled Knowledge Distillation, https://arxiv.org/abs/2203.08679",
    "abstract",
    "teacher-student CNN pairs",
    "CIFAR-100, ImageNet, MS-COCO",
    "top-1 accuracy",
    None,
    "the classical KD loss couples its target and non-target parts and suppresses the latter; decoupled, logit distillation does better",
    max_drop=0.0,
    versus="kd",
  ),
  "dist": Claim(
    "distillation: DIST (relations, not exact match)",
    "Huang, You, Wang, Qian & Xu 2022, Knowledge Distillation from A Stronger Teacher, https://arxiv.org/abs/2205.10536",
    "abstract",
    "various architectures and sizes, with strong teachers",
    "classification, detection, segmentation",
    "top-1 accuracy",
    None,
    "matching the teacher's inter- and intra-class relations beats exact KL matching of its predictions (the paper's case: a much stronger teacher)",
    max_drop=0.0,
    versus="kd",
  ),
  "inq5": Claim(
    "low-bit: incremental network quantization (powers of two)",
    "Zhou, Yao, Guo, Xu & Chen 2017, Incremental Network Quantization, https://arxiv.org/abs/1702.03044",
    "abstract",
    "AlexNet, VGG-16, GoogleNet, ResNets",
    "ImageNet",
    "top-1 / top-5 accuracy",
    None,
    "at 5 bits (powers of two or zero) the quantized models are more accurate than their 32-bit float references",
    max_drop=0.5,
  ),
  "admm_ternary": Claim(
    "low-bit: ADMM-trained ternary weights",
    ADMM,
    "abstract",
    "CNNs for recognition and detection",
    "image recognition, object detection",
    "top-1 accuracy, mAP",
    None,
    "decoupling the weights from the discrete constraint by ADMM is more effective than earlier extremely-low-bit methods",
    max_drop=0.0,
    versus="twn",
  ),
  "admm_pot3": Claim(
    "low-bit: ADMM-trained power-of-two weights",
    ADMM,
    "abstract",
    "CNNs for recognition and detection",
    "image recognition, object detection",
    "top-1 accuracy, mAP",
    None,
    "decoupling the weights from the discrete constraint by ADMM is more effective than earlier extremely-low-bit methods",
    max_drop=0.0,
    versus="inq3",
  ),
  "elq_ternary": Claim(
    "low-bit: explicit loss-error-aware quantization",
    "Zhou, Yao, Wang & Chen 2018, Explicit Loss-Error-Aware Quantization for Low-Bit Deep Neural Networks, CVPR 2018",
    "abstract",
    "fully and non-fully convolutional CNN families",
    "ImageNet",
    "top-1 accuracy",
    None,
    "ternary and binary weights approximate the 32-bit float models without noticeable loss of accuracy",
    max_drop=1.0,
  ),
  "hwgq_w1a2": Claim(
    "low-bit: half-wave Gaussian quantization, W1A2",
    "Cai, He, Sun & Vasconcelos 2017, Deep Learning with Low Precision by Half-wave Gaussian Quantization, "
    "https://arxiv.org/abs/1702.00953",
    "abstract",
    "AlexNet, ResNet, GoogLeNet, VGG-Net",
    "ImageNet",
    "top-1 accuracy",
    None,
    "binary weights and 2-bit activations come much closer to full precision than earlier low-precision networks",
    max_drop=2.0,
  ),
  "lr_nets_ternary": Claim(
    "low-bit: LR-Nets (local reparameterization), ternary",
    "Shayer, Levi & Fetaya 2018, Learning Discrete Weights Using the Local Reparameterization Trick, "
    "https://arxiv.org/abs/1710.07739",
    "abstract",
    "binary and ternary CNNs",
    "MNIST, CIFAR-10, ImageNet",
    "test accuracy",
    None,
    "training the weights' discrete distributions reaches state-of-the-art binary and ternary results on most benchmarks",
    max_drop=0.0,
    versus="twn",
  ),
  "relaxed_w4a4": Claim(
    "low-bit: relaxed quantization, W4A4",
    "Louizos, Reisser, Blankevoort, Gavves & Welling 2019, Relaxed Quantization for Discretized Neural Networks, "
    "https://arxiv.org/abs/1810.01875",
    "abstract",
    "classifiers",
    "MNIST, CIFAR-10, ImageNet",
    "test accuracy",
    None,
    "a differentiable relaxation of the quantization grid trains networks that can be discretized without loss of performance",
    max_drop=1.0,
  ),
  "zhuang_pq_w4a4": Claim(
    "low-bit: progressive quantization (Zhuang et al.), W4A4",
    ZHUANG,
    "abstract",
    "AlexNet, ResNet-50",
    "CIFAR-100, ImageNet",
    "top-1 accuracy",
    None,
    "a 4-bit network (weights and activations) trained this way shows no drop against its full-precision counterpart",
    max_drop=1.0,
  ),
  "zhuang_pq_guided_w4a4": Claim(
    "low-bit: progressive quantization, guided (Zhuang et al.), W4A4",
    ZHUANG,
    "abstract",
    "AlexNet, ResNet-50",
    "CIFAR-100, ImageNet",
    "top-1 accuracy",
    None,
    "a 4-bit network (weights and activations) trained this way shows no drop against its full-precision counterpart",
    max_drop=1.0,
  ),
  "xnor": Claim(
    "low-bit: binary-weight networks (XNOR-Net's scaling)",
    "Rastegari, Ordonez, Redmon & Farhadi 2016, XNOR-Net, https://arxiv.org/abs/1603.05279",
    "abstract",
    "AlexNet",
    "ImageNet",
    "top-1 accuracy",
    "the Binary-Weight-Network AlexNet is only 2.9% below full-precision AlexNet (top-1)",
    "binary weights with a per-filter scale stay within a few points of full precision",
    max_drop=2.9,
  ),
  "lsq_w2a2": Claim(
    "low-bit: learned step size quantization, W2A2",
    "Esser et al. 2020, Learned Step Size Quantization, https://arxiv.org/abs/1902.08153",
    "abstract",
    "a variety of architectures",
    "ImageNet",
    "top-1 accuracy",
    None,
    "at 2, 3 and 4 bits LSQ beats the earlier quantization methods (3-bit models reach full precision)",
    max_drop=0.0,
    versus="zhuang_pq_w2a2",
  ),
  "value_aware4": Claim(
    "quantization: value-aware (outliers in high precision)",
    "Park, Yoo & Vajda 2018, Value-aware Quantization for Training and Inference of Neural Networks, "
    "https://arxiv.org/abs/1804.07802",
    "abstract",
    "Inception-v3, ResNet-101, DenseNet-121",
    "ImageNet",
    "top-1 accuracy",
    "4-bit weights and activations with 1% 16-bit data: within 1% top-1 accuracy drop",
    "a few large values kept in high precision let 4-bit quantization stay within about a point of full precision",
    max_drop=1.0,
  ),
  "ptq_w8a8": Claim(
    "quantization: post-training W8A8",
    KRISHNAMOORTHI,
    "abstract",
    "a wide variety of CNNs",
    "ImageNet",
    "top-1 accuracy",
    "per-channel 8-bit weights and per-layer 8-bit activations, post-training: within 2% of floating point",
    "8-bit weights and activations without training stay close to float",
    max_drop=2.0,
  ),
  "served_w8a8": Claim(
    "quantization: post-training W8A8, integer matmuls",
    KRISHNAMOORTHI,
    "abstract",
    "a wide variety of CNNs",
    "ImageNet",
    "top-1 accuracy",
    "per-channel 8-bit weights and per-layer 8-bit activations, post-training: within 2% of floating point",
    "8-bit weights and activations without training stay close to float",
    max_drop=2.0,
  ),
  "bn_served8_folded": Claim(
    "quantization: post-training W8A8 of the BatchNorm-folded net, integer ops",
    KRISHNAMOORTHI,
    "abstract",
    "a wide variety of CNNs",
    "ImageNet",
    "top-1 accuracy",
    "per-channel 8-bit weights and per-layer 8-bit activations, post-training: within 2% of floating point",
    "8-bit weights and activations without training stay close to float",
    max_drop=2.0,
  ),
  "bn_qat8_folded": Claim(
    "quantization: int8 QAT of the BatchNorm-folded net",
    JACOB,
    "abstract",
    "MobileNets",
    "ImageNet",
    "accuracy against latency",
    None,
    "training co-designed with the integer-only scheme preserves the end-to-end accuracy after quantization",
    max_drop=1.0,
  ),
  "qat_w8a8": Claim(
    "quantization: int8 QAT of a MobileNet, integer-only inference",
    JACOB,
    "abstract",
    "MobileNets",
    "ImageNet",
    "accuracy against latency",
    None,
    "training co-designed with the integer-only scheme preserves the end-to-end accuracy after quantization, "
    "even on MobileNets",
    max_drop=1.0,
    versus="from_scratch",
  ),
  "mixed_hawq_3bit": Claim(
    "quantization: HAWQ-V2 mixed precision",
    HAWQ_V2,
    "abstract",
    "Inception-V3, ResNet-50, SqueezeNext; a COCO detector",
    "ImageNet",
    "top-1 accuracy at model size",
    "ResNet-50 at 7.99 MB with 75.92% top-1; on COCO 2.6 mAP above direct uniform quantization at a smaller size",
    "bits chosen per layer by the Hessian trace beat uniform bits at the same size",
    max_drop=0.0,
    versus="int3",
  ),
  "mixed_hawq_4bit": Claim(
    "quantization: HAWQ-V2 mixed precision",
    HAWQ_V2,
    "abstract",
    "Inception-V3, ResNet-50, SqueezeNext; a COCO detector",
    "ImageNet",
    "top-1 accuracy at model size",
    "ResNet-50 at 7.99 MB with 75.92% top-1; on COCO 2.6 mAP above direct uniform quantization at a smaller size",
    "bits chosen per layer by the Hessian trace beat uniform bits at the same size",
    max_drop=0.0,
    versus="int4",
  ),
  "nm_2_4": Claim(
    "pruning: 2:4 semi-structured sparsity",
    "Mishra et al. 2021, Accelerating Sparse Deep Neural Networks, https://arxiv.org/abs/2104.08378",
    "abstract",
    "a wide range of vision, detection, translation and language models",
    "many tasks",
    "task accuracy",
    None,
    "2:4 sparsity (50%) with the paper's retraining workflow maintains accuracy",
    max_drop=1.0,
  ),
  "rigl_90": Claim(
    "pruning: RigL (dynamic sparse training)",
    "Evci, Gale, Menick, Castro & Elsen 2020, Rigging the Lottery, https://arxiv.org/abs/1911.11134",
    "abstract",
    "ResNet-50, MobileNet v1/v2, WideResNets, RNNs",
    "ImageNet, CIFAR-10, WikiText-103",
    "top-1 accuracy at a sparsity",
    None,
    "a fixed parameter count throughout training, without sacrificing accuracy relative to dense-to-sparse pruning",
    max_drop=1.0,
    versus="magnitude_90",
  ),
  "lottery_90": Claim(
    "pruning: lottery ticket (iterative magnitude pruning, rewinding)",
    "Frankle & Carbin 2019, The Lottery Ticket Hypothesis, https://arxiv.org/abs/1803.03635",
    "abstract",
    "fully connected, convolutional and residual nets",
    "MNIST, CIFAR-10",
    "test accuracy",
    "winning tickets less than 20% of the size of the original networks",
    "the pruned subnetwork, rewound and retrained, reaches accuracy comparable to the dense network",
    max_drop=1.0,
  ),
  "channels_50": Claim(
    "pruning: filters by L1 norm, removed, retrained",
    FILTERS,
    "abstract",
    "VGG-16, ResNet-110",
    "CIFAR-10",
    "inference cost and accuracy",
    "inference cost cut by up to 34% (VGG-16) and 38% (ResNet-110), close to the original accuracy after retraining",
    "removing whole filters and retraining regains close to the original accuracy",
    max_drop=1.0,
  ),
  "compact_channels_50": Claim(
    "pruning: filters by L1 norm, removed, retrained (ShuffleNetV2)",
    FILTERS,
    "abstract",
    "VGG-16, ResNet-110",
    "CIFAR-10",
    "inference cost and accuracy",
    "inference cost cut by up to 34% (VGG-16) and 38% (ResNet-110), close to the original accuracy after retraining",
    "removing whole filters and retraining regains close to the original accuracy",
    max_drop=1.0,
    versus="from_scratch",
  ),
  "tucker2": Claim(
    "low-rank: Tucker-2 of conv kernels, fine-tuned",
    TUCKER,
    "abstract",
    "AlexNet, VGG-S, GoogLeNet, VGG-16",
    "ImageNet",
    "accuracy, size, runtime, energy",
    None,
    "Tucker-2 decomposition (ranks by VBMF) and fine-tuning cut size, runtime and energy at a small loss in accuracy",
    max_drop=1.0,
  ),
  "tucker2_vbmf": Claim(
    "low-rank: Tucker-2 at VBMF's ranks, fine-tuned",
    TUCKER,
    "abstract",
    "AlexNet, VGG-S, GoogLeNet, VGG-16",
    "ImageNet",
    "accuracy, size, runtime, energy",
    None,
    "Tucker-2 decomposition (ranks by VBMF) and fine-tuning cut size, runtime and energy at a small loss in accuracy",
    max_drop=1.0,
  ),
  "cp": Claim(
    "low-rank: CP decomposition of a conv kernel, fine-tuned",
    "Lebedev, Ganin, Rakhuba, Oseledets & Lempitsky 2015, Speeding-up Convolutional Neural Networks Using Fine-tuned "
    "CP-Decomposition, https://arxiv.org/abs/1412.6553",
    "abstract",
    "36-class character CNN; AlexNet",
    "character classification; ImageNet",
    "accuracy, CPU speed-up",
    "8.5x CPU speed-up of the character CNN at a 1% accuracy drop (91% -> 90%)",
    "a fine-tuned CP decomposition of the conv kernels costs about a point of accuracy",
    max_drop=1.0,
  ),
  "circulant": Claim(
    "structured: circulant projections",
    "Cheng, Yu, Feris, Kumar, Choudhary & Chang 2015, An exploration of parameter redundancy in deep networks with "
    "circulant projections, https://arxiv.org/abs/1502.03436",
    "abstract",
    "fully connected layers of CNNs",
    "three standard data sets",
    "error rate",
    None,
    "circulant fully connected layers (O(d) storage) raise the error rate only minimally",
    max_drop=1.0,
  ),
  "toeplitz": Claim(
    "structured: Toeplitz layers",
    SINDHWANI,
    "abstract",
    "keyword-spotting DNNs",
    "mobile speech recognition",
    "accuracy and compression",
    "nearly the performance of the state of the art at more than 3.5-fold compression",
    "low-displacement-rank (Toeplitz-like) layers keep nearly all the accuracy at several-fold compression",
    max_drop=1.0,
    min_ratio=3.5,
  ),
  "ldr4": Claim(
    "structured: Toeplitz-like, displacement rank 4",
    SINDHWANI,
    "abstract",
    "keyword-spotting DNNs",
    "mobile speech recognition",
    "accuracy and compression",
    "nearly the performance of the state of the art at more than 3.5-fold compression",
    "low-displacement-rank (Toeplitz-like) layers keep nearly all the accuracy at several-fold compression",
    max_drop=1.0,
    min_ratio=3.5,
  ),
  "from_scratch": Claim(
    "compact architectures (SqueezeNet's claim)",
    "Iandola et al. 2016, SqueezeNet, https://arxiv.org/abs/1602.07360",
    "abstract",
    "SqueezeNet against AlexNet",
    "ImageNet",
    "top-1 / top-5 accuracy",
    "AlexNet-level accuracy on ImageNet with 50x fewer parameters",
    "a compact architecture reaches a larger network's accuracy with far fewer parameters (here against LeNet-5)",
    max_drop=1.0,
    versus_model="lenet5",
  ),
}
