"""Optional dependencies: check them without importing them; quiet them while loading models."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

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


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' and diffusers' logs and progress bars while models load.

    Loading prints a bar per component and warnings that concern processors conceptlib never
    uses ("CLIPImageProcessor requires torchvision"); on stderr they bury conceptlib's own
    one-line messages. Previews render inside it too: their prompts are built to fit, and
    the tokenizer's "Token indices sequence length is longer ..." lines would only add noise.
    Errors still show; the previous settings come back afterwards.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (transformers_logging, diffusers_logging)]
    for lib, _level, _bars in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()
