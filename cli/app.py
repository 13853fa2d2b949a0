"""The ``conceptlib`` command: app factory, command registration and the error boundary."""

from __future__ import annotations

import sys

import typer

from conceptlib import __version__, config

app = typer.Typer(
    name="conceptlib",
    help="Manage Stable Diffusion textual-inversion concepts: inspect, convert, index, validate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"conceptlib {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Manage Stable Diffusion textual-inversion concepts."""


# Each module adds its commands; none of them imports torch, diffusers or sqlmodel at module
# scope, so `conceptlib --help` stays fast.
from conceptlib.cli import demo as _demo  # noqa: E402
from conceptlib.cli import formats as _formats  # noqa: E402
from conceptlib.cli import hub as _hub  # noqa: E402
from conceptlib.cli import library as _library  # noqa: E402
from conceptlib.cli import models as _models  # noqa: E402
from conceptlib.cli import render as _render  # noqa: E402
from conceptlib.cli import train as _train  # noqa: E402

for _module in (_formats, _library, _models, _hub, _train, _render, _demo):
    _module.register(app)


def _usage_line(exc: Exception) -> str:
    """Typer's usage error (bad value, unknown option, missing argument) as the one-line form."""
    from conceptlib.cli._errors import one_line

    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    param = getattr(exc, "param", None)
    opts = [o for o in getattr(param, "opts", None) or [] if o.startswith("--")] or list(getattr(param, "opts", None) or [])
    prefix = "Invalid value for "
    if opts and message.startswith(prefix) and ": " in message:
        # "Invalid value for '--steps': Input should be ..." -> "--steps: input should be ..."
        reason = message.split(": ", 1)[1]
        message = f"{opts[0]}: {reason[:1].lower()}{reason[1:]}"
    # The root's name is however Python was started (`python -m conceptlib`, a test runner),
    # several words long: the subcommands are the names of the contexts below the root.
    ctx = getattr(exc, "ctx", None)
    subcommands: list[str] = []
    while ctx is not None and getattr(ctx, "parent", None) is not None:
        subcommands.insert(0, str(ctx.info_name))
        ctx = ctx.parent
    return one_line("Error:", message, f"see `{' '.join(['conceptlib', *subcommands])} --help`")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning errors into one line and an exit code.

    Warnings that libraries raise on the way (numpy on huge values, Pillow on huge images)
    become one ``Warning:`` line each, or nothing (see ``cli._errors.library_warnings``).
    """
    from conceptlib.cli._errors import library_warnings

    with library_warnings():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from conceptlib.cli._errors import render_error
    from conceptlib.cli._output import err

    try:
        # Plain list/search/show skip Typer's per-parameter set-up (about 0.2 s), keeping them
        # under the 0.3 s start-up budget at 10,000 concepts; anything else goes to Typer.
        from conceptlib.cli._readonly import fast_main

        rc = fast_main(sys.argv[1:] if argv is None else argv)
        if rc is None:
            # With standalone_mode off, typer.Exit(code) comes back as the return value.
            rc = app(args=argv, standalone_mode=False)
            if rc == 130:  # Typer's answer to Ctrl-C, with nothing printed
                err.print("Interrupted.", markup=False)
        return rc if isinstance(rc, int) else 0
    except SystemExit as exc:  # typer.Exit and --help land here
        return int(exc.code or 0)
    except KeyboardInterrupt:
        err.print("Interrupted.", markup=False)
        return 130
    except Exception as exc:
        # Typer's private Click raises its own usage/abort exceptions. A usage error (a value
        # out of range, an unknown option) gets the same one line as conceptlib's own errors;
        # bare `conceptlib` (help as an error) and other Click exceptions print themselves.
        show = getattr(exc, "show", None)
        exit_code = getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            if hasattr(exc, "ctx") and type(exc).__name__ != "NoArgsIsHelpError":
                err.print(_usage_line(exc), markup=False)
            else:
                show()
            return exit_code
        if type(exc).__name__ == "Abort":
            err.print("Aborted.", markup=False)
            return 1
        if config.debug():
            raise
        message, code = render_error(exc)
        err.print(message, markup=False)
        return code


def run() -> None:
    """Entry point used by ``python -m conceptlib``."""
    sys.exit(main())
