"""Regressions found by attacking the library and the Hub side with strangers' files and repositories."""

from __future__ import annotations

import ast
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conceptlib import hub as hubmod
from conceptlib.formats import plan
from conceptlib.library import Library
from factory import sd1


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Library]:
    with Library.open(tmp_path / "home") as library:
        yield library


@pytest.fixture
def hub(local_hub: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    local_hub.add_user("hf_test", "alice", orgs=["acme"])
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return local_hub


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out, "PNG")
    return out.getvalue()


def test_pull_skips_a_repository_path_too_long_to_save(hub: Any, lib: Library) -> None:
    # A 300-byte image name made the whole download fail ("File name too long", exit 1).
    _, planned = plan(sd1(1, seed=31, token="<long>"), "folder", format="concepts-library")
    files = {p.name: data for p, data in planned}
    files["concept_images/0.png"] = _png()
    long_name = "concept_images/" + "a" * 300 + ".png"
    files[long_name] = _png()
    hub.create_repo("acme/long", files)
    result = hubmod.pull(lib, "acme/long")
    assert result.status == "added"
    assert result.skipped == {long_name: hubmod.SKIP_LONG_PATH}
    assert [i.path for i in lib.show(result.name).images] == ["images/0.png"]


_BILLION_LAUGHS = (
    "---\nlicense: mit\na: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    + "instance_prompt: [*i]\ntags: *i\nbase_model: {x: *i}\n---\n# card\n"
)


def test_a_card_alias_bomb_is_never_expanded(tmp_path: Path) -> None:
    # The card's instance_prompt/tags/base_model were kept as parsed and stored in concept.json:
    # json.dumps expanded 9**9 aliases (a hang, then memory) on an offline pull.
    readme = tmp_path / "README.md"
    readme.write_text(_BILLION_LAUGHS)
    start = time.monotonic()
    card = hubmod._read_card(readme)
    json.dumps(card)
    assert card == {"license": "mit"}
    assert time.monotonic() - start < 5


def test_card_fields_keep_text_and_short_text_lists_only() -> None:
    card = {"license": "mit", "tags": ["a", "b"], "base_model": ["x", 1], "instance_prompt": {"a": 1}, "other": "x"}
    assert hubmod._card_fields(card) == {"license": "mit", "tags": ["a", "b"]}
    assert hubmod._card_fields({"instance_prompt": "x" * (hubmod.MAX_CARD_TEXT + 1)}) == {}
    assert hubmod._card_fields(["not", "a", "mapping"]) == {}


def test_a_pushed_card_cannot_run_or_inject_a_token() -> None:
    # A token is a stranger's text (a pulled token file or card instance_prompt): in the card's
    # example code it ran `id` once pasted, and a backtick ended its code span.
    token = "x' + __import__('os').system('id') + '`](http://evil) [a]"
    card = hubmod.model_card(
        name="x", token=token, concept_type="negative", base_model=None, license="mit", images=["concept_images/0.png"]
    )
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "pipe"]
    assert len(calls) == 1 and isinstance(calls[0].args[0], ast.Constant)
    assert calls[0].args[0].value == f"a photo of {token}"
    assert not any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "system" for n in ast.walk(ast.parse(code)))
    assert f"Use ``{token}`` in the negative prompt." in card
    assert not re.search(r"!\[[^\]]*\]\(http", card)


def test_images_naming_a_fifo_says_what_it_is(lib: Library, tmp_path: Path) -> None:
    # It said "no such image file or folder" about a file that is there.
    import os

    from conceptlib.errors import UsageError
    from conceptlib.formats import write

    emb = write(sd1(1, seed=41, token="<fifo>"), tmp_path / "fifo.safetensors")[0]
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        lib.add(emb, images=fifo)


def test_files_past_their_limits_are_judged_from_the_listing(hub: Any, lib: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 300 MiB learned_embeds.bin was downloaded whole before being refused at 256 MiB, and a
    # README past the side-file limit was left out without a word. The limits are lowered here
    # so the repository stays small; the listing's sizes are what is judged.
    import conceptlib._snapshots
    import conceptlib.formats
    from conceptlib.errors import EmbeddingFileError

    _, planned = plan(sd1(1, seed=32, token="<big>"), "folder", format="concepts-library")
    files = {p.name: data for p, data in planned}
    files["README.md"] = b"---\nlicense: mit\n---\n" + b"x" * 200
    hub.create_repo("acme/big", files)
    monkeypatch.setattr(conceptlib._snapshots, "MAX_SIDE_FILE_BYTES", 100)
    result = hubmod.pull(lib, "acme/big")
    assert result.status == "added"
    assert list(result.skipped) == ["README.md"] and "not downloaded" in result.skipped["README.md"]
    monkeypatch.setattr(conceptlib.formats, "MAX_FILE_SIZE", 1000)
    hub.create_repo("acme/bigger", {p.name: data for p, data in plan(sd1(1, seed=33, token="<bigger>"), "folder", format="concepts-library")[1]})
    with pytest.raises(EmbeddingFileError, match=r"acme/bigger/learned_embeds\.\w+: is \d,\d{3} bytes, more than the 1,000 an embedding file may have: not downloaded"):
        hubmod.pull(lib, "acme/bigger")
