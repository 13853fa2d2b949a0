"""Check optional dependencies without importing them."""

from __future__ import annotations

import importlib.util

from conceptlib.errors import MissingDependencyError


def available(package: str) -> bool:
    """Return True when ``package`` can be imported (without importing it)."""
    return importlib.util.find_spec(package) is not None


def require(*packages: str, extra: str = "torch", purpose: str = "this") -> None:
    """Raise :class:`MissingDependencyError` with the install command when a package is missing."""
    missing = [p for p in packages if not available(p)]
    if missing:
        raise MissingDependencyError(
            f"{purpose} needs {', '.join(missing)}, which is not installed",
            hint=f"pip install 'conceptlib[{extra}]'",
        )
