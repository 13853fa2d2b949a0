"""Hypernetworks as library items (add, list, show, export, verify, validate) and in render prompts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_hypernet import _a1111, _save, _unet_network
from test_render import parse_parameters, pixels, same_image

import factory
from conceptlib import hypernet
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    ConceptDoesNotFitError,
    ConceptNotFoundError,
    IsHypernetworkError,
    UsageError,
)
from conceptlib.formats import write
from conceptlib.library import Library
from conceptlib.tensor import Tensor

# --- the library --------------------------------------------------------------------------------


def _embedding_file(folder: Path, token: str, seed: int) -> Path:
    path = folder / f"{token.strip('<>')}.safetensors"
    write(Embedding(factory.sd1(1, seed=seed).vectors, token=token), path)
    return path


def test_added_beside_embeddings_and_listed_by_kind(tmp_path: Path, cli: Any) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    _save(folder, _a1111(), "anime.pt")
    # An embedding whose bare token is the same word: different kinds, no clash.
    _embedding_file(folder, "anime", seed=1)
    added = cli("add", str(folder), "--tag", "art")
    assert added.exit_code == 0, added.output
    assert added.stdout.splitlines() == [
        "added      anime  (anime, SD 1.x, hypernetwork, widths 320,768; call it as <hypernet:anime:1>)",
        "added      anime-2  (anime, SD 1.x, 1 vector)",
    ]
    listed = cli("list", "--kind", "hypernetwork")
    assert listed.exit_code == 0
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["NAME", "TOKEN", "TYPE", "BASE", "VECTORS", "TAGS"]
    assert len(rows) == 2 and rows[1].split()[1:] == ["anime", "style", "SD", "1.x", "0", "art"]
    kinds = {r["name"]: r["kind"] for r in json.loads(cli("list", "--json").stdout)}
    assert kinds == {"anime": "hypernetwork", "anime-2": "embedding"}
    assert cli("list", "--kind", "embedding", "--json").stdout.count('"kind": "embedding"') == 1
    bad = cli("list", "--kind", "lora")
    assert (bad.exit_code, bad.stderr.strip()) == (2, "Error: unknown kind 'lora' (hint: use one of: embedding, hypernetwork)")

    with Library.open() as lib:
        name = "anime"
        concept = lib.show(name)
        assert (concept.kind, concept.family, concept.vectors, concept.format) == ("hypernetwork", "sd1", 0, "hypernetwork-a1111")
        assert (concept.checkpoint_hash, concept.checkpoint_name, concept.steps) == ("a9263745", "v1-5-pruned", 3000)
        assert concept.metadata["hypernetwork_widths"] == "320,768" and concept.metadata["activation_func"] == "relu"
        assert concept.file_sha256 == hashlib.sha256((folder / "anime.pt").read_bytes()).hexdigest()
        network = lib.hypernetwork(name)
        assert network.content_hash() == hypernet.read(folder / "anime.pt").content_hash() == concept.content_hash
        # Readers of vectors refuse it by name instead of misreading it.
        with pytest.raises(IsHypernetworkError, match="is a hypernetwork, not an embedding"):
            lib.embedding(name)
        # The concept lookup of render never offers a hypernetwork.
        assert [s.kind for s in lib.list(kind="embedding")] == ["embedding"]
    shown = cli("show", name)
    assert "  kind          hypernetwork (a1111 layout); call it as <hypernet:anime:1>" in shown.stdout
    assert "  widths        320,768" in shown.stdout and "  structure     [1, 2, 1], relu" in shown.stdout
    # The same file again is a duplicate.
    again = cli("add", str(folder / "anime.pt"))
    assert again.exit_code == 0 and "duplicate" in again.stdout


def test_words_are_unique_among_hypernetworks_and_stay_plain(tmp_path: Path, cli: Any) -> None:
    first = _save(tmp_path, _a1111(), "anime.pt")
    other = tmp_path / "b"
    other.mkdir()
    swapped = _a1111()
    swapped[320] = swapped[320][::-1]  # other tensors, the same word
    second = _save(other, swapped, "anime.pt")
    assert cli("add", str(first)).exit_code == 0
    clash = cli("add", str(second))
    assert (clash.exit_code, clash.stderr.strip()) == (
        2,
        f"Error: {second}: the token 'anime' is already used by 'anime' (hypernetworks of SD 1.x) (hint: pass --token with another word for this concept)",
    )
    assert cli("add", str(second), "--token", "anime2", "--name", "anime-two").exit_code == 0
    renamed = cli("rename", "anime-two", "--token", "<x>")
    assert renamed.exit_code == 2 and "cannot be called as <hypernet:<x>:1>" in renamed.stderr
    taken = cli("rename", "anime-two", "--token", "Anime")
    assert taken.exit_code == 2 and "anime" in taken.stderr
    assert cli("tag", "anime-two", "--add", "ink").exit_code == 0
    assert cli("rename", "anime-two", "--token", "ink").exit_code == 0
    assert [r["token"] for r in json.loads(cli("list", "--kind", "hypernetwork", "--json").stdout)] == ["anime", "ink"]
    assert cli("remove", "anime-two", "--yes").exit_code == 0
    assert cli("list", "--kind", "hypernetwork").stdout.count("\n") == 2


def test_bad_hypernetworks_are_rejected_one_line_each(tmp_path: Path, cli: Any) -> None:
    broken = _a1111()
    weight = broken[768][0]["linear.0.weight"].to_float32().copy()
    weight[0, 0] = np.nan
    broken[768][0]["linear.0.weight"] = Tensor.from_numpy(weight)
    nan = _save(tmp_path, broken, "nan.pt")
    chain = _a1111()
    chain[768][1]["linear.2.weight"] = Tensor.from_numpy(np.zeros((768, 100), np.float32))
    wrong = _save(tmp_path, chain, "chain.pt")
    fine = _save(tmp_path, _a1111(), "fine.pt")
    result = cli("add", str(nan), str(wrong), str(fine), "--json")
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["added"]] == ["fine"]
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert "NaN or infinite values: 768.0 (1)" in reasons["nan.pt"]
    assert "linear.2 takes 100 values where 1536 arrive" in reasons["chain.pt"]


def test_exported_where_automatic1111_and_comfyui_look(tmp_path: Path, cli: Any) -> None:
    source = _save(tmp_path, _a1111(), "anime.pt")
    assert cli("add", str(source)).exit_code == 0
    out = tmp_path / "models" / "hypernetworks"
    exported = cli("export", "anime", "--for", "comfyui", "--out", str(out), "--json")
    assert exported.exit_code == 0, exported.output
    (entry,) = json.loads(exported.stdout)
    assert entry["prompt"] == "<hypernet:anime:1>" and Path(entry["files"][0]) == out / "anime.pt"
    back = hypernet.read(out / "anime.pt")
    assert back.content_hash() == hypernet.read(source).content_hash() and back.layout == "a1111" and back.missing == []
    assert back.fields["activation_func"] == "relu" and back.fields["step"] == 3000
    refused = cli("export", "anime", "--for", "invokeai", "--out", str(tmp_path / "inv"))
    assert refused.exit_code == 2 and refused.stderr.startswith("Error: anime is a hypernetwork, which --for invokeai cannot hold")
    assert not (tmp_path / "inv").exists()
    assert cli("export", "anime", "--format", "diffusers", "--out", str(tmp_path / "d")).exit_code == 2


@pytest.mark.torch
def test_the_exported_file_is_what_automatic1111_loads(tmp_path: Path, cli: Any) -> None:
    import torch

    assert cli("add", str(_save(tmp_path, _a1111(), "anime.pt"))).exit_code == 0
    assert cli("export", "anime", "--for", "a1111", "--out", str(tmp_path / "out")).exit_code == 0
    # AUTOMATIC1111's Hypernetwork.load: torch.load, integer keys of pairs of state dicts, fields.
    state = torch.load(tmp_path / "out" / "anime.pt", map_location="cpu", weights_only=True)
    assert sorted(k for k in state if isinstance(k, int)) == [320, 768]
    assert state["layer_structure"] == [1, 2, 1] and state["activate_output"] is False
    key_module = state[768][0]
    assert set(key_module) == {"linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias"}
    assert torch.equal(key_module["linear.0.weight"], torch.from_numpy(_a1111()[768][0]["linear.0.weight"].to_float32()))


def test_verify_repair_and_reindex_know_the_hypernetwork_file(tmp_path: Path, cli: Any) -> None:
    assert cli("add", str(_save(tmp_path, _a1111(), "anime.pt"))).exit_code == 0
    with Library.open() as lib:
        folder = lib.folder("anime")
    canonical = folder / "hypernetwork.safetensors"
    good = canonical.read_bytes()
    middle = len(good) // 2
    canonical.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])
    damaged = cli("verify")
    assert damaged.exit_code == 1 and "hypernetwork.safetensors does not match its sha256" in damaged.output
    repaired = cli("verify", "--repair")
    assert repaired.exit_code == 0 and "rebuilt anime/hypernetwork.safetensors from original/anime.pt" in repaired.output, repaired.output
    assert canonical.read_bytes() == good
    (Path(str(folder.parent.parent)) / "index.sqlite").unlink()
    assert cli("reindex").exit_code == 0
    assert json.loads(cli("list", "--json").stdout)[0]["kind"] == "hypernetwork"


def test_a_library_from_before_kinds_migrates(tmp_path: Path) -> None:
    from conceptlib.registry.migrations import migrate
    from conceptlib.registry.store import create_engine

    home = tmp_path / "home"
    path = _embedding_file(tmp_path, "<old>", seed=3)
    with Library.open(home) as lib:
        lib.add(path).one()
    db = home / "index.sqlite"
    connection = sqlite3.connect(db)
    connection.execute("ALTER TABLE concepts DROP COLUMN kind")
    connection.execute("DELETE FROM _conceptlib_migrations WHERE name = 'm006_kinds'")
    connection.commit()
    connection.close()
    assert migrate(create_engine(f"sqlite:///{db}")) == ["m006_kinds"]
    with Library.open(home) as lib:
        (summary,) = lib.list()
        assert summary.kind == "embedding" and lib.show("old").to_dict().get("kind") is None  # manifests unchanged


# --- validation and rendering ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hyperworld(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny SD 1.x model (attention widths: text 768, self-attention 32), a library with a
    concept and three hypernetworks, and a loaded pipeline."""
    from conceptlib.models import resolve_model
    from conceptlib.render import load_pipeline
    from conceptlib.tiny import create_tiny

    base = tmp_path_factory.mktemp("hyper")
    model = create_tiny(base / "tiny-sd1", "sd1", seed=0)
    home = base / "home"
    files = base / "files"
    files.mkdir()
    hypernet.write(_unet_network((32, 768), 1, "relu", norm=True, activate_output=False), files / "ink.pt")
    hypernet.write(_unet_network((768,), 2, "swish"), files / "Pastel.pt")
    hypernet.write(_unet_network((1024,), 3, "relu"), files / "wide.pt")
    token = files / "toy.safetensors"
    vectors = {k: Tensor.from_numpy(v.to_float32() * 8) for k, v in factory.sd1(2, seed=1).vectors.items()}
    write(Embedding(vectors, token="<toy>"), token)
    with Library.open(home) as lib:
        report = lib.add([files])
        assert sorted(c.name for c in report.added) == ["ink", "pastel", "toy", "wide"], report.rejected
    info = resolve_model(model)
    return {"home": home, "model": info, "pipe": load_pipeline(resolve_model(model, hash_files=False)), "files": files}


