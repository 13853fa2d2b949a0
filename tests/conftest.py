"""Shared fixtures: an isolated home for every test, paths to ../shared, the torch marker."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

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


class Run(NamedTuple):
    """One in-process run of ``conceptlib``."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``conceptlib`` in-process through ``app.main`` (the real error boundary)."""
    from conceptlib.cli import app as app_module

    def run(*args: str) -> Run:
        capsys.readouterr()
        code = app_module.main(list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh local Hub-protocol server; the client is pointed at it through HF_ENDPOINT."""
    import huggingface_hub.constants
    from hubserver import HubServer

    from conceptlib import hubclient

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a shell that exported it would
    # block every request the test makes.
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was set when huggingface_hub was imported")
    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Our own back-off (not huggingface_hub's): keep retried tests fast.
    monkeypatch.setattr(hubclient, "RETRY_BASE_DELAY", 0.01)
    try:
        yield server
    finally:
        server.stop()


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
