"""Similar and near-duplicate concepts: the set similarity, signatures in the index, the commands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.embedding import Embedding
from conceptlib.formats import read, write
from conceptlib.library import Library
from conceptlib.similarity import from_bytes, set_similarity, signature, to_bytes
from conceptlib.tensor import Tensor

EASY_PT = "fgjd4j23423f+sd+EasyNegative.pt"
BAD_ARTIST = "mayaru-ai+stable-diffusion-bestconfig+bad-artist.pt"


def _emb(rows: Any, token: str = "<t>", key: str = "clip_l") -> Embedding:
    return Embedding({key: Tensor.from_numpy(np.asarray(rows))}, token=token)


def _rows(seed: int, n: int = 4, width: int = 768) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.02).astype(np.float32)


def test_the_set_similarity() -> None:
    a = _rows(0)
    assert set_similarity(_emb(a), _emb(a)) == pytest.approx(1.0)
    # Order, scale, dtype and repeated vectors do not change what the set points at.
    assert set_similarity(_emb(a), _emb(a[::-1] * 3)) == pytest.approx(1.0)
    assert set_similarity(_emb(a), _emb(a.astype(np.float16))) > 0.9999
    assert set_similarity(_emb(a), _emb(np.concatenate([a, a[:1]]))) == pytest.approx(1.0)
    # Symmetric; unrelated vectors score near 0; another training step scores high, not 1.
    b = _rows(1)
    assert set_similarity(_emb(a), _emb(b)) == pytest.approx(set_similarity(_emb(b), _emb(a)))
    assert abs(set_similarity(_emb(a), _emb(b)) or 0) < 0.15
    step = a + _rows(2) * 0.2
    assert 0.95 < (set_similarity(_emb(a), _emb(step)) or 0) < 0.999
    # Nothing in common: no score. SDXL: each encoder, averaged.
    assert set_similarity(_emb(a), _emb(_rows(0, width=1024), key="clip_h")) is None
    xl = Embedding({"clip_l": Tensor.from_numpy(a), "clip_g": Tensor.from_numpy(_rows(3, width=1280))})
    half = Embedding({"clip_l": Tensor.from_numpy(a), "clip_g": Tensor.from_numpy(_rows(4, width=1280))})
    assert set_similarity(xl, half) == pytest.approx(0.5 * (1.0 + set_similarity(_emb(_rows(3, width=1280), key="clip_g"), _emb(_rows(4, width=1280), key="clip_g"))))  # type: ignore[operator]


def test_signatures_round_trip_and_point_where_the_set_points() -> None:
    a = _rows(0)
    sig = signature(_emb(a))["clip_l"]
    assert np.linalg.norm(sig) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(from_bytes(to_bytes(sig)), sig)
    assert from_bytes(b"abc").size == 0  # a damaged blob reads as empty, never as garbage floats
    assert float(signature(_emb(a[::-1] * 7))["clip_l"] @ sig) == pytest.approx(1.0, abs=1e-6)
    assert not signature(_emb(np.zeros((2, 768), np.float32)))["clip_l"].any()


def _signature_rows(home: Path) -> int:
    with sqlite3.connect(home / "index.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM signatures").fetchone()[0])


def test_a_real_file_saved_again_in_fp16_is_a_near_duplicate(shared_embeddings: Path, tmp_path: Path, cli: Any) -> None:
    easy = read(shared_embeddings / EASY_PT)
    copy = Embedding({k: Tensor.from_numpy(v.to_float32().astype(np.float16)) for k, v in easy.vectors.items()}, token="easy16")
    write(copy, tmp_path / "easy16.safetensors")
    assert cli("add", str(shared_embeddings / EASY_PT), str(shared_embeddings / BAD_ARTIST)).exit_code == 0
    run = cli("add", str(tmp_path / "easy16.safetensors"))
    assert run.exit_code == 0
    assert run.stdout.splitlines()[-1] == "near-dup   easy16  (near-duplicate of fgjd4j23423f-sd-easynegative (1.00))"
    run = cli("add", str(tmp_path / "easy16.safetensors"), "--name", "again", "--token", "again", "--json")
    assert json.loads(run.stdout)["duplicates"][0]["existing"] == "easy16"  # exact: the content-hash rule

    run = cli("dedupe")
    assert run.exit_code == 0 and run.stdout == "1.0000  easy16\n1.0000  fgjd4j23423f-sd-easynegative\n"
    assert run.stderr == "1 group of near-duplicates at 0.95.\n"
    run = cli("similar", "fgjd4j23423f-sd-easynegative", "--json")
    found = json.loads(run.stdout)
    assert [m["name"] for m in found] == ["easy16", "bad-artist"] and found[0]["score"] > 0.9999 > found[1]["score"]
    assert cli("similar", "fgjd4j23423f-sd-easynegative", "--top", "0").stderr.startswith("Error: --top: must be")
    assert cli("dedupe", "--threshold", "1.5").exit_code == 2


def test_signatures_live_in_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "lib"
    library = Library.open(home)
    base = _rows(0)
    for name, rows in (("a", base), ("b", _rows(1)), ("c", base[::-1] + _rows(5) * 0.05)):
        write(_emb(rows, token=f"<{name}>"), tmp_path / f"{name}.safetensors")
        library.add(tmp_path / f"{name}.safetensors")
    # add signs what it adds and compares it with what is signed.
    assert _signature_rows(home) == 3
    assert [m.name for m in library.similar("a")] == ["c", "b"]
    [group] = library.near_duplicates(threshold=0.9)
    assert [m.name for m in group] == ["a", "c"]

    # The vectors change: the old signature is stale and a new one is made; the same after a re-index.
    write(_emb(_rows(9), token="<c>"), tmp_path / "c2.safetensors")
    library.update("c", tmp_path / "c2.safetensors")
    assert library.near_duplicates(threshold=0.9) == []
    library.reindex()
    assert _signature_rows(home) == 0
    assert [m.name for m in library.similar("b", top=1)] in (["a"], ["c"])
    assert _signature_rows(home) == 3
    library.close()

    # Signatures are read, not recomputed: a second comparison decodes only the candidates.
    from conceptlib.library import _similar

    computed: list[str] = []
    original = _similar.signature
    monkeypatch.setattr(_similar, "signature", lambda emb: computed.append(emb.token) or original(emb))
    library = Library.open(home)
    library.similar("a")
    library.near_duplicates()
    assert computed == []
    library.close()


def test_a_damaged_concept_is_left_out(tmp_path: Path) -> None:
    home = tmp_path / "lib"
    library = Library.open(home)
    for name, rows in (("a", _rows(0)), ("b", _rows(0) * 2 + _rows(3) * 0.01)):
        write(_emb(rows, token=f"<{name}>"), tmp_path / f"{name}.safetensors")
        library.add(tmp_path / f"{name}.safetensors")
    library.reindex()  # no signatures: the next comparison must read the files
    embedding = home / "concepts" / "b" / "embedding.safetensors"
    data = bytearray(embedding.read_bytes())
    data[-1] ^= 0x40
    embedding.write_bytes(bytes(data))
    assert library.near_duplicates() == []
    assert library.similar("a") == []
    from conceptlib.errors import ConceptDamagedError

    with pytest.raises(ConceptDamagedError):
        library.similar("b")
    library.close()
