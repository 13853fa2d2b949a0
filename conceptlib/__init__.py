"""conceptlib: manage Stable Diffusion textual-inversion concepts.

The package root stays cheap to import: heavy modules (sqlmodel, torch, diffusers) load only
inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from conceptlib.embedding import Embedding
from conceptlib.errors import BadInputError, ConceptlibError
from conceptlib.tensor import Tensor

__all__ = ["BadInputError", "ConceptlibError", "Embedding", "Tensor", "__version__"]
