"""conceptlib's command-line interface (installed as ``conceptlib.cli``): a thin Typer layer.

:func:`main` is the console script. Plain ``list``, ``search`` and ``show`` run from here
without importing Typer or rich (start-up is their whole time budget); everything else goes to
the Typer app in ``conceptlib.cli.app``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    from conceptlib.cli._readonly import parse_fast

    args = sys.argv[1:] if argv is None else list(argv)
    if parse_fast(args) is None:
        from conceptlib.cli.app import main as app_main

        return app_main(args)
    from conceptlib.cli._errors import library_warnings

    # Stray library warnings become one line each here too (see library_warnings).
    with library_warnings():
        return _fast(args)


def _fast(args: list[str]) -> int:
    from conceptlib.cli._readonly import fast_main

    try:
        code = fast_main(args)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130
    except Exception as exc:
        from conceptlib import config
        from conceptlib.cli._errors import render_error

        if config.debug():
            raise
        message, status = render_error(exc)
        sys.stderr.write(message + "\n")
        return status
    return code or 0


def run() -> None:
    """``python -m conceptlib``."""
    sys.exit(main())
