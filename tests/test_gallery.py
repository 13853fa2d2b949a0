"""The static gallery: its files, determinism, incremental rebuilds, escaping, and a real browser.

Browser tests drive Debian's ``chromium`` through Playwright (pointed at that executable; no
browser is downloaded) and skip, saying why, where either is missing. A screenshot of the index
is saved beside the test's files, and in ``$CONCEPTLIB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.embedding import Embedding
from conceptlib.formats import write
from conceptlib.gallery import build
from conceptlib.library import Library
from conceptlib.tensor import Tensor

HOSTILE = "</script><script>window.PWNED=1</script><img src=x onerror=alert(1)>"


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return out.getvalue()


def _rows(seed: int, n: int, width: int = 768) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.02).astype(np.float32)


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    lib = Library.open(tmp_path / "home")
    src = tmp_path / "src"
    src.mkdir()
    pics = src / "pics"
    pics.mkdir()
    (pics / "a.png").write_bytes(_png((200, 30, 30)))
    (pics / "b.png").write_bytes(_png((30, 30, 200)))
    write(Embedding({"clip_l": Tensor.from_numpy(_rows(0, 2))}, token="<cat-toy>"), src / "cat-toy.safetensors")
    lib.add(src / "cat-toy.safetensors", images=pics, tags=["toy", "cat"], license="mit", description=HOSTILE)
    write(Embedding({"clip_l": Tensor.from_numpy(_rows(1, 8))}, token="<bad-hands>"), src / "bad-hands.safetensors")
    lib.add(src / "bad-hands.safetensors", type="negative", tags=["quality"])
    xl = {"clip_l": Tensor.from_numpy(_rows(2, 1)), "clip_g": Tensor.from_numpy(_rows(3, 1, 1280))}
    write(Embedding(xl, token="<xl-style>"), src / "xl-style.safetensors")
    lib.add(src / "xl-style.safetensors", type="style", tags=["toy"])
    yield lib
    lib.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_gallery_files(library: Library, tmp_path: Path) -> None:
    report = build(library, tmp_path / "site", title="Our concepts")
    assert report.items == 3 and report.skipped == []
    index = json.loads((tmp_path / "site" / "index.json").read_text())
    assert [i["name"] for i in index["items"]] == ["bad-hands", "cat-toy", "xl-style"]
    cat = index["items"][1]
    assert cat["snippets"] == {
        "a1111": "cat-toy", "comfyui": "embedding:cat-toy",
        "diffusers": 'pipe.load_textual_inversion("cat-toy/learned_embeds.safetensors", token="<cat-toy>")',
    }  # fmt: skip
    assert len(cat["images"]) == 2 and cat["autov2"] == library.show("cat-toy").file_sha256[:10]  # type: ignore[index]
    # Downloads load as the UIs load them.
    from conceptlib.formats import read

    site = tmp_path / "site"
    for item in index["items"]:
        for layout in ("a1111", "diffusers"):
            assert read(site / item["downloads"][layout]).content_hash() == library.embedding(item["name"]).content_hash()
    # The AUTOMATIC1111/ComfyUI file is the one `export --for a1111` writes, byte for byte.
    [exported] = library.export("xl-style", None, tmp_path / "ui", target="a1111")
    assert (site / index["items"][2]["downloads"]["a1111"]).read_bytes() == exported.files[0].read_bytes()
    # A local source is a path on the building machine: never published.
    assert all("path" not in item["source"] for item in index["items"]) and str(tmp_path) not in (site / "items.js").read_text()
    # A concept without images shows its vectors.
    assert index["items"][0]["images"][0].get("vectors") is True
    # Strangers' text is escaped: nothing closes the script or opens a tag.
    assert HOSTILE not in (site / "items.js").read_text() and "</script>" not in (site / "items.js").read_text()
    page = (site / "items" / "cat-toy.html").read_text()
    assert "&lt;/script&gt;&lt;script&gt;" in page and "<script" not in page


def _huge_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height black pixels: a few hundred KB that decode to hundreds of MB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_library_pictures_are_checked_again_before_decoding(library: Library, tmp_path: Path) -> None:
    # Changed on disk after they were checked in: a page, and 8,200 x 8,200 pixels (200 MB of
    # pixels, past the limit, below Pillow's own bomb check). Neither is decoded or published.
    concept = library.show("cat-toy")
    assert concept.path is not None
    (concept.path / concept.images[0].path).write_bytes(b"<html><script>alert(1)</script></html>")
    (concept.path / concept.images[1].path).write_bytes(_huge_png(8200, 8200))
    build(library, tmp_path / "site")
    [cat] = [i for i in json.loads((tmp_path / "site" / "index.json").read_text())["items"] if i["name"] == "cat-toy"]
    assert [i.get("vectors") for i in cat["images"]] == [True]
    assert not (tmp_path / "site" / "images").exists() or not any((tmp_path / "site" / "images").iterdir())


def test_same_library_same_bytes_and_rebuilds_write_what_changed(library: Library, tmp_path: Path) -> None:
    first = build(library, tmp_path / "one")
    build(library, tmp_path / "two")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert first.written == len(_files(tmp_path / "one"))
    again = build(library, tmp_path / "one")
    assert (again.written, again.removed) == (0, 0)
    # A picture deleted by hand is made again; nothing else is written.
    [full] = sorted((tmp_path / "one" / "images").iterdir())[:1]
    full.unlink()
    assert build(library, tmp_path / "one").written == 1 and full.is_file()
    # One tag: its page and the two indexes.
    library.tag("bad-hands", add=["hands"])
    changed = build(library, tmp_path / "one")
    assert changed.written == 3
    # A concept removed: its page, pictures and downloads go; nothing else in OUT is touched.
    (tmp_path / "one" / "CNAME").write_text("concepts.example.org\n")
    library.remove("cat-toy")
    gone = build(library, tmp_path / "one")
    assert gone.removed == 2 + 2 + 2 + 1  # 2 thumbs, 2 images, 2 downloads, 1 page
    assert not (tmp_path / "one" / "items" / "cat-toy.html").exists() and (tmp_path / "one" / "CNAME").is_file()


def test_the_command(cli: Any, library: Library, tmp_path: Path) -> None:
    run = cli("gallery", str(tmp_path / "site"), "--home", str(library.home), "--model", "sd1")
    assert run.exit_code == 0, run.output
    assert run.stdout == (tmp_path / "site" / "index.html").resolve().as_uri() + "\n"
    index = json.loads((tmp_path / "site" / "index.json").read_text())
    badges = {i["name"]: i["badge"]["status"] for i in index["items"]}
    assert badges["cat-toy"] == "ok" and badges["xl-style"] == "error"  # an SDXL concept does not fit SD 1.x
    run = cli("gallery", str(tmp_path / "site"), "--home", str(library.home), "--json")
    assert json.loads(run.stdout)["written"] > 0  # the badges are gone: pages changed


# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'conceptlib[dev]')")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_in_a_browser(browser: Any, library: Library, tmp_path: Path) -> None:
    site = tmp_path / "site"
    build(library, site)
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto((site / "index.html").as_uri())

    def names() -> list[str]:
        return [str(n) for n in page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.name)")]

    assert names() == ["bad-hands", "cat-toy", "xl-style"]
    assert page.locator("#count").text_content() == "3 of 3"
    # Every image loads, and says what it shows.
    page.wait_for_load_state("networkidle")
    images = page.locator(".card img").evaluate_all("imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.alt])")
    assert images and all(ok and alt for ok, alt in images)
    # Search narrows; filters combine with it and with each other.
    page.fill("#q", "toy")
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    assert names() == ["cat-toy", "xl-style"]
    page.select_option("#type", "style")
    assert names() == ["xl-style"]
    page.fill("#q", "")
    page.select_option("#type", "")
    page.select_option("#tag", "toy")
    page.select_option("#family", "sd1")
    page.wait_for_function("document.querySelectorAll('.card').length === 1")
    assert names() == ["cat-toy"]
    # The copy button gives the snippet of its card.
    page.locator('.card[data-name="cat-toy"] .copy-comfyui').click()
    page.wait_for_selector('.card[data-name="cat-toy"] .copy-comfyui[data-copied]')  # the clipboard answers later
    assert page.locator('.card[data-name="cat-toy"] .copy-comfyui').get_attribute("data-copied") == "embedding:cat-toy"
    # Keyboard: the search box and the buttons are reachable with Tab.
    page.focus("#q")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "family"
    shot = tmp_path / "gallery.png"
    page.select_option("#tag", "")
    page.select_option("#family", "")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("CONCEPTLIB_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["CONCEPTLIB_SCREENSHOTS"]) / "gallery.png")
    assert shot.stat().st_size > 1000
    # Item pages open from the cards, with their images and the escaped description.
    page.locator('.card[data-name="cat-toy"] h2 a').click()
    page.wait_for_load_state("networkidle")
    assert page.locator("h1").text_content() == "cat-toy"
    assert page.locator(".description").text_content() == HOSTILE
    assert page.evaluate("window.PWNED") is None
    loaded = page.locator(".images img").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded == [True, True]
    assert problems == []


@pytest.mark.torch
def test_previews_for_concepts_without_images(library: Library, tmp_path: Path) -> None:
    from conceptlib.models import read_model
    from conceptlib.tiny import create_tiny

    model = read_model(create_tiny(tmp_path / "tiny", "sd1", seed=0), home=library.home)
    report = build(library, tmp_path / "site", model=model, steps=2)
    index = json.loads((tmp_path / "site" / "index.json").read_text())
    pictures = {i["name"]: i["images"][0] for i in index["items"]}
    assert pictures["bad-hands"]["preview"] == "a portrait of a woman (negative: <bad-hands>)"
    assert pictures["cat-toy"].get("preview") is None and len(index["items"][1]["images"]) == 2  # its own images
    # The SDXL concept cannot be rendered with an SD 1.x model: its vectors, and a line saying why.
    assert pictures["xl-style"].get("vectors") is True
    assert [line.split(":")[0] for line in report.skipped] == ["xl-style"]
    from PIL import Image

    assert Image.open(tmp_path / "site" / pictures["bad-hands"]["thumb"]).size == (64, 64)  # the tiny model's native size
    # Cached by what made it: a rebuild renders nothing.
    assert build(library, tmp_path / "site", model=model, steps=2).written == 0


def test_hypernetwork_cards_in_a_browser(browser: Any, tmp_path: Path) -> None:
    from test_hypernet_library import _gallery_library

    with _gallery_library(tmp_path) as lib:
        build(lib, tmp_path / "site")
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto((tmp_path / "site" / "index.html").as_uri())
    page.wait_for_load_state("networkidle")
    assert page.locator('.card[data-name="anime"] .meta').text_content() == "anime · style · SD 1.x · hypernetwork, widths 320,768"
    page.select_option("#kind", "hypernetwork")
    page.wait_for_function("document.querySelectorAll('.card').length === 1")
    page.locator('.card[data-name="anime"] .copy-a1111').click()
    page.wait_for_selector('.card[data-name="anime"] .copy-a1111[data-copied]')
    assert page.locator('.card[data-name="anime"] .copy-a1111').get_attribute("data-copied") == "<hypernet:anime:1>"
    images = page.locator(".card img").evaluate_all("imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.alt])")
    assert images == [[True, "anime: its first layers' weights as a heat map"]]
    assert problems == []
