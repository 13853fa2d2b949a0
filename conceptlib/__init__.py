"""conceptlib: manage Stable Diffusion textual-inversion concepts.

The package root stays cheap to import (``conceptlib --help`` imports it): the names below are
resolved on first use, and heavy modules (numpy, sqlmodel, torch, diffusers) load only inside
the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Embedding": "conceptlib.embedding",
    "Tensor": "conceptlib.tensor",
    "Library": "conceptlib.library",
    "Concept": "conceptlib.concept",
    "ConceptlibError": "conceptlib.errors",
    "BadInputError": "conceptlib.errors",
    "read": "conceptlib.formats",
    "write": "conceptlib.formats",
    "convert": "conceptlib.formats",
}

if TYPE_CHECKING:
    from conceptlib.concept import Concept
    from conceptlib.embedding import Embedding
    from conceptlib.errors import BadInputError, ConceptlibError
    from conceptlib.formats import convert, read, write
    from conceptlib.library import Library
    from conceptlib.tensor import Tensor

__all__ = ["BadInputError", "Concept", "ConceptlibError", "Embedding", "Library", "Tensor", "__version__", "convert", "read", "write"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conceptlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
