"""Parameter sharing: many weights stand for few stored numbers.

K-means weight sharing with centroid fine-tuning (Han et al. 2016) is the quantization
family's :func:`~jaxcompress.quantization.kmeans`, re-exported here; HashedNets
(:func:`hashed`), block-circulant (:func:`circulant`), Toeplitz (:func:`toeplitz`) and
Toeplitz-like low-displacement-rank (:func:`ldr`) layers, and cross-layer sharing
(:func:`cross_layer`); :func:`serve` runs packed structured kernels through their FFT
products.
"""

from jaxcompress.quantization._kmeans import kmeans
from jaxcompress.sharing._circulant import (
  CirculantLeaf,
  check_blocks,
  circulant,
  circulant_matmul,
  fft_rule,
  nearest_circulant,
  sample_circulant,
)
from jaxcompress.sharing._cross_layer import Shared, Tied, TiedLeaf, cross_layer, shared_init
from jaxcompress.sharing._hashed import HashedLeaf, hashed, hashed_least_squares, hashed_sample
from jaxcompress.sharing._ldr import LDRFactors, LDRLeaf, displacement, ldr, ldr_matmul, nearest_ldr
from jaxcompress.sharing._serve import serve, structured
from jaxcompress.sharing._toeplitz import ToeplitzLeaf, nearest_toeplitz, sample_toeplitz, toeplitz, toeplitz_matmul

__all__ = [
  "CirculantLeaf",
  "HashedLeaf",
  "LDRFactors",
  "LDRLeaf",
  "Shared",
  "Tied",
  "TiedLeaf",
  "ToeplitzLeaf",
  "check_blocks",
  "circulant",
  "circulant_matmul",
  "cross_layer",
  "displacement",
  "fft_rule",
  "hashed",
  "hashed_least_squares",
  "hashed_sample",
  "kmeans",
  "ldr",
  "ldr_matmul",
  "nearest_circulant",
  "nearest_ldr",
  "nearest_toeplitz",
  "sample_circulant",
  "sample_toeplitz",
  "serve",
  "shared_init",
  "structured",
  "toeplitz",
  "toeplitz_matmul",
]
