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
ModelConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--model-config",
        help="For a single-file checkpoint: a diffusers folder or Hub repo with its configs and tokenizer "
        "(default: the one registered with `models add --model-config`, else the family's reference repo, fetched once and cached).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Placeholder token to store, e.g. '<cat-toy>'.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

# --- the concept library (cli/library.py) ----------------------------------------------------------
ConceptArg = Annotated[str, typer.Argument(help="Concept name (or its token).", show_default=False)]
ConceptsArg = Annotated[list[str], typer.Argument(help="Concept names (or tokens).", show_default=False)]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Concept type: object, style or negative.", show_default=False)]
BaseOpt = Annotated[str | None, typer.Option("--base", help="Base-model family: sd1, sd2 or sdxl.", show_default=False)]

# --- base models (cli/models.py) -------------------------------------------------------------------
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Base model: a registered name (`conceptlib models list`), a diffusers folder, "
        "a .safetensors/.ckpt file, or a family: sd1, sd2, sd2-v, sdxl.",
        show_default=False,
    ),
]
