"""``export --for a1111|comfyui|invokeai``: files every real loader takes, named by the word to type.

Each target takes the prompt word from the file stem, and each reads prompts its own way:

* AUTOMATIC1111 (modules/textual_inversion/textual_inversion.py) registers the stem and finds
  it in a prompt by its CLIP tokens; ( ) [ ] { } : \\ | are its prompt syntax.
* ComfyUI (comfy/sd1_clip.py, SDTokenizer.tokenize_with_weights) splits the prompt at spaces,
  reads ( ) as weights, and loads ``embedding:NAME`` from NAME, NAME.safetensors, .pt or .bin,
  with commas around NAME stripped.
* InvokeAI (invokeai/app/util/ti_utils.py) finds triggers with ``<[a-zA-Z0-9., _-]+>`` and looks
  the name up among its models, named after the file stem when installed.

So ``<cat toy>`` (a token with a space, fine in diffusers) must become ``cat-toy`` there, and the
command says what to type. The files must be portable too: no <>:"/\\|?* or control characters,
no trailing dot or space, no Windows device name, at most 255 bytes, NFC; two concepts never
share a file name, even one that differs only in case.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from conceptlib._terminal import is_invisible
from conceptlib.formats import read, write
from conceptlib.library import UI_FORMATS, Library, ui_word
from factory import sd1, sdxl

WINDOWS_DEVICES = {"con", "prn", "aux", "nul", "conin$", "conout$"} | {
    f"{p}{d}" for p in ("com", "lpt") for d in "0123456789\u00b9\u00b2\u00b3"
}


def portable(stem: str) -> bool:
    """A file stem Windows, macOS and Linux all store as written."""
    return (
        bool(stem)
        and not re.search(r'[<>:"/\\|?*]', stem)
        and not any(is_invisible(c) for c in stem)
        and stem == unicodedata.normalize("NFC", stem)
        and stem[-1] not in ". "
        and stem.split(".")[0].lower() not in WINDOWS_DEVICES
        and len((stem + ".safetensors").encode("utf-8")) <= 255
    )


# --- how each target reads a prompt, after its source (see the module docstring) -----------------


def comfyui_finds(prompt: str, folder: Path) -> Path | None:
    """The file ComfyUI loads for the first ``embedding:`` word of ``prompt``, if any."""
    for word in prompt.replace("\n", " ").split(" "):
        if word.startswith("embedding:"):
            name = word[len("embedding:") :]
            for candidate in (name, name.strip(",")):
                for suffix in ("", ".safetensors", ".pt", ".bin"):
                    if (folder / f"{candidate}{suffix}").is_file():
                        return folder / f"{candidate}{suffix}"
    return None


def invokeai_finds(prompt: str, folder: Path) -> Path | None:
    """The file whose stem InvokeAI's trigger pattern finds in ``prompt``, if any."""
    for trigger in re.findall(r"<[a-zA-Z0-9., _-]+>", prompt):
        matches = [p for p in folder.iterdir() if p.stem == trigger[1:-1]]
        if matches:
            return matches[0]
    return None


def a1111_reads_as_one_word(word: str) -> bool:
    """No character AUTOMATIC1111's prompt parser gives a meaning (emphasis, weights, escapes)."""
    return not re.search(r"[\s()\[\]{}:\\|,]", word)


# --- ui_word ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target", "word"),
    [
        ("cat-toy", "a1111", "cat-toy"),
        ("EasyNegative", "comfyui", "EasyNegative"),
        ("cat toy", "comfyui", "cat-toy"),  # ComfyUI would read `embedding:cat` and the word `toy`
        ("cat toy", "a1111", "cat-toy"),
        ("cat toy", "invokeai", "cat-toy"),
        ("(masterpiece:1.2)", "a1111", "masterpiece-1.2"),
        ("a,b", "comfyui", "a-b"),
        ('a<b>:"c/\\d|e?f*g', "a1111", "a-b-c-d-e-f-g"),
        ("[bold red]x:cat:", "comfyui", "bold-red-x-cat"),
        ("tab\there", "a1111", "tab-here"),
        ("zero\u200bwidth\u202e", "a1111", "zero-width"),
        ("cat.", "a1111", "cat"),  # Windows drops a trailing dot: the word would change
        ("..hidden", "a1111", "hidden"),
        ("-x-", "comfyui", "x"),  # a leading dash reads as an option in shells
        ("con", "a1111", "con-1"),
        ("CON.v2", "comfyui", "CON-1.v2"),  # CON.anything is the device too
        ("LPT\u00b9", "a1111", "LPT\u00b9-1"),
        ("e\u0301t\u00e9", "a1111", "\u00e9t\u00e9"),  # NFC: macOS would store another spelling
        ("铃兰", "a1111", "铃兰"),
        ("铃兰", "comfyui", "铃兰"),
        ("铃兰", "invokeai", ""),  # InvokeAI's trigger pattern is ASCII only
        ("cat_toy v2.1", "invokeai", "cat_toy-v2.1"),
        ("ümlaut", "invokeai", "mlaut"),
        ("x" * 300, "a1111", "x" * 120),
        ("é" * 100, "a1111", "é" * 60),  # 120 bytes, no character cut in half
        ("   ", "a1111", ""),
    ],
)
def test_ui_word(text: str, target: str, word: str) -> None:
    assert ui_word(text, target) == word


@settings(max_examples=400, deadline=None)
@given(st.text(), st.sampled_from(sorted(UI_FORMATS)))
def test_every_word_is_a_portable_file_name_and_one_prompt_word(text: str, target: str) -> None:
    word = ui_word(text, target)
    assert ui_word(word, target) == word  # already clean
    if not word:
        return
    assert portable(word)
    assert a1111_reads_as_one_word(word)
    assert " " not in word and "," not in word[:1] + word[-1:]  # ComfyUI
    if target == "invokeai":
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", word)


