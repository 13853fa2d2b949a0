"""Every command has help text and is documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from conceptlib.cli.app import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def commands() -> list[tuple[str, typer.models.CommandInfo]]:
    found = [(c.name or "", c) for c in app.registered_commands]
    for group in app.registered_groups:
        sub = group.typer_instance
        assert sub is not None
        found += [(f"{group.name} {c.name}", c) for c in sub.registered_commands]
    return found


@pytest.mark.parametrize(("name", "info"), commands(), ids=[n for n, _ in commands()])
def test_command_has_help_and_is_documented(name: str, info: typer.models.CommandInfo) -> None:
    assert info.callback is not None and (info.callback.__doc__ or "").strip(), f"{name} has no help text"
    assert f"conceptlib {name}" in README, f"`conceptlib {name}` is not in the README"
