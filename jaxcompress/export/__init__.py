"""Packed leaf types, bit packing, sparse formats, and save/load of packed trees."""

from jaxcompress.export._base import CompressedLeaf, is_compressed, materialize, materialize_tree
from jaxcompress.export._bitpack import BitPacked, code_range, pack_bits
from jaxcompress.export._codebook import CodebookArray, from_assignments, index_bits
from jaxcompress.export._factorized import ConvFactorized, Factorized, factorize, factorize_conv, rebuild_conv
from jaxcompress.export._io import CorruptFileError, load, save
from jaxcompress.export._masked import MaskedArray, prune
from jaxcompress.export._qarray import QArray, store_codes
from jaxcompress.export._sliced import SlicedArray, sliced_from_parts
from jaxcompress.export._sparse import SparseArray, from_dense, from_mask

__all__ = [
  "BitPacked",
  "CodebookArray",
  "CompressedLeaf",
  "ConvFactorized",
  "CorruptFileError",
  "Factorized",
  "MaskedArray",
  "QArray",
  "SlicedArray",
  "SparseArray",
  "code_range",
  "factorize",
  "factorize_conv",
  "from_assignments",
  "from_dense",
  "from_mask",
  "index_bits",
  "is_compressed",
  "load",
  "materialize",
  "materialize_tree",
  "pack_bits",
  "prune",
  "rebuild_conv",
  "save",
  "sliced_from_parts",
  "store_codes",
]