# --- export ----------------------------------------------------------------------------------------


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    library = Library.open(tmp_path / "home")
    src = tmp_path / "src"
    src.mkdir()
    for file, emb in [
        ("a.safetensors", sd1(1, seed=1, token="<cat toy>")),
        ("b.safetensors", sd1(1, seed=2, token="Cat-Toy")),  # another file only in case
        ("c.safetensors", sdxl(1, seed=3, token="<cat toy>")),  # the same word, SDXL
        ("d.safetensors", sd1(2, seed=4, token="<铃兰>")),
    ]:
        write(emb, src / file)
        assert library.add(src / file).added
    return library


def test_export_names_files_by_the_word_each_target_reads(lib: Library, tmp_path: Path) -> None:
    names = [c.name for c in lib.list()]
    for target, finds in [("a1111", None), ("comfyui", comfyui_finds), ("invokeai", invokeai_finds)]:
        out = tmp_path / target
        results = lib.export(names, target=target, out_dir=out)
        stems = [r.files[0].stem for r in results]
        assert len({s.casefold() for s in stems}) == len(results)  # nothing shares a file
        assert len(list(out.iterdir())) == len(results)
        for r in results:
            [path] = r.files
            assert portable(path.stem) and path.stem == r.prompt_word
            assert read(path).same_vectors(lib.embedding(r.name))  # nothing overwritten
            keys = set(load_file(path))
            assert keys == ({"clip_l", "clip_g"} if lib.show(r.name).family == "sdxl" else {"emb_params"})
            assert r.prompt == {"a1111": "{}", "comfyui": "embedding:{}", "invokeai": "<{}>"}[target].format(r.prompt_word)
            if finds is not None:
                assert finds(f"a photo of {r.prompt}, best quality", out) == path
            assert a1111_reads_as_one_word(r.prompt_word)
        by_name = {r.name: r for r in results}
        assert by_name["cat-toy"].prompt_word == "cat-toy"
        assert by_name["cat-toy"].note == (
            f"'cat toy' cannot be both one word {dict(a1111='AUTOMATIC1111', comfyui='ComfyUI', invokeai='InvokeAI')[target]} "
            "reads in a prompt and a file name on every system; the file is named 'cat-toy'"
        )
        assert by_name["cat-toy-2"].prompt_word == "Cat-Toy-sd1"  # the same word for Windows and A1111
        assert by_name["cat-toy-3"].prompt_word == "cat-toy-sdxl"
        assert by_name["cat-toy-3"].note == "'cat-toy' is already the word of another concept in this export; the file is named 'cat-toy-sdxl'"
    invoke = {r.name: r for r in lib.export(["铃兰"], target="invokeai", out_dir=tmp_path / "cjk")}
    assert re.fullmatch(r"concept-[0-9a-f]{12}", invoke["铃兰"].prompt_word)


def test_a_format_named_by_its_stem_follows_a1111s_rules(lib: Library, tmp_path: Path) -> None:
    [result] = lib.export(["cat-toy"], "a1111", tmp_path / "pt")
    assert result.files == [tmp_path / "pt" / "cat-toy.pt"] and result.prompt == "cat-toy"
    assert read(result.files[0]).name == "cat-toy"
    [diffusers] = lib.export(["cat-toy"], "diffusers", tmp_path / "d")
    assert diffusers.files == [tmp_path / "d" / "cat-toy.safetensors"] and diffusers.prompt == "<cat toy>" and diffusers.note is None


def test_cli_prints_what_to_type(cli: Any, lib: Library, tmp_path: Path) -> None:
    lib.close()
    out = tmp_path / "comfy"
    home = str(tmp_path / "home")
    result = cli("export", "cat-toy", "cat-toy-3", "--for", "comfyui", "--out", str(out), "--home", home)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"cat-toy -> {out / 'cat-toy.safetensors'} (type: embedding:cat-toy)\n"
        f"cat-toy-3 -> {out / 'cat-toy-sdxl.safetensors'} (type: embedding:cat-toy-sdxl)\n"
    )
    assert result.stderr == (
        "Warning: cat-toy: 'cat toy' cannot be both one word ComfyUI reads in a prompt and a file name on every system; "
        "the file is named 'cat-toy'\n"
        "Warning: cat-toy-3: 'cat-toy' is already the word of another concept in this export; the file is named 'cat-toy-sdxl'\n"
    )
    data = json.loads(cli("export", "cat-toy", "--for", "invokeai", "--out", str(tmp_path / "inv"), "--home", home, "--json").stdout)
    assert data == [{
        "name": "cat-toy", "format": "emb-params", "files": [str(tmp_path / "inv" / "cat-toy.safetensors")],
        "prompt_word": "cat-toy", "prompt": "<cat-toy>",
        "note": "'cat toy' cannot be both one word InvokeAI reads in a prompt and a file name on every system; the file is named 'cat-toy'",
    }]  # fmt: skip
    # Existing files are never overwritten without --force, whatever the target.
    again = cli("export", "cat-toy", "--for", "comfyui", "--out", str(out), "--home", home)
    assert again.exit_code == 2 and again.stderr == f"Error: {out / 'cat-toy.safetensors'}: already exists (hint: pass --force to overwrite it)\n"
    unknown = cli("export", "cat-toy", "--for", "fooocus", "--out", str(out), "--home", home)
    assert unknown.stderr == "Error: unknown --for target 'fooocus' (hint: use one of: a1111, comfyui, invokeai)\n"
