"""Packed leaf types, bit packing, sparse formats, and save/load of packed trees."""

from jaxcompress.export.base import CompressedLeaf, is_compressed, materialize, materialize_tree
from jaxcompress.export.bitpack import BitPacked, code_range, pack_bits
from jaxcompress.export.codebook import CodebookArray, from_assignments, index_bits
from jaxcompress.export.factorized import Factorized, factorize
from jaxcompress.export.io import CorruptFileError, load, save
from jaxcompress.export.masked import MaskedArray, prune
from jaxcompress.export.qarray import QArray, store_codes
from jaxcompress.export.sliced import SlicedArray, sliced_from_parts
from jaxcompress.export.sparse import SparseArray, from_dense, from_mask

__all__ = [
  "BitPacked",
  "CodebookArray",
  "CompressedLeaf",
  "CorruptFileError",
  "Factorized",
  "MaskedArray",
  "QArray",
  "SlicedArray",
  "SparseArray",
  "code_range",
  "factorize",
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
  "save",
  "sliced_from_parts",
  "store_codes",
]
