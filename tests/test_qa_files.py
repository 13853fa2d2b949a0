"""QA regressions for the file commands (inspect, convert, validate, export) and their readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conceptlib.formats import read, write
from factory import sd1


def test_convert_to_a_long_multibyte_name_that_fits(tmp_path: Path, cli: Any) -> None:
    # 62 emoji + ".png" is 252 bytes, a valid name; the temporary file beside it must fit too.
    src = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat>"), src)
    dst = tmp_path / ("\U0001f600" * 62 + ".png")
    run = cli("convert", str(src), str(dst))
    assert run.exit_code == 0, run.stderr
    assert read(dst).vectors["clip_l"].equal(read(src).vectors["clip_l"])


def test_inspect_facts_of_a_large_honest_file_take_little_memory() -> None:
    # A 256 MiB float16 file is allowed; its checksum, norms and NaN count once built a list of
    # Python ints, float32 and float64 copies of every value: gigabytes for inspect.
    import tracemalloc

    import numpy as np

    from conceptlib.embedding import Embedding
    from conceptlib.hashing import a1111_checksum
    from conceptlib.tensor import Tensor

    tensor = Tensor.from_numpy(np.ones((1024, 768), np.float16))  # 1.5 MiB
    emb = Embedding({"clip_l": tensor}, token="big")
    tracemalloc.start()
    try:
        assert a1111_checksum(tensor) == "0000"
        assert len(emb.norms()["clip_l"]) == 1024
        assert emb.non_finite() == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak:,} bytes for a {tensor.array.nbytes:,}-byte tensor"


def test_convert_never_replaces_a_dangling_link_without_force(tmp_path: Path, cli: Any) -> None:
    src = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat>"), src)
    dst = tmp_path / "out.pt"
    dst.symlink_to(tmp_path / "nowhere.pt")
    run = cli("convert", str(src), str(dst))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {dst}: already exists (hint: pass --force to overwrite it)\n"
    assert dst.is_symlink()
    assert cli("convert", str(src), str(dst), "--force").exit_code == 0
    assert not dst.is_symlink() and read(dst).token is None


def _png_named(name: str) -> bytes:
    from conceptlib.formats._png import encode_png

    vectors = sd1(1).vectors["clip_l"]
    payload = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 3, "sd_checkpoint": "\udfff"}
    return encode_png(payload, title="t", footer="f")


def test_a_png_name_with_a_lone_surrogate_is_dropped_not_a_crash(tmp_path: Path, cli: Any) -> None:
    # JSON can spell "\ud800", A1111 loads the image; writing it as UTF-8 used to end in
    # "Error: unexpected UnicodeEncodeError" with exit 1.
    src = tmp_path / "sur.png"
    src.write_bytes(_png_named("x\ud800y"))
    emb = read(src)
    assert emb.name is None and emb.checkpoint_hash is None and emb.step == 3
    for dst in ("out.safetensors", "out.pt", "out-folder", "out.png"):
        run = cli("convert", str(src), str(tmp_path / dst))
        assert run.exit_code == 0, run.stderr
    assert read(tmp_path / "out.safetensors").token == "sur"


def test_a_pickled_token_with_a_lone_surrogate_is_one_line_exit_2(tmp_path: Path, cli: Any) -> None:
    from conceptlib.formats import _torchpickle

    src = tmp_path / "learned_embeds.bin"
    src.write_bytes(_torchpickle.dumps({"<a\ud800>": sd1(1).vectors["clip_l"]}))
    run = cli("convert", str(src), str(tmp_path / "out.safetensors"))
    assert run.exit_code == 2
    assert run.stderr.startswith(f"Error: {src}: a key is '<a\\ud800>', which holds a lone surrogate")
    assert "unexpected" not in run.stderr


def test_convert_token_that_is_not_text_is_a_usage_error(tmp_path: Path, cli: Any) -> None:
    src = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat>"), src)
    run = cli("convert", str(src), str(tmp_path / "out.safetensors"), "--token", "ab\udcffc")
    assert run.exit_code == 2
    assert "unexpected" not in run.stderr and "not UTF-8 text" in run.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_read_error_names_the_file(cli: Any) -> None:
    # An I/O error while reading (a bad disk; /proc/self/mem, which refuses plain reads) said
    # only "Error: Input/output error".
    import os

    import pytest

    if not os.path.exists("/proc/self/mem"):
        pytest.skip("needs Linux's /proc/self/mem")
    result = cli("inspect", "/proc/self/mem")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: /proc/self/mem: Input/output error")


def test_an_exclusive_write_never_replaces_a_file_created_meanwhile(tmp_path: Path) -> None:
    # convert without --force checked for the destination, then renamed over it: a file another
    # process created in between was silently replaced. The rename is now a hard link, which
    # the file system refuses when the name is taken.
    import threading

    import pytest

    from conceptlib._atomic import atomic_write_bytes

    target = tmp_path / "x.safetensors"
    target.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"mine", exclusive=True)
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(tmp_path / "dangling", b"mine", exclusive=True)
    for round_ in range(20):
        path = tmp_path / f"race{round_}"
        won: list[bytes] = []

        def write(data: bytes, path: Path = path, won: list[bytes] = won) -> None:
            try:
                atomic_write_bytes(path, data, exclusive=True)
                won.append(data)
            except FileExistsError:
                pass

        threads = [threading.Thread(target=write, args=(bytes([i]) * 100,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and path.read_bytes() == won[0]


def test_convert_token_with_invisible_characters_is_refused(tmp_path: Path, cli: Any) -> None:
    # convert --token wrote an escape sequence or bidi override into the file, a token `add`
    # then refuses and no prompt box can type.
    src = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat>"), src)
    run = cli("convert", str(src), str(tmp_path / "out.safetensors"), "--token", "<a\x1b[2Jb\u202e>")
    assert run.exit_code == 2
    assert run.stderr == (
        "Error: --token <a\\x1b[2Jb\\u202e> holds control or invisible characters (\\x1b, \\u202e) "
        "that no one can type (hint: pass --token with printable text)\n"
    )
    assert not (tmp_path / "out.safetensors").exists()


def test_a_destination_name_too_long_is_bad_input(tmp_path: Path, cli: Any) -> None:
    # A 300-byte name ended as "File name too long" with exit 1, as if the machine had failed.
    src = tmp_path / "cat.safetensors"
    write(sd1(1, token="<cat>"), src)
    dst = tmp_path / ("a" * 300 + ".safetensors")
    run = cli("convert", str(src), str(dst))
    assert run.exit_code == 2
    assert run.stderr == f"Error: {dst}: the file name is 312 bytes, too long for this file system (hint: choose a shorter name)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cat.safetensors"]
