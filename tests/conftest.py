"""Shared fixtures: an isolated home for every test, paths to ../shared, the torch marker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO.parent / "shared").resolve()  # models code reports resolved paths
SHARED_EMBEDDINGS = SHARED / "data" / "embeddings"
SHARED_MODELS = SHARED / "data" / "models"

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own library home and Hugging Face cache; nothing touches the network."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("CONCEPTLIB_HOME", str(base / "home"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("CONCEPTLIB_DEBUG", raising=False)
    monkeypatch.delenv("CONCEPTLIB_DATABASE_URL", raising=False)


@pytest.fixture
def shared_embeddings() -> Path:
    """../shared/data/embeddings, or skip when this checkout has no shared/ beside it."""
    if not SHARED_EMBEDDINGS.is_dir():
        pytest.skip("../shared/data/embeddings is not present (a fresh clone)")
    return SHARED_EMBEDDINGS


@pytest.fixture
def shared_models() -> Path:
    """../shared/data/models, or skip when absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/data/models is not present (a fresh clone)")
    return SHARED_MODELS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs the torch extra: pip install 'conceptlib[torch]'")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
