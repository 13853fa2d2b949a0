"""conceptlib's command-line interface (installed as ``conceptlib.cli``): a thin Typer layer."""
