"""The library commands through the ``cli`` fixture: exact output, exit codes and one-line errors."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conceptlib.cli.library import parse_fast
from conceptlib.formats import read, write
from conceptlib.library import Library
from factory import sd1, sdxl


@pytest.fixture
def home() -> Path:
    return Path(os.environ["CONCEPTLIB_HOME"])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "files"
    paths = {
        "cat": out / "cat.safetensors",
        "neg": out / "EasyNegative.pt",
        "xl": out / "xl.safetensors",
    }
    write(sd1(1, seed=1, token="<cat-toy>"), paths["cat"])
    write(sd1(2, seed=2, name="EasyNegative"), paths["neg"])
    write(sdxl(2, seed=3, token="<watercolor>"), paths["xl"])
    return paths


@pytest.fixture
def filled(cli: Any, files: dict[str, Path]) -> dict[str, Path]:
    ok = cli("add", str(files["cat"]), "--tag", "toy", "-d", "a plush cat")
    assert ok.exit_code == 0, ok.output
    assert cli("add", str(files["neg"]), "--type", "negative").exit_code == 0
    assert cli("add", str(files["xl"]), "--type", "style", "-t", "toy", "-t", "paint").exit_code == 0
    return files


# --- add ---------------------------------------------------------------------------------------


def test_add_one(cli: Any, files: dict[str, Path]) -> None:
    result = cli("add", str(files["cat"]))
    assert result.exit_code == 0
    assert result.stdout == "added      cat-toy  (<cat-toy>, SD 1.x, 1 vector)\n"
    assert result.stderr == "Added 1 concept, 0 duplicates, 0 rejected.\n"


def test_add_bulk_reports_every_input(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(files["cat"], files["cat"].with_name("copy.safetensors"))
    (files["cat"].parent / "junk.pt").write_bytes(b"\x00" * 32)
    result = cli("add", str(files["cat"].parent), str(tmp_path / "missing.pt"))
    assert result.exit_code == 2  # something was rejected
    folder = files["cat"].parent
    assert result.stdout.splitlines() == [
        "added      easynegative  (EasyNegative, SD 1.x, 2 vectors)",
        "added      cat-toy  (<cat-toy>, SD 1.x, 1 vector)",
        "added      watercolor  (<watercolor>, SDXL, 2 vectors)",
        f"duplicate  {folder / 'copy.safetensors'}  (same vectors as cat-toy)",
        f"rejected   {tmp_path / 'missing.pt'}: no such file or folder",
        f"rejected   {folder / 'junk.pt'}: not an embedding file: unrecognised content (first bytes "
        + repr(b"\x00" * 16) + ") (hint: run `conceptlib convert --help` for the formats conceptlib reads)",
    ]
    assert result.stderr == "Added 3 concepts, 1 duplicate, 2 rejected.\n"


def test_add_a1111_embeddings_folder_skips_its_pictures(cli: Any, home: Path, tmp_path: Path) -> None:
    from PIL import Image

    webui = tmp_path / "embeddings"
    write(sd1(2, seed=1, name="bad-artist"), webui / "bad-artist.pt", format="a1111")
    Image.new("RGB", (8, 8)).save(webui / "bad-artist.preview.png")  # the UI's card thumbnail
    write(sd1(1, seed=2, name="rick"), webui / "rick.png")  # an embedding in a PNG
    Image.new("RGB", (8, 8), (200, 0, 0)).save(webui / "cover.png")  # a picture someone left there
    result = cli("add", str(webui))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "added      bad-artist  (bad-artist, SD 1.x, 2 vectors)",
        "added      rick  (rick, SD 1.x, 1 vector)",
        f"skipped    {webui / 'bad-artist.preview.png'}: an AUTOMATIC1111 preview thumbnail",
        f"skipped    {webui / 'cover.png'}: an image without an embedding",
    ]
    assert result.stderr == "Added 2 concepts, 0 duplicates, 0 rejected, 2 skipped.\n"

    # Named on its own, a picture is still an error; a folder of pictures alone gives nothing.
    run = cli("add", str(webui / "cover.png"))
    assert run.exit_code == 2
    assert run.stderr == (
        f"Error: {webui / 'cover.png'}: PNG holds no embedding (no sd-ti-embedding text chunk and no data "
        "blocks in the pixels) (hint: run `conceptlib convert --help` for the formats conceptlib reads)\n"
    )
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.new("RGB", (8, 8)).save(pictures / "a.png")
    result = cli("add", str(pictures), "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "added": [], "duplicates": [],
        "rejected": [{"path": str(pictures), "reason": "the folder holds no embeddings, only images without one"}],
        "skipped": [{"path": str(pictures / "a.png"), "reason": "an image without an embedding"}],
        "near_duplicates": [],
    }  # fmt: skip


def test_add_json(cli: Any, files: dict[str, Path], home: Path) -> None:
    result = cli("add", str(files["cat"]), str(files["cat"]), "--json")
    assert result.exit_code == 0 and result.stderr == ""
    data = json.loads(result.stdout)
    assert [a["name"] for a in data["added"]] == ["cat-toy"]
    assert data["added"][0]["path"] == str(home / "concepts" / "cat-toy")
    assert data["duplicates"] == [{"path": str(files["cat"]), "existing": "cat-toy", "content_hash": data["added"][0]["content_hash"]}]
    assert data["rejected"] == []


def test_add_errors_are_one_line(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    assert cli("add", str(files["cat"])).exit_code == 0
    other = tmp_path / "other.safetensors"
    write(sd1(1, seed=9, token="<cat-toy>"), other)
    code, out, err = cli("add", str(other))
    assert (code, out) == (2, "")
    assert err == (
        f"Error: {other}: the token '<cat-toy>' is already used by 'cat-toy' (SD 1.x) "
        "(hint: pass --token with another word for this concept)\n"
    )
    code, out, err = cli("add", str(tmp_path / "nope.pt"))
    assert (code, err) == (2, f"Error: {tmp_path / 'nope.pt'}: no such file or folder (hint: check the path)\n")
    code, _out, err = cli("add", str(other), "--type", "person")
    assert (code, err) == (2, "Error: unknown concept type 'person' (hint: use one of: object, style, negative)\n")
    code, _out, err = cli("add", str(files["neg"]), str(files["xl"]), "--name", "x")
    assert code == 2 and err.startswith("Error: --name, --token and --images apply to one concept")
    code, _out, err = cli("add", str(other), "--name", "../..")
    assert (code, err.count("\n")) == (2, 1) and "has no letters or digits" in err
    assert cli("add", str(other), "--token", "<cat2>").exit_code == 0


def test_add_with_images_and_options(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "imgs" / "a.png")
    result = cli(
        "add", str(files["cat"]), "--name", "Kitty", "--token", "<kitty>", "--images", str(tmp_path / "imgs"),
        "--license", "mit", "--type", "object",
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("show", "kitty", "--json").stdout)
    assert (shown["token"], shown["license"], [i["path"] for i in shown["images"]]) == ("<kitty>", "mit", ["images/a.png"])


# --- queries -----------------------------------------------------------------------------------


def test_list(cli: Any, filled: dict[str, Path]) -> None:
    result = cli("list")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout == (
        "NAME          TOKEN         TYPE      BASE    VECTORS  TAGS\n"
        "cat-toy       <cat-toy>     object    SD 1.x  1        toy\n"
        "easynegative  EasyNegative  negative  SD 1.x  2\n"
        "watercolor    <watercolor>  style     SDXL    2        paint, toy\n"
    )
    assert cli("list", "--tag", "toy", "--base", "sdxl").stdout.splitlines()[1].startswith("watercolor ")
    data = json.loads(cli("list", "--type", "negative", "--json").stdout)
    assert [d["name"] for d in data] == ["easynegative"] and data[0]["vectors"] == 2


def test_list_empty_and_filtered_out(cli: Any, home: Path) -> None:
    result = cli("list")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "The library is empty: add concepts with `conceptlib add FILE...`.\n"
    result = cli("list", "--type", "style")
    assert (result.stdout, result.stderr) == ("", "No concept matches these filters.\n")
    assert cli("list", "--json").stdout == "[]\n"


def test_list_bad_filter(cli: Any, home: Path) -> None:
    code, _out, err = cli("list", "--base", "flux")
    assert (code, err) == (2, "Error: unknown base family 'flux' (hint: use sd1, sd2 or sdxl)\n")


@pytest.mark.parametrize("alias", ["sdxl-base", "sd2-v", "sd21-v", "sd1.x", "SD 1.x", "xl", "sd15", "sd2-768"])
def test_base_and_compatible_with_accept_the_same_family_names(cli: Any, filled: dict[str, Path], alias: str) -> None:
    # One alias table: `list --base sdxl-base` was refused while `--compatible-with sdxl-base` worked.
    by_base = cli("list", "--base", alias, "--json")
    by_model = cli("list", "--compatible-with", alias, "--json")
    assert (by_base.exit_code, by_model.exit_code) == (0, 0), by_base.output + by_model.output
    names = [c["name"] for c in json.loads(by_base.stdout)]
    assert names == [c["name"] for c in json.loads(by_model.stdout)]
    assert names or "2" in alias  # the library holds SD 1.x and SDXL concepts, no SD 2.x one


def test_search(cli: Any, filled: dict[str, Path]) -> None:
    result = cli("search", "plush")
    assert result.stdout == (
        "NAME     TOKEN      TYPE    BASE    VECTORS  TAGS\n"
        "cat-toy  <cat-toy>  object  SD 1.x  1        toy\n"
    )
    result = cli("search", "zebra")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No concept matches 'zebra'.\n")
    assert [d["name"] for d in json.loads(cli("search", "toy", "--json").stdout)] == ["cat-toy", "watercolor"]


def test_show(cli: Any, filled: dict[str, Path], home: Path) -> None:
    concept = Library.open(home).show("cat-toy")
    result = cli("show", "cat-toy")
    assert result.exit_code == 0
    assert result.stdout == (
        "cat-toy\n"
        "  token         <cat-toy>\n"
        "  type          object\n"
        "  base          SD 1.x (clip_l 768)\n"
        "  vectors       1 × 768, float32\n"
        "  tags          toy\n"
        "  description   a plush cat\n"
        f"  content hash  {concept.content_hash}\n"
        f"  file sha256   {concept.file_sha256} (AutoV2 {concept.file_sha256[:10]})\n"  # type: ignore[index]
        "  format        diffusers\n"
        f"  source        {filled['cat']}\n"
        "  files         original/cat.safetensors\n"
        f"  created       {concept.created}\n"
        f"  updated       {concept.updated}\n"
        f"  folder        {home / 'concepts' / 'cat-toy'}\n"
    )
    data = json.loads(cli("show", "<watercolor>", "--json").stdout)
    assert data["name"] == "watercolor" and data["encoders"] == {"clip_l": 768, "clip_g": 1280}
    assert data["path"] == str(home / "concepts" / "watercolor")


def test_show_missing(cli: Any, filled: dict[str, Path]) -> None:
    code, out, err = cli("show", "catt-toy")
    assert (code, out) == (2, "")
    assert err == "Error: no concept named 'catt-toy' in the library (hint: did you mean cat-toy?)\n"


# --- changes -----------------------------------------------------------------------------------


def test_tag(cli: Any, filled: dict[str, Path]) -> None:
    result = cli("tag", "cat-toy", "+Cute", "-toy", "new")
    assert (result.exit_code, result.stdout) == (0, "cat-toy: cute, new\n")
    assert cli("tag", "cat-toy").stdout == "cat-toy: cute, new\n"
    assert cli("tag", "cat-toy", "-cute", "-new").stdout == "cat-toy: (no tags)\n"
    assert json.loads(cli("tag", "watercolor", "+x", "--json").stdout) == {"name": "watercolor", "tags": ["paint", "toy", "x"]}


def test_tag_errors(cli: Any, filled: dict[str, Path]) -> None:
    code, _out, err = cli("tag", "cat-toy", "+")
    assert (code, err) == (2, "Error: an empty tag (hint: write +TAG or -TAG)\n")
    code, _out, err = cli("tag", "nope", "+x")
    assert code == 2 and err.startswith("Error: no concept named 'nope'")


def test_rename(cli: Any, filled: dict[str, Path]) -> None:
    result = cli("rename", "cat-toy", "kitty", "--token", "<kitty>")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "kitty\n", "cat-toy is now kitty (token <kitty>).\n")
    assert cli("rename", "kitty", "--token", "<k2>", "--json").stdout == '{\n  "name": "kitty",\n  "token": "<k2>"\n}\n'
    code, _out, err = cli("rename", "kitty")
    assert code == 2 and err.startswith("Error: give a new name, --token, or both")
    code, _out, err = cli("rename", "kitty", "watercolor")
    assert code == 2 and err.startswith("Error: a concept named 'watercolor' already exists")
    code, _out, err = cli("rename", "kitty", "--token", "EasyNegative")
    assert code == 2 and "already used by 'easynegative'" in err and "--token" in err


def test_remove(cli: Any, filled: dict[str, Path], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    result = cli("remove", "cat-toy", "watercolor")
    assert result.exit_code == 1 and "Remove 2 concepts: cat-toy, watercolor? [y/N]" in result.stderr
    assert (home / "concepts" / "cat-toy").is_dir()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    result = cli("remove", "cat-toy")
    assert result.exit_code == 0 and result.stderr.endswith("Removed cat-toy.\n")
    code, _out, err = cli("remove", "watercolor", "typo", "--yes")
    assert code == 2 and "no concept named 'typo'" in err
    assert (home / "concepts" / "watercolor").is_dir()  # nothing removed
    result = cli("remove", "watercolor", "-y", "--json")
    assert json.loads(result.stdout) == {"removed": ["watercolor"]}


def test_export(cli: Any, filled: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "embeddings"
    result = cli("export", "cat-toy", "easynegative", "watercolor", "--for", "a1111", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"cat-toy -> {out / 'cat-toy.safetensors'} (type: cat-toy)\n"
        f"easynegative -> {out / 'EasyNegative.safetensors'} (type: EasyNegative)\n"
        f"watercolor -> {out / 'watercolor.safetensors'} (type: watercolor)\n"
    )
    assert result.stderr == ""
    assert read(out / "cat-toy.safetensors").same_vectors(read(filled["cat"]))
    code, _out, err = cli("export", "cat-toy", "--for", "a1111", "--out", str(out))
    assert code == 2 and err == f"Error: {out / 'cat-toy.safetensors'}: already exists (hint: pass --force to overwrite it)\n"
    assert cli("export", "cat-toy", "--for", "a1111", "--out", str(out), "--force").exit_code == 0
    data = json.loads(cli("export", "cat-toy", "--format", "diffusers", "-o", str(tmp_path / "d"), "--json").stdout)
    assert data == [{"name": "cat-toy", "format": "diffusers", "files": [str(tmp_path / "d" / "cat-toy.safetensors")], "prompt_word": "<cat-toy>", "prompt": "<cat-toy>", "note": None}]
    code, _out, err = cli("export", "cat-toy", "--out", str(out))
    assert code == 2 and err.startswith("Error: choose one of --format and --for")
    code, _out, err = cli("export", "watercolor", "--format", "diffusers", "--out", str(out))
    assert code == 2 and "SDXL" in err


# --- maintenance -------------------------------------------------------------------------------


def test_reindex(cli: Any, filled: dict[str, Path], home: Path) -> None:
    (home / ".staging" / "add-stale").mkdir()
    result = cli("reindex")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "deleted .staging/add-stale\nIndexed 3 concepts.\n"
    assert json.loads(cli("reindex", "--json").stdout) == {"indexed": 3, "cleaned": [], "problems": []}
    (home / "concepts" / "broken").mkdir()
    result = cli("reindex")
    assert result.exit_code == 1
    assert result.stdout.startswith("manifest   broken: unreadable manifest:") and result.stdout.endswith("(not repairable)\n")


def test_verify(cli: Any, filled: dict[str, Path], home: Path) -> None:
    result = cli("verify")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "OK: 3 concepts checked, no problems.\n")
    shutil.rmtree(home / "concepts" / "watercolor")
    (home / ".staging" / "add-x").mkdir()
    result = cli("verify")
    assert result.exit_code == 1
    assert result.stdout == (
        "staging    .staging/add-x: leftover of an interrupted operation\n"
        "missing    watercolor: indexed, but its folder is gone\n"
    )
    assert result.stderr == "2 problems in 2 concepts. Run `conceptlib verify --repair`.\n"
    data = json.loads(cli("verify", "--json").stdout)
    assert data["ok"] is False and [p["kind"] for p in data["problems"]] == ["staging", "missing"]
    result = cli("verify", "--repair")
    assert result.exit_code == 0
    assert result.stderr == (
        "repaired: deleted .staging/add-x\n"
        "repaired: rebuilt the index: watercolor was missing, stale or gone\n"
        "OK: 2 concepts checked, no problems.\n"
    )


def test_home_option(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    assert cli("add", str(files["cat"]), "--home", str(other)).exit_code == 0
    assert (other / "concepts" / "cat-toy" / "concept.json").is_file()
    assert cli("list", "--home", str(other)).stdout.splitlines()[1].startswith("cat-toy ")
    assert cli("list").stdout == ""  # the default home is untouched


@pytest.mark.parametrize("command", ["add", "list", "search", "show", "remove", "tag", "rename", "export", "reindex", "verify"])
def test_every_command_has_help(cli: Any, command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Example: conceptlib" in result.stdout and "--home" in result.stdout


# --- the fast path for list/search/show --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["list", "--type", "style"],
        ["list", "--type=negative", "--json"],
        ["list", "--base", "sd1", "-t", "toy"],
        ["list", "--tag=toy"],
        ["list", "--base", "flux"],
        ["search", "toy"],
        ["search", "--json", "plush"],
        ["search", "zebra"],
        ["show", "cat-toy"],
        ["show", "<watercolor>", "--json"],
        ["show", "nope"],
    ],
)
def test_fast_path_matches_typer(cli: Any, monkeypatch: pytest.MonkeyPatch, filled: dict[str, Path], argv: list[str]) -> None:
    """Same stdout, stderr and exit code with and without the fast path, errors included."""
    from conceptlib.cli import _readonly

    assert parse_fast(argv) is not None
    fast = cli(*argv)
    # app.main asks fast_main first; answering None hands the command to Typer, in the same error boundary.
    asked: list[list[str]] = []
    monkeypatch.setattr(_readonly, "fast_main", lambda args: asked.append(args))
    assert cli(*argv) == fast
    assert asked == [argv]  # the second run really went past the fast path


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--help"], ["list", "-h"], ["list", "extra"], ["list", "--type"], ["list", "-tx"],
        ["list", "--tag", "a", "--tag", "b"], ["list", "--type", "--json"], ["list", "--unknown"],
        ["search"], ["search", "a", "b"], ["search", "--", "-x"], ["show"], ["add", "x"], [],
        ["show", "a", "--home="],
    ],
)
def test_fast_path_leaves_the_rest_to_typer(argv: list[str]) -> None:
    assert parse_fast(argv) is None


def test_fast_path_arguments() -> None:
    assert parse_fast(["list", "--home", "/h", "--base=sdxl", "--json"]) == (
        "list", {"json_": True, "home": Path("/h"), "base": "sdxl"},
    )
    assert parse_fast(["show", "--home=/h", "x"]) == ("show", {"json_": False, "home": Path("/h"), "name": "x"})


def test_bulk_add_shows_progress_on_a_terminal(cli: Any, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import conceptlib.cli._output as cli_output

    screen = io.StringIO()
    monkeypatch.setattr(cli_output, "err", Console(file=screen, force_terminal=True, width=100))
    result = cli("add", str(files["cat"].parent))
    assert result.exit_code == 0
    assert "Adding" in screen.getvalue() and "3/3" in screen.getvalue()
    assert "Adding" not in result.stderr  # on a pipe: no bar, only the summary
