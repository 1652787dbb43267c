"""Packed leaf types, bit packing, sparse formats, and save/load of packed trees."""

from jaxcompress.export._base import CompressedLeaf, is_compressed, materialize, materialize_tree
from jaxcompress.export._bitpack import BitPacked, code_range, pack_bits
from jaxcompress.export._codebook import CodebookArray, from_assignments, index_bits
from jaxcompress.export._factorized import ConvFactorized, Factorized, factorize, factorize_conv, rebuild_conv
from jaxcompress.export._huffman import (
  HuffmanArray,
  StreamReport,
  code_lengths,
  coded_bits,
  entropy_bits,
  huffman,
  huffman_decode,
  huffman_encode,
  unhuffman,
)
from jaxcompress.export._io import CorruptFileError, SavedFile, load, open_file, save
from jaxcompress.export._masked import MaskedArray, prune
from jaxcompress.export._outlier import OutlierArray
from jaxcompress.export._qarray import QArray, store_codes
from jaxcompress.export._sliced import SlicedArray, narrowed, sliced_from_parts
from jaxcompress.export._sparse import SparseArray, from_dense, from_mask
from jaxcompress.export._structured import (
  CirculantArray,
  DisplacementArray,
  HashedArray,
  TiedArray,
  ToeplitzArray,
  circulant_dense,
  f_circulant,
  hash_coordinates,
  hashed_dense,
  ldr_dense,
  ldr_size,
  matrix_shape,
  murmur3_32,
  toeplitz_dense,
)

__all__ = [
  "BitPacked",
  "CirculantArray",
  "CodebookArray",
  "CompressedLeaf",
  "ConvFactorized",
  "CorruptFileError",
  "DisplacementArray",
  "Factorized",
  "HashedArray",
  "HuffmanArray",
  "MaskedArray",
  "OutlierArray",
  "QArray",
  "SavedFile",
  "SlicedArray",
  "SparseArray",
  "StreamReport",
  "TiedArray",
  "ToeplitzArray",
  "circulant_dense",
  "code_lengths",
  "code_range",
  "coded_bits",
  "entropy_bits",
  "f_circulant",
  "factorize",
  "factorize_conv",
  "from_assignments",
  "from_dense",
  "from_mask",
  "hash_coordinates",
  "hashed_dense",
  "huffman",
  "huffman_decode",
  "huffman_encode",
  "index_bits",
  "is_compressed",
  "ldr_dense",
  "ldr_size",
  "load",
  "materialize",
  "materialize_tree",
  "matrix_shape",
  "murmur3_32",
  "narrowed",
  "open_file",
  "pack_bits",
  "prune",
  "rebuild_conv",
  "save",
  "sliced_from_parts",
  "store_codes",
  "toeplitz_dense",
  "unhuffman",
]