def _render(world: dict[str, Any], out: Path, prompts: list[str], **kw: Any) -> Any:
    from conceptlib.render import RenderConfig, render

    options: dict[str, Any] = {"steps": 2, "size": (32, 32), "out": out, "home": world["home"], "seed": 5}
    options.update(kw)
    return render(RenderConfig(model=world["model"].path, prompts=prompts, **options), pipeline=world["pipe"])


@pytest.mark.torch
def test_validated_against_the_model_attention_widths(hyperworld: dict[str, Any], cli: Any) -> None:
    from conceptlib.models import attention_widths
    from conceptlib.validate import validate_hypernetwork

    model = hyperworld["model"]
    assert attention_widths(model) == (768, (32,))
    with Library.open(hyperworld["home"]) as lib:
        ink = validate_hypernetwork(lib.hypernetwork("ink"), model)
        pastel = validate_hypernetwork(lib.hypernetwork("pastel"), model)
        wide = validate_hypernetwork(lib.hypernetwork("wide"), model)
    assert [f.code for f in ink] == []
    assert [f.code for f in pastel] == []
    assert [(f.code, f.severity) for f in wide] == [("width-mismatch", "error")]
    assert wide[0].message == "hypernetwork widths 1024 fit no attention of this SD 1.x model (cross-attention 768, self-attention 32): it would change nothing"
    self_only = validate_hypernetwork(_unet_network((32, 1024), 4, "relu"), model)
    assert [f.code for f in self_only] == ["cross-attention-untouched", "widths-unused"]
    ambiguous = hypernet.interpret({768: _a1111()[768], "activation_func": "relu"}, "x.pt")
    assert "activate-output-ambiguous" in [f.code for f in validate_hypernetwork(ambiguous, model)]
    # Weights that are not the declared network: AUTOMATIC1111 could not load them.
    declared_wider = hypernet.interpret({**_a1111(), "layer_structure": [1, 4, 1]}, "y.pt")
    (mismatch,) = [f for f in validate_hypernetwork(declared_wider, model) if f.code == "structure-mismatch"]
    assert mismatch.message.startswith("width 320 has layers 640, 320 wide, not what its layer_structure [1, 4, 1] makes")
    declared_norm = hypernet.interpret({**_a1111(), "is_layer_norm": True}, "z.pt")
    assert "structure-mismatch" in [f.code for f in validate_hypernetwork(declared_norm, model)]
    assert [f.code for f in validate_hypernetwork(hypernet.read(hyperworld["files"] / "ink.pt"), model)] == []
    result = cli("validate", "ink", str(hyperworld["files"] / "wide.pt"), "--model", str(model.path), "--home", str(hyperworld["home"]), "--json")
    assert result.exit_code == 1
    results = {Path(r["target"]).name: r for r in json.loads(result.stdout)["results"]}
    assert results["ink"]["ok"] and results["ink"]["kind"] == "hypernetwork" and results["ink"]["widths"] == [32, 768]
    assert not results["wide.pt"]["ok"] and results["wide.pt"]["findings"][0]["code"] == "width-mismatch"


