"""Dictionaries behind one interface: the SAE family, ITDA and MLP neurons.

``MECHANISMS`` maps a sparsity mechanism's name to its class (``sparsity.py``); every
mechanism is an SAE architecture for ``diffdict train --arch``, as is ``itda``.
"""

from diffdict.dictionaries.base import DICTIONARY_KINDS, Dictionary, SparseCodes, load_dictionary
from diffdict.dictionaries.fused import sparse_decode, topk_encode
from diffdict.dictionaries.itda import ITDA, gradient_pursuit, matching_pursuit
from diffdict.dictionaries.matryoshka import MatryoshkaBatchTopK  # registers matryoshka-batchtopk
from diffdict.dictionaries.neurons import NeuronDictionary
from diffdict.dictionaries.provenance import read_provenance
from diffdict.dictionaries.sae import SparseAutoencoder
from diffdict.dictionaries.sparsity import MECHANISMS, Mechanism, make_mechanism, register

__all__ = [
    "DICTIONARY_KINDS", "Dictionary", "ITDA", "MECHANISMS", "MatryoshkaBatchTopK", "Mechanism", "NeuronDictionary",
    "SparseAutoencoder", "SparseCodes", "gradient_pursuit", "load_dictionary", "make_mechanism", "matching_pursuit",
    "read_provenance", "register", "sparse_decode", "topk_encode",
]
