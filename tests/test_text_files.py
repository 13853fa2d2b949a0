"""The text files a user writes (templates, prompt files, ``--from`` lists) read the same with a BOM.

Windows editors save "UTF-8 with BOM"; the mark must not become part of the first line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conceptlib.errors import UsageError
from conceptlib.preview import _read_list
from conceptlib.render import read_prompts
from conceptlib.train import read_templates

BOM = "\ufeff"


@pytest.mark.parametrize("bom", ["", BOM])
def test_a_leading_bom_is_not_text(tmp_path: Path, bom: str) -> None:
    templates = tmp_path / "templates.txt"
    templates.write_text(bom + "a photo of [name]\n", encoding="utf-8")
    assert read_templates(templates) == ["a photo of [name]"]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(bom + '{"prompt": "a <cat-toy>", "seed": 7}\n', encoding="utf-8")
    spec = read_prompts(prompts)[0]
    assert (spec.prompt, spec.seed) == ("a <cat-toy>", 7)

    listed = tmp_path / "list.txt"
    listed.write_text(bom + "cat-toy\n", encoding="utf-8")
    assert _read_list(listed) == [("cat-toy", "cat-toy")]


def test_only_one_leading_bom_goes(tmp_path: Path) -> None:
    # A mark inside the text is the user's: a template that holds it is read as written.
    templates = tmp_path / "templates.txt"
    templates.write_text(BOM + "a [name]\n" + BOM + "b [name]\n", encoding="utf-8")
    assert read_templates(templates) == ["a [name]", BOM + "b [name]"]


def test_not_utf8_is_named(tmp_path: Path) -> None:
    templates = tmp_path / "templates.txt"
    templates.write_bytes(b"\xff\xfea\x00")  # UTF-16
    with pytest.raises(UsageError, match="is not UTF-8 text") as caught:
        read_templates(templates)
    assert caught.value.hint == "save the template file as UTF-8"
