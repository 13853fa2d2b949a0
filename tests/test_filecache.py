"""The hash and description cache: a model given by path is read once per version of its files.

Reads are counted, never timed: calls of the hashing and token-matrix readers, and on Linux the
bytes the process read (``rchar`` in ``/proc/self/io``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib import _filecache, models
from conceptlib._filecache import FileCache, identity
from conceptlib.formats import _safetensors
from conceptlib.models import NormStats, read_model, resolve_model
from conceptlib.tensor import Tensor
from conceptlib.tiny import tiny_tokenizer_files

TOKEN_KEY = "text_model.embeddings.token_embedding.weight"


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_safetensors.dumps({k: Tensor.from_numpy(v) for k, v in tensors.items()}))


def diffusers_folder(root: Path, seed: int = 0) -> Path:
    """A diffusers SD 1.x folder as far as describing it goes: configs, tokenizer, weights."""
    rng = np.random.default_rng(seed)
    vocab = json.loads(tiny_tokenizer_files()["vocab.json"])
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"],
    }))  # fmt: skip
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 768, "max_position_embeddings": 77, "vocab_size": len(vocab)}))
    _write_safetensors(root / "text_encoder" / "model.safetensors", {TOKEN_KEY: rng.standard_normal((len(vocab), 768)).astype(np.float32)})
    (root / "tokenizer").mkdir()
    for name, text in tiny_tokenizer_files().items():
        (root / "tokenizer" / name).write_text(text)
    for part, rows in (("unet", 512), ("vae", 128)):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps({"sample_size": 8, "cross_attention_dim": 768, "in_channels": 4}))
        _write_safetensors(root / part / "diffusion_pytorch_model.safetensors", {"w": rng.standard_normal((rows, 1024)).astype(np.float32)})
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    return root


class Reads:
    """Counts the weight-file hashes and the tensors :mod:`conceptlib.models` reads (token matrices)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashed: list[str] = []
        self.matrices = 0
        hash_file: Callable[[Path], dict[str, str]] = models._hash_file
        read_tensor: Callable[..., Any] = models._safetensors_tensor

        def counted_hash(path: Path) -> dict[str, str]:
            self.hashed.append(path.name)
            return hash_file(path)

        def counted_matrix(*args: Any) -> Any:
            self.matrices += 1
            return read_tensor(*args)

        monkeypatch.setattr(models, "_hash_file", counted_hash)
        monkeypatch.setattr(models, "_safetensors_tensor", counted_matrix)

    def reset(self) -> None:
        self.hashed, self.matrices = [], 0


def _rchar() -> int | None:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("rchar:"))


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def test_a_second_read_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = diffusers_folder(tmp_path / "model")
    reads = Reads(monkeypatch)
    first = read_model(folder)
    assert sorted(reads.hashed) == ["diffusion_pytorch_model.safetensors"] * 2 + ["model.safetensors"]
    assert reads.matrices == 1
    reads.reset()
    before = _rchar()
    second = read_model(folder)
    after = _rchar()
    assert (reads.hashed, reads.matrices) == ([], 0)
    assert second.to_dict() == first.to_dict()
    if before is not None and after is not None:
        # The configs, the tokenizer and the cache files are read; no weight file is.
        assert after - before < _weight_bytes(folder) / 4
    # By path through resolve_model, and without hashes (validate's way): the same description.
    assert resolve_model(str(folder), hash_files=False).to_dict() == {**first.to_dict(), "files": {}}
    assert (reads.hashed, reads.matrices) == ([], 0)
    cache = Path(os.environ["CONCEPTLIB_HOME"]) / "cache"
    assert sorted(p.name for p in cache.glob("*.json")) == ["hashes.json", "models.json"]


def test_a_checkpoint_and_its_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v2.safetensors"
    key = "cond_stage_model.model.token_embedding.weight"
    _write_safetensors(path, {key: np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)})
    reads = Reads(monkeypatch)
    assert read_model(path).prediction_type is None  # SD 2.x single files do not say
    assert read_model(path).hashes["sha256"] and reads.hashed == ["v2.safetensors"]
    # A .yaml written beside it changes the description (AUTOMATIC1111 reads it): read again.
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: v\n")
    assert read_model(path).prediction_type == "v_prediction"
    assert reads.matrices == 2 and reads.hashed == ["v2.safetensors"]


def test_a_touched_or_replaced_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = diffusers_folder(tmp_path / "model")
    first = read_model(folder)
    reads = Reads(monkeypatch)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"

    # Touched: same bytes, a new modification time. Hashed again (the same digests).
    st = unet.stat()
    os.utime(unet, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = read_model(folder)
    assert reads.hashed == ["diffusion_pytorch_model.safetensors"]
    assert touched.files == first.files

    # Replaced by a file of the same size and time (a new download renamed over it): the inode
    # tells it apart.
    reads.reset()
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    st = unet.stat()
    replacement = unet.with_name("new.tmp")
    replacement.write_bytes(bytes(data))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, unet)
    assert unet.stat().st_size == st.st_size and unet.stat().st_mtime_ns == st.st_mtime_ns
    replaced = read_model(folder)
    assert reads.hashed == ["diffusion_pytorch_model.safetensors"]
    assert replaced.files["unet/diffusion_pytorch_model.safetensors"]["sha256"] != first.files["unet/diffusion_pytorch_model.safetensors"]["sha256"]

    # A new text encoder: a new fingerprint, read from the new matrix.
    reads.reset()
    _write_safetensors(folder / "text_encoder" / "model.safetensors", {TOKEN_KEY: np.ones((first.encoders[0].vocab_size or 0, 768), np.float32)})
    changed = read_model(folder)
    assert reads.matrices == 1 and changed.encoders[0].fingerprint != first.encoders[0].fingerprint
    assert changed.encoders[0].norms is not None and changed.encoders[0].norms.max == pytest.approx(768**0.5)