@pytest.mark.torch
def test_applied_in_prompts_as_automatic1111_applies_them(hyperworld: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from conceptlib.hypernet_apply import applied

    pipe = hyperworld["pipe"]
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = _render(hyperworld, tmp_path / "plain", ["a <toy> on a table"])
    off = _render(hyperworld, tmp_path / "off", ["a <toy> on a table<hypernet:ink:0>"])
    on = _render(hyperworld, tmp_path / "on", ["a <toy> on a table<hypernet:INK:0.8>"])
    # Multiplier 0 is exactly the image without it; the phrase is gone from the text.
    assert np.array_equal(pixels(off.images[0].path), pixels(plain.images[0].path))
    assert not same_image(on.images[0].path, plain.images[0].path)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    # The same pixels as the pipeline called by hand on the text without the phrase, with the
    # network in front of every attention's key and value.
    with Library.open(hyperworld["home"]) as lib:
        ink = lib.hypernetwork("ink")
    from conceptlib.render import load_concepts, resolve_concepts, unload_concepts

    concepts = resolve_concepts(["a <toy> on a table"], hyperworld["model"], home=hyperworld["home"])
    loaded = load_concepts(pipe, concepts.used, {"clip_l": ("tokenizer", "text_encoder")})
    try:
        with torch.no_grad(), applied(pipe.unet, [(ink, 0.8)]):
            by_hand = pipe(
                prompt=[concepts.expand("a <toy> on a table")[0]], num_inference_steps=2, guidance_scale=7.5, width=32, height=32,
                generator=[torch.Generator().manual_seed(5)], output_type="np",
            ).images[0]
    finally:
        unload_concepts(loaded)
    assert np.abs(np.round(by_hand * 255).astype(int) - pixels(on.images[0].path).astype(int)).max() <= 1

    _prompt, _negative, params = parse_parameters(on.images[0].parameters)
    assert _prompt == "a <toy> on a table<hypernet:INK:0.8>"
    assert (params["Hypernet"], params["Hypernet strength"]) == ("ink", "0.8")
    sha = (hyperworld["home"] / "concepts" / "ink" / "original" / "ink.pt").read_bytes()
    assert params["Hypernet hashes"] == f"ink: {hashlib.sha256(sha).hexdigest()[:10]}"
    assert params["TI hashes"].startswith("toy: ")
    manifest = json.loads(on.manifest.read_text())
    assert [h["name"] for h in manifest["hypernetworks"]] == ["ink"] and manifest["hypernetworks"][0]["widths"] == [32, 768]
    assert manifest["images"][0]["hypernetworks"] == [{"name": "ink", "multiplier": 0.8}]


@pytest.mark.torch
def test_stacked_per_prompt_and_run_wide(hyperworld: dict[str, Any], tmp_path: Path) -> None:
    prompts = ["a house<hypernet:ink:0.7><hypernet:pastel:0.5>", "a house", "a house<hypernet:pastel:0.5><hypernet:ink:0.7>", "a house<hypernet:ink:0.7>"]
    batched = _render(hyperworld, tmp_path / "batched", prompts, batch_size=4)
    alone = [_render(hyperworld, tmp_path / f"alone{i}", [p], seed=5 + i) for i, p in enumerate(prompts)]
    # Every image is the one its prompt gives alone, whatever else shared its run.
    for image, single in zip(batched.images, alone, strict=True):
        assert same_image(image.path, single.images[0].path), image.prompt
    assert [i.hypernetworks for i in batched.images] == [[("ink", 0.7), ("pastel", 0.5)], [], [("pastel", 0.5), ("ink", 0.7)], [("ink", 0.7)]]
    # Order matters: each network transforms what the one before it gave.
    assert not same_image(batched.images[0].path, _render(hyperworld, tmp_path / "swap", [prompts[2]], seed=5).images[0].path)
    # Run-wide networks come after the prompt's and are recorded as AUTOMATIC1111 records its own.
    wide = _render(hyperworld, tmp_path / "wide", ["a house<hypernet:ink:0.7>"], hypernets=["pastel:0.5"])
    assert same_image(wide.images[0].path, batched.images[0].path)
    prompt, _negative, params = parse_parameters(wide.images[0].parameters)
    assert prompt == "a house<hypernet:ink:0.7><hypernet:Pastel:0.5>"
    assert (params["Hypernet"], params["Hypernet strength"]) == ("ink, Pastel", "0.7, 0.5")
    # A file outside the library works too, named by its stem (its bytes hashed as AUTOMATIC1111 does).
    by_path = _render(hyperworld, tmp_path / "path", ["a house<hypernet:ink:0.7>"], hypernets=[f"{hyperworld['files'] / 'Pastel.pt'}:0.5"])
    assert same_image(by_path.images[0].path, wide.images[0].path)
    params = parse_parameters(by_path.images[0].parameters)[2]
    assert params["Hypernet hashes"].endswith(f"Pastel: {hashlib.sha256((hyperworld['files'] / 'Pastel.pt').read_bytes()).hexdigest()[:10]}")
    with pytest.raises(FileNotFoundError):
        _render(hyperworld, tmp_path / "never", ["a house"], hypernets=[str(tmp_path / "missing.pt")])


@pytest.mark.torch
def test_hypernetwork_mistakes_stop_before_any_image(hyperworld: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    cases = [
        (["a <hypernet:inc>"], {}, ConceptNotFoundError, "no concept named '<hypernet:inc>' in the library"),
        (["a <hypernet:ink:x>"], {}, UsageError, "prompt line 1: the hypernetwork multiplier 'x' is not a number"),
        (["a <hypernet:ink:1e9>"], {}, UsageError, "from -100 to 100"),
        (["a <hypernet:>"], {}, UsageError, "names no hypernetwork"),
        (["a cat"], {"negative": "<hypernet:ink>"}, UsageError, "the negative prompt of line 1 names a hypernetwork"),
        (["a cat"], {"hypernets": [":2"]}, UsageError, "names no hypernetwork"),
        (["a <hypernet:wide>"], {}, ConceptDoesNotFitError, "fit no attention of this SD 1.x model"),
        (["a <hypernet:toy>"], {}, ConceptNotFoundError, "<hypernet:toy>"),
    ]
    for prompts, options, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(")):
            _render(hyperworld, tmp_path / "never", prompts, **options)
    assert not (tmp_path / "never").exists()
    run = cli("render", "a cat", "--hypernet", "nope", "-m", str(hyperworld["model"].path), "--home", str(hyperworld["home"]), "--out", str(tmp_path / "x"))
    assert (run.exit_code, run.stderr.strip()) == (2, "Error: no concept named '<hypernet:nope>' in the library (hint: run `conceptlib list --kind hypernetwork`, or add its file: conceptlib add NAME.pt)")


# --- the Hub ---------------------------------------------------------------------------------------


def test_pushed_with_a_card_and_pulled_back(local_hub: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import yaml

    from conceptlib import hub as hubmod

    local_hub.add_user("hf_test", "alice")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    picture = tmp_path / "sample.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(picture)
    with Library.open(tmp_path / "home") as lib:
        lib.add(_save(tmp_path, _a1111(), "anime.pt"), images=[picture], description="Ink and paper.").one()
        pushed = hubmod.push(lib, "anime", "alice/anime")
        files = local_hub.files("alice/anime")
        assert sorted(f for f in files if f != ".gitattributes") == ["README.md", "anime.pt", "concept_images/0.png"]
        assert pushed.files == ["anime.pt", "concept_images/0.png", "README.md"]
        card = files["README.md"].decode()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["base_model"] == hubmod.BASE_MODELS["sd1"] and "hypernetwork" in meta["tags"] and meta["license"] == "mit"
        assert "Put `anime.pt` in `models/hypernetworks/` (AUTOMATIC1111 and ComfyUI) and call it in a prompt as `<hypernet:anime:1>`" in card
        assert "conceptlib render 'a portrait <hypernet:anime:0.8>' --model MODEL" in card and "Ink and paper." in card
        (tmp_path / "got.pt").write_bytes(files["anime.pt"])
        assert hypernet.read(tmp_path / "got.pt").content_hash() == lib.show("anime").content_hash
        # Unchanged: no new commit. Renamed word: the old file goes in the same commit.
        assert hubmod.push(lib, "anime", "alice/anime").status == "unchanged"
        lib.rename("anime", token="ink")
        again = hubmod.push(lib, "anime", "alice/anime")
        assert again.removed == ["anime.pt"] and "ink.pt" in local_hub.files("alice/anime")
        with pytest.raises(UsageError, match="--with-bin"):
            hubmod.push(lib, "anime", "alice/anime", include_bin=True)
    with Library.open(tmp_path / "elsewhere") as other:
        result = hubmod.pull(other, "alice/anime")
        assert (result.status, result.name, result.layout) == ("added", "anime", "a1111")
        concept = other.show("anime")
        assert (concept.kind, concept.token, concept.source["repo_id"]) == ("hypernetwork", "ink", "alice/anime")
        assert concept.content_hash == hypernet.read(tmp_path / "got.pt").content_hash() and len(concept.images) == 1
        assert hubmod.pull(other, "alice/anime").status == "unchanged"
        # A new revision replaces the network and keeps the old one's hash in the history.
        newer = _a1111(step=4000)
        newer[320] = newer[320][::-1]
        local_hub.commit("alice/anime", {"ink.pt": hypernet.dumps(hypernet.interpret(newer, "x.pt"), "a1111")})
        updated = hubmod.pull(other, "alice/anime")
        assert (updated.status, updated.previous_content_hash) == ("updated", concept.content_hash)
        after = other.show("anime")
        assert after.kind == "hypernetwork" and after.steps == 4000 and [h["content_hash"] for h in after.history] == [concept.content_hash]
        assert other.hypernetwork("anime").content_hash() == after.content_hash and len(after.images) == 1
        assert other.verify().ok


@pytest.mark.torch
def test_previews_with_a_hypernetwork(hyperworld: dict[str, Any], tmp_path: Path, cli: Any) -> None:
    from conceptlib.preview import preview

    common = {"model": hyperworld["model"].path, "home": hyperworld["home"], "steps": 2, "size": (32, 32), "pipeline": hyperworld["pipe"]}
    plain = preview(["toy"], out=tmp_path / "plain", **common)
    inked = preview(["toy"], out=tmp_path / "inked", hypernets=["ink:0.9"], **common)
    assert plain.exit_code == inked.exit_code == 0
    (ours,), (theirs,) = inked.items, plain.items
    assert [p.name for p in ours.images] == [p.name for p in theirs.images]
    assert all(not same_image(a, b) for a, b in zip(ours.images, theirs.images, strict=True))
    from PIL import Image

    with Image.open(ours.images[0]) as image:
        _prompt, _negative, params = parse_parameters(image.text["parameters"])  # type: ignore[attr-defined]
    assert (params["Hypernet"], params["Hypernet strength"]) == ("ink", "0.9")
    with pytest.raises(ConceptDoesNotFitError, match="fit no attention"):
        preview(["toy"], out=tmp_path / "wide", hypernets=["wide"], **common)
    missing = cli("preview", "toy", "-m", str(hyperworld["model"].path), "--home", str(hyperworld["home"]), "--hypernet", "nope", "--out", str(tmp_path / "x"))
    assert missing.exit_code == 2 and "no concept named '<hypernet:nope>'" in missing.stderr


# --- the gallery -------------------------------------------------------------------------------------

def _gallery_library(tmp_path: Path) -> Library:
    lib = Library.open(tmp_path / "home")
    lib.add(_save(tmp_path, _a1111(), "anime.pt"), tags=["art"]).one()
    lib.add(_embedding_file(tmp_path, "<toy>", seed=2)).one()
    return lib


def test_hypernetworks_have_cards_in_the_gallery(tmp_path: Path) -> None:
    from conceptlib.gallery import build

    with _gallery_library(tmp_path) as lib:
        report = build(lib, tmp_path / "site")
        assert report.items == 2 and report.skipped == []
        items = {i["name"]: i for i in json.loads((tmp_path / "site" / "index.json").read_text())["items"]}
        anime = items["anime"]
        assert (anime["kind"], items["toy"]["kind"], anime["widths"]) == ("hypernetwork", "concept", "320,768")
        assert anime["snippets"]["a1111"] == "<hypernet:anime:1>" and list(anime["downloads"]) == ["a1111"]
        [exported] = lib.export("anime", None, tmp_path / "ui", target="a1111")
        assert (tmp_path / "site" / anime["downloads"]["a1111"]).read_bytes() == exported.files[0].read_bytes()
        assert anime["images"][0].get("weights") is True
        page = (tmp_path / "site" / "items" / "anime.html").read_text()
        assert "put it in <code>models/hypernetworks/</code>" in page and "<th scope=\"row\">widths</th><td>320,768 (float32)</td>" in page



@pytest.mark.torch
def test_sdxl_hypernetworks_render_too(tmp_path: Path) -> None:
    """SDXL's cross-attention reads both encoders' states (2048 wide); its blocks attend at their own widths."""
    from conceptlib.models import attention_widths, resolve_model
    from conceptlib.tiny import create_tiny

    model = resolve_model(create_tiny(tmp_path / "tiny-sdxl", "sdxl", seed=0))
    cross, selves = attention_widths(model)
    assert cross == 2048
    hypernet.write(_unet_network((*selves, 2048), 5, "relu"), tmp_path / "xl-ink.pt")
    with Library.open(tmp_path / "home") as lib:
        added = lib.add(tmp_path / "xl-ink.pt").one()
    assert (added.kind, added.family) == ("hypernetwork", "sdxl")
    from conceptlib.render import RenderConfig, render

    def run(prompt: str, out: str) -> Any:
        return render(RenderConfig(model=model.path, prompts=[prompt], steps=2, size=(32, 32), out=tmp_path / out, home=tmp_path / "home", seed=3))

    plain, off, on = run("a house", "plain"), run("a house<hypernet:xl-ink:0>", "off"), run("a house<hypernet:xl-ink:1>", "on")
    assert np.array_equal(pixels(plain.images[0].path), pixels(off.images[0].path))
    assert not same_image(plain.images[0].path, on.images[0].path)
