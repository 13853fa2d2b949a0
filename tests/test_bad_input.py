"""Bad input: one precise error naming the file, never a traceback, nothing written."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.errors import (
    BadInputError,
    CorruptFileError,
    EmbeddingStructureError,
    GitLFSPointerError,
    NonFiniteError,
    UnknownEncoderError,
    UnknownFormatError,
)
from conceptlib.formats import _safetensors, _torchpickle, read, write
from conceptlib.tensor import Tensor
from factory import sd1, vectors


def pt(tmp_path: Path, obj: Any, name: str = "x.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(_torchpickle.dumps(obj))
    return path


def st(tmp_path: Path, tensors: dict[str, Tensor], name: str = "x.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(_safetensors.dumps(tensors))
    return path


CASES: list[tuple[str, Any, type[BadInputError], str]] = [
    ("empty dict", {}, EmbeddingStructureError, "empty dict"),
    ("wrong rank", {"<x>": Tensor.from_numpy(np.zeros((1, 2, 768), np.float32))}, EmbeddingStructureError, "rank 3"),
    ("zero vectors", {"<x>": Tensor.from_numpy(np.zeros((0, 768), np.float32))}, EmbeddingStructureError, "zero vectors"),
    ("t5xxl", {"t5xxl": Tensor.from_numpy(np.zeros((2, 4096), np.float32))}, UnknownEncoderError, "T5-XXL"),
    ("odd width", {"<x>": Tensor.from_numpy(np.zeros((2, 500), np.float32))}, UnknownEncoderError, "width 500 fits no"),
    ("transposed", {"<x>": Tensor.from_numpy(np.zeros((768, 2), np.float32))}, UnknownEncoderError, "width 2"),
    ("ambiguous", {"<a>": vectors(1, 768), "<b>": vectors(1, 768)}, EmbeddingStructureError, "holds 2 tensors"),
    ("integers", {"<x>": Tensor.from_numpy(np.zeros((1, 768), np.int64))}, EmbeddingStructureError, "int64"),
    ("no tensors", {"name": "x", "step": 3}, EmbeddingStructureError, "holds no tensors"),
    ("two placeholders", {"string_to_param": {"*": vectors(1, 768), "@": vectors(1, 768)}}, EmbeddingStructureError, "2 placeholders"),
    ("sdxl rows differ", {"clip_l": vectors(2, 768), "clip_g": vectors(3, 1280)}, EmbeddingStructureError, "different numbers"),
    ("clip_g wrong width", {"clip_l": vectors(1, 768), "clip_g": vectors(1, 768)}, EmbeddingStructureError, "1280 wide"),
    ("a list", [vectors(1, 768)], EmbeddingStructureError, "holds a list"),
    # AUTOMATIC1111 keeps hypernetworks beside embeddings: named for what they are.
    ("a1111 hypernetwork", {
        768: [{"linear.0.weight": vectors(4, 768), "linear.0.bias": vectors(1, 4)}, {"linear.0.weight": vectors(4, 768)}],
        320: [{"linear.0.weight": vectors(2, 320)}, {"linear.0.weight": vectors(2, 320)}],
        "layer_structure": [1, 2, 1], "activation_func": "relu", "name": "hn",
    }, EmbeddingStructureError, r"is a hypernetwork \(attention widths 320, 768\), not a textual-inversion embedding"),
    ("novelai hypernetwork", {768: [{"linear1.weight": vectors(4, 768), "linear2.weight": vectors(768, 4)}] * 2},
     EmbeddingStructureError, r"is a hypernetwork \(attention widths 768\)"),
    ("optimizer sidecar", {"hash": "0123456789", "optimizer_name": "AdamW", "optimizer_state_dict": {"state": {}}},
     EmbeddingStructureError, r"the optimizer state AUTOMATIC1111 saves beside a hypernetwork or embedding \(NAME.pt.optim\)"),
    ("int keys but not modules", {768: [{"weight": vectors(1, 768)}, {}]}, EmbeddingStructureError, "holds no tensors"),
]


@pytest.mark.parametrize(("label", "obj", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_structure_errors_in_pickles(tmp_path: Path, label: str, obj: Any, error: type, message: str) -> None:
    path = pt(tmp_path, obj)
    with pytest.raises(error, match=message) as info:
        read(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("label", "obj", "error", "message"), [c for c in CASES if isinstance(c[1], dict) and c[1] and all(isinstance(v, Tensor) for v in c[1].values())], ids=lambda v: v if isinstance(v, str) else "")
def test_structure_errors_in_safetensors(tmp_path: Path, label: str, obj: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        read(st(tmp_path, obj))


def test_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "learned_embeds.bin"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 3819\n")
    with pytest.raises(GitLFSPointerError) as info:
        read(path)
    assert "git-lfs" in (info.value.hint or "")


def test_html_page(tmp_path: Path) -> None:
    path = tmp_path / "learned_embeds.bin"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Hugging Face</title></head></html>")
    with pytest.raises(UnknownFormatError, match="HTML page") as info:
        read(path)
    assert "/resolve/" in (info.value.hint or "")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty file"):
        read(path)


def test_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    with pytest.raises(UnknownFormatError, match="JPEG"):
        read(path)


def test_truncated_zip(tmp_path: Path) -> None:
    data = _torchpickle.dumps({"<x>": vectors(4, 768)})
    for cut in (len(data) // 2, len(data) - 30, 40):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError):
            read(path)


def test_zip_that_is_not_torch(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    path = tmp_path / "x.pt"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CorruptFileError):
        read(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    data = _safetensors.dumps({"<x>": vectors(4, 768)})
    for cut, message in ((len(data) - 100, "ends at byte"), (20, "header needs"), (5, "not a valid safetensors file")):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(BadInputError, match=message):
            read(path)


def test_corrupt_safetensors_header(tmp_path: Path) -> None:
    body = b'{"<x>": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]'
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 3072)
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        read(path)
    body = b'{"<x>": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 3072]}}'
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 3072)
    with pytest.raises(CorruptFileError, match="declares shape"):
        read(path)


def test_unknown_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"adam_beta1: 0.9\n")
    with pytest.raises(UnknownFormatError, match="unrecognised"):
        read(path)


def test_nan_is_a_warning_unless_strict(tmp_path: Path) -> None:
    values = np.zeros((2, 768), np.float32)
    values[1, 5] = np.nan
    values[0, 0] = np.inf
    path = st(tmp_path, {"<x>": Tensor.from_numpy(values)})
    assert read(path).non_finite() == {"clip_l": 2}
    with pytest.raises(NonFiniteError, match="2 in clip_l"):
        read(path, strict=True)


def test_folder_without_embedding(tmp_path: Path) -> None:
    (tmp_path / "token_identifier.txt").write_text("<x>")
    with pytest.raises(UnknownFormatError, match="not a concept folder"):
        read(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "nope.pt")


@pytest.mark.parametrize(("force", "step"), [(False, "link"), (True, "replace")])
def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool, step: str) -> None:
    # The last step puts the finished file in place: a hard link without --force (which never
    # replaces a file another process made meanwhile), a rename with it.
    import os

    calls = []

    def boom(src: str, dst: str, **_: object) -> None:
        calls.append(dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, boom)
    with pytest.raises(OSError):
        write(sd1(token="<x>"), tmp_path / "a.safetensors", force=force)
    assert calls and list(tmp_path.iterdir()) == []


def test_safetensors_header_that_starts_like_a_pickle(tmp_path: Path) -> None:
    # A header of 0x280 bytes makes the file start with 0x80 0x02, a pickle's PROTO 2 opcode.
    meta = {"pad": "x" * (0x280 - 120)}
    data = _safetensors.dumps({"<x>": vectors(1, 768)}, meta)
    pad = 0x280 - int.from_bytes(data[:8], "little")
    data = _safetensors.dumps({"<x>": vectors(1, 768)}, {"pad": "x" * (0x280 - 120 + pad)})
    assert data[:2] == b"\x80\x02"
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    assert read(path).token == "<x>"


def test_exclusive_write_without_hard_links_still_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAT and some network shares refuse link(): the file is then checked for and renamed.
    import errno
    import os

    def no_links(src: str, dst: str, **_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write(sd1(token="<x>"), tmp_path / "a.safetensors")
    assert read(tmp_path / "a.safetensors").token == "<x>"
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