def test_a_cached_description_vouches_for_its_vocabulary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A description from the cache knows its vocabulary's hash (its stamp covered the file):
    a later command's token check parses the vocabulary without hashing it again. A vocabulary
    edited since is hashed, and no longer stands in for the one described."""
    folder = diffusers_folder(tmp_path / "model")
    read_model(folder, hash_files=False)  # the first command: described and cached
    models._vocab_cached.cache_clear()  # a new command, a new process
    models._vouched.clear()
    hashed: list[int] = []
    real_hash = models._vocab_hash

    def counted(vocab: dict[str, int]) -> str:
        hashed.append(len(vocab))
        return real_hash(vocab)

    monkeypatch.setattr(models, "_vocab_hash", counted)
    info = read_model(folder, hash_files=False)
    vocab = info.vocabulary("clip_l")
    assert vocab is not None and "<|endoftext|>" in vocab
    assert hashed == []

    # Edited behind the description's back (the same ModelInfo still in hand): hashed, refused.
    path = folder / "tokenizer" / "vocab.json"
    entries = json.loads(path.read_text())
    entries["zzzzqq</w>"] = max(entries.values()) + 1
    path.write_text(json.dumps(entries))
    assert info.vocabulary("clip_l") is None  # and no registered copy in the library to stand in
    assert hashed == [len(entries)]


@pytest.mark.parametrize("damage", [
    b"", b"{not json", b"[]", b'{"version": 1, "entries": []}', b'{"version": 999, "entries": {}}',
    b"\xff\xfe\x00", b"[" * 100_000,
])  # fmt: skip
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes) -> None:
    folder = diffusers_folder(tmp_path / "model")
    expected = read_model(folder).to_dict()
    cache = Path(os.environ["CONCEPTLIB_HOME"]) / "cache"
    for name in ("hashes.json", "models.json"):
        (cache / name).write_bytes(damage)
    reads = Reads(monkeypatch)
    assert read_model(folder).to_dict() == expected
    assert len(reads.hashed) == 3 and reads.matrices == 1
    for name in ("hashes.json", "models.json"):
        assert json.loads((cache / name).read_text())["version"] == _filecache.FORMAT_VERSION
    reads.reset()
    read_model(folder)
    assert (reads.hashed, reads.matrices) == ([], 0)


def test_an_entry_of_the_wrong_shape_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = diffusers_folder(tmp_path / "model")
    expected = read_model(folder).to_dict()
    cache = Path(os.environ["CONCEPTLIB_HOME"]) / "cache"
    for name, spoil in (("hashes.json", {"sha256": 7}), ("models.json", {"info": {"kind": "diffusers"}, "weights": []})):
        table = json.loads((cache / name).read_text())
        for entry in table["entries"].values():
            entry["value"] = spoil
        (cache / name).write_text(json.dumps(table))
    reads = Reads(monkeypatch)
    assert read_model(folder).to_dict() == expected
    assert len(reads.hashed) == 3 and reads.matrices == 1


def test_a_home_that_cannot_be_written_costs_only_the_shortcut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = diffusers_folder(tmp_path / "model")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CONCEPTLIB_HOME", str(blocker / "home"))  # under a file: nothing can be created
    reads = Reads(monkeypatch)
    assert read_model(folder).files == read_model(folder).files
    assert len(reads.hashed) == 6  # computed each time, no error


def test_norm_statistics_without_a_whole_float64_copy() -> None:
    # More rows than one block: each row's norm is the same computed in any block.
    values = np.random.default_rng(5).standard_normal((models._NORM_ROWS * 2 + 17, 96)).astype(np.float16)
    stats = NormStats.of(Tensor.from_numpy(values))
    norms = np.linalg.norm(values.astype(np.float32).astype(np.float64), axis=1)
    p01, median, p99 = np.percentile(norms, [1, 50, 99])
    assert stats.to_dict() == {
        "count": norms.size, "mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
        "p01": float(p01), "median": float(median), "p99": float(p99), "max": float(norms.max()),
    }  # fmt: skip


def _writer(home: str, worker: int, count: int) -> None:
    cache = FileCache(Path(home), "hashes", lambda value: isinstance(value, dict))
    for i in range(count):
        cache.put(f"/models/{worker}/{i}", [i, worker, 0], {"sha256": f"{worker:032x}{i:032x}"})


def test_concurrent_writers_all_land(tmp_path: Path) -> None:
    home, workers, count = tmp_path / "home", 4, 25
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(home), w, count)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    table = json.loads((home / "cache" / "hashes.json").read_text())
    assert len(table["entries"]) == workers * count
    cache = FileCache(home, "hashes", lambda value: isinstance(value, dict))
    assert cache.get("/models/3/24", [24, 3, 0]) == {"sha256": f"{3:032x}{24:032x}"}
    assert cache.get("/models/3/24", [24, 3, 1]) is None  # another stamp: not this entry
    assert not list((home / "cache").glob("*.tmp*"))


def test_the_oldest_entries_go_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_filecache, "MAX_ENTRIES", 3)
    cache = FileCache(tmp_path, "hashes", lambda value: True)
    for i in range(5):
        cache.put(f"k{i}", [i], {"n": i})
    assert [cache.get(f"k{i}", [i]) for i in range(5)] == [None, None, {"n": 2}, {"n": 3}, {"n": 4}]


def test_identity_is_size_time_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    st = path.stat()
    assert identity(path) == [3, st.st_mtime_ns, st.st_ino]
