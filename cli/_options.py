"""Options shared by several commands, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing files.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat warnings (NaN/Inf, ...) as errors.")]
HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Library folder (default: $CONCEPTLIB_HOME, else the user data folder).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Placeholder token to store, e.g. '<cat-toy>'.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
