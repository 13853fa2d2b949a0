"""Reading base models without torch: diffusers folders, single files, family names, the registry."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conceptlib.errors import (
    BadInputError,
    CorruptFileError,
    DestinationExistsError,
    GitLFSPointerError,
    ModelNotFoundError,
    ModelWeightsMissingError,
    UnknownModelError,
    UsageError,
)
from conceptlib.formats import _safetensors, _torchpickle
from conceptlib.models import (
    STANDARD_CLIP_VOCAB,
    ModelInfo,
    add_model,
    compatible,
    family_model,
    get_model,
    list_models,
    models_dir,
    read_model,
    require_weights,
    resolve_model,
)
from conceptlib.tensor import Tensor
from conceptlib.tiny import tiny_tokenizer_files
from factory import sd1, sd2, sdxl

SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_KEY = "cond_stage_model.model.token_embedding.weight"
XL_L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
XL_G_KEY = "conditioner.embedders.1.model.token_embedding.weight"
REFINER_KEY = "conditioner.embedders.0.model.token_embedding.weight"


def matrix(rows: int, width: int, seed: int = 0, dtype: str = "float32") -> Tensor:
    values = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32) * 0.015
    return Tensor.from_numpy(values.astype(np.float16) if dtype == "float16" else values)


def write_checkpoint(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.write_bytes(_safetensors.dumps(tensors, metadata))
    return path


# --- the real configs in ../shared/data/models -------------------------------------------------


def test_sd15_folder(shared_models: Path) -> None:
    model = read_model(shared_models / "sd15")
    assert (model.kind, model.family, model.label) == ("diffusers", "sd1", "SD 1.x")
    assert model.prediction_type == "epsilon" and model.sample_size == 512
    assert model.pipeline_class == "StableDiffusionPipeline"
    [enc] = model.encoders
    assert (enc.key, enc.width, enc.context_length, enc.vocab_size) == ("clip_l", 768, 77, 49408)
    assert enc.tokenizer is not None and enc.tokenizer.vocab_size == 49408
    assert enc.tokenizer.vocab_hash == STANDARD_CLIP_VOCAB and enc.tokenizer.added_tokens == []
    # Configs only: the UNet is an LFS pointer under another name, so no weight file is hashed.
    assert enc.fingerprint is None and model.files == {} and not model.has_weights
    vocab = model.vocabulary("clip_l")
    assert vocab is not None and "cat</w>" in vocab and len(vocab) == 49408


def test_sd21_base_folder(shared_models: Path) -> None:
    model = read_model(shared_models / "sd21-base")
    assert (model.family, model.label, model.prediction_type, model.sample_size) == (
        "sd2", "SD 2.x base (512 px)", "epsilon", 512,
    )  # fmt: skip
    assert [(e.key, e.width) for e in model.encoders] == [("clip_h", 1024)]
    assert model.family_label == "SD 2.x" and model.width_label == "1024"


def test_sdxl_base_folder(shared_models: Path) -> None:
    model = read_model(shared_models / "sdxl-base" / "model_index.json")  # the index file works too
    assert (model.family, model.label, model.prediction_type, model.sample_size) == ("sdxl", "SDXL", "epsilon", 1024)
    assert [(e.key, e.width, e.component) for e in model.encoders] == [
        ("clip_l", 768, "text_encoder"), ("clip_g", 1280, "text_encoder_2"),
    ]  # fmt: skip
    assert [e.tokenizer.component for e in model.encoders if e.tokenizer] == ["tokenizer", "tokenizer_2"]
    assert model.width_label == "768 + 1280"


def test_lfs_pointer_in_place_of_weights(shared_models: Path, tmp_path: Path) -> None:
    pointer = shared_models / "sd15" / "unet" / "diffusion_pytorch_model.safetensors.lfs-pointer"
    with pytest.raises(GitLFSPointerError) as info:
        read_model(pointer)
    assert pointer.name in str(info.value) and "git lfs" in (info.value.hint or "")
    # What a clone without git-lfs looks like: the pointer under the weight file's real name.
    folder = tmp_path / "sd15"
    shutil.copytree(shared_models / "sd15", folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors.lfs-pointer").rename(
        folder / "unet" / "diffusion_pytorch_model.safetensors"
    )
    with pytest.raises(GitLFSPointerError) as info:
        read_model(folder, hash_files=False)
    assert "unet/diffusion_pytorch_model.safetensors: is a Git LFS pointer" in str(info.value)
    assert "git lfs pull" in (info.value.hint or "")


def test_lfs_pointer_text_encoder(shared_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sd15"
    shutil.copytree(shared_models / "sd15", folder)
    pointer = (shared_models / "sd15" / "unet" / "diffusion_pytorch_model.safetensors.lfs-pointer").read_bytes()
    (folder / "text_encoder" / "model.safetensors").write_bytes(pointer)
    with pytest.raises(GitLFSPointerError, match="text_encoder/model.safetensors"):
        read_model(folder)


# --- family names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family", "prediction", "widths"),
    [
        ("sd1", "sd1", "epsilon", {"clip_l": 768}),
        ("sd15", "sd1", "epsilon", {"clip_l": 768}),
        ("sd2", "sd2", "epsilon", {"clip_h": 1024}),
        ("sd2-v", "sd2", "v_prediction", {"clip_h": 1024}),
        ("SDXL", "sdxl", "epsilon", {"clip_l": 768, "clip_g": 1280}),
    ],
)
def test_family_names(name: str, family: str, prediction: str, widths: dict[str, int]) -> None:
    model = read_model(name)
    assert (model.kind, model.family, model.prediction_type, model.widths) == ("family", family, prediction, widths)
    assert all(e.context_length == 77 for e in model.encoders)
    assert not model.has_weights and model.all_hashes() == []


def test_unknown_name() -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'sd9'"):
        family_model("sd9")
    with pytest.raises(ModelNotFoundError, match="check the path|no model named"):
        read_model("no/such/folder")


# --- single-file checkpoints -------------------------------------------------------------------


def test_sd1_safetensors_checkpoint(tmp_path: Path) -> None:
    # 400 x 768 float32 is 1.2 MB: past 1 MiB + 64 KiB, so the legacy A1111 hash reads real bytes.
    emb = matrix(400, 768)
    path = write_checkpoint(tmp_path / "v1-5.safetensors", {
        SD1_KEY: emb, "model.diffusion_model.input_blocks.0.0.weight": Tensor.from_numpy(np.zeros((2, 4, 1, 1), np.float32)),
    })  # fmt: skip
    model = read_model(path)
    assert (model.kind, model.family, model.label, model.prediction_type, model.sample_size) == (
        "checkpoint", "sd1", "SD 1.x", "epsilon", 512,
    )  # fmt: skip
    [enc] = model.encoders
    assert enc.fingerprint == hashlib.sha256(emb.tobytes()).hexdigest()
    assert (enc.vocab_size, enc.dtype, enc.tokenizer) == (400, "float32", None)
    norms = np.linalg.norm(emb.array.astype(np.float64), axis=1)
    assert enc.norms is not None and enc.norms.median == pytest.approx(float(np.median(norms)))
    assert enc.norms.max == pytest.approx(float(norms.max()))
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    header = int.from_bytes(data[:8], "little")
    assert model.hashes == {
        "sha256": sha,
        "autov2": sha[:10],
        "autov1": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
        "addnet": hashlib.sha256(data[8 + header :]).hexdigest(),
    }
    assert len(data) > 0x110000


def test_fingerprint_is_the_same_in_every_container(tmp_path: Path) -> None:
    emb = matrix(32, 768, seed=3)
    st = read_model(write_checkpoint(tmp_path / "a.safetensors", {SD1_KEY: emb}))
    _torchpickle.dump({"state_dict": {SD1_KEY: emb}, "global_step": 840000}, tmp_path / "a.ckpt")
    ckpt = read_model(tmp_path / "a.ckpt")
    assert ckpt.family == "sd1" and ckpt.kind == "checkpoint"
    assert ckpt.fingerprints() == st.fingerprints()
    assert ckpt.hashes["sha256"] != st.hashes["sha256"] and "addnet" not in ckpt.hashes
    other = read_model(write_checkpoint(tmp_path / "b.safetensors", {SD1_KEY: matrix(32, 768, seed=4)}))
    assert other.fingerprints() != st.fingerprints()


def test_sd2_checkpoint_prediction_type(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "v2.safetensors", {SD2_KEY: matrix(8, 1024)})
    model = read_model(path, hash_files=False)
    assert (model.family, model.prediction_type, model.label) == ("sd2", None, "SD 2.x (prediction type unknown)")
    assert any("sd2-v" in note for note in model.notes) and model.hashes == {}
    # AUTOMATIC1111's convention: a .yaml with the checkpoint's name says what it is.
    (tmp_path / "v2.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    model = read_model(path, hash_files=False)
    assert (model.prediction_type, model.label, model.sample_size) == ("v_prediction", "SD 2.x 768-v", 768)
    meta = write_checkpoint(tmp_path / "m.safetensors", {SD2_KEY: matrix(8, 1024)}, {"modelspec.prediction_type": "epsilon"})
    assert read_model(meta).label == "SD 2.x base (512 px)"


def test_sdxl_checkpoints(tmp_path: Path) -> None:
    base = write_checkpoint(tmp_path / "xl.safetensors", {XL_L_KEY: matrix(8, 768, dtype="float16"), XL_G_KEY: matrix(8, 1280, dtype="float16")})
    model = read_model(base)
    assert (model.family, model.label, model.encoder_keys) == ("sdxl", "SDXL", ["clip_l", "clip_g"])
    assert [e.dtype for e in model.encoders] == ["float16", "float16"]
    vpred = write_checkpoint(tmp_path / "vp.safetensors", {
        XL_L_KEY: matrix(8, 768), XL_G_KEY: matrix(8, 1280), "v_pred": Tensor.from_numpy(np.zeros(0, np.float32)),
    })  # fmt: skip
    assert read_model(vpred).prediction_type == "v_prediction"
    refiner = read_model(write_checkpoint(tmp_path / "refiner.safetensors", {REFINER_KEY: matrix(8, 1280)}))
    assert (refiner.family, refiner.variant, refiner.label, refiner.encoder_keys) == ("sdxl", "refiner", "SDXL refiner", ["clip_g"])


def test_inpainting_variant(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "inpaint.safetensors", {
        SD1_KEY: matrix(8, 768), "model.diffusion_model.input_blocks.0.0.weight": Tensor.from_numpy(np.zeros((1, 9, 1, 1), np.float32)),
    })  # fmt: skip
    model = read_model(path)
    assert (model.variant, model.label) == ("inpainting", "SD 1.x inpainting")


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "is Flux, not Stable Diffusion"),
        ({"model.diffusion_model.joint_blocks.0.x.weight": (4, 4)}, "is Stable Diffusion 3"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4, 1, 1)}, "holds a UNet but no text encoder"),
        ({"lora_unet_down_blocks_0.alpha": (1,)}, "holds no Stable Diffusion text encoder"),
        ({SD1_KEY: (8, 4096)}, "text encoder width 4096 is no Stable Diffusion encoder"),
    ],
)
def test_not_a_supported_checkpoint(tmp_path: Path, tensors: dict[str, tuple[int, ...]], message: str) -> None:
    path = write_checkpoint(tmp_path / "x.safetensors", {k: Tensor.from_numpy(np.zeros(s, np.float32)) for k, s in tensors.items()})
    with pytest.raises(UnknownModelError, match=message) as info:
        read_model(path)
    assert isinstance(info.value, BadInputError) and str(path) in str(info.value)


def test_unet_only_hint_names_families(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "u.safetensors", {"model.diffusion_model.out.2.weight": Tensor.from_numpy(np.zeros((1,), np.float32))})
    with pytest.raises(UnknownModelError) as info:
        read_model(path)
    assert "sd2-v" in (info.value.hint or "")


def test_not_a_checkpoint_at_all(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UnknownModelError, match="not a model checkpoint"):
        read_model(path)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(UnknownModelError) as info:
        read_model(empty)
    assert (str(info.value), info.value.hint) == (f"{empty}: empty file (0 bytes)", "download or copy it again")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(_safetensors.dumps({SD1_KEY: matrix(8, 768)})[:200])
    with pytest.raises(CorruptFileError, match="truncated|cut short"):
        read_model(truncated)


# --- diffusers folders built in the test (no torch) --------------------------------------------


def make_folder(
    root: Path,
    widths: tuple[int, ...] = (768,),
    *,
    weights: bool = True,
    prediction: str | None = "epsilon",
    pipeline: str = "StableDiffusionPipeline",
    key: str = "text_model.embeddings.token_embedding.weight",
) -> Path:
    """A diffusers folder with configs, the tiny tokenizer and (optionally) text-encoder weights."""
    root.mkdir(parents=True)
    index: dict[str, object] = {"_class_name": pipeline, "_diffusers_version": "0.30.0"}
    for n, width in enumerate(widths):
        suffix = "_2" if n else ""
        te = root / f"text_encoder{suffix}"
        te.mkdir()
        (te / "config.json").write_text(json.dumps({"hidden_size": width, "max_position_embeddings": 77, "vocab_size": 889}))
        if weights:
            (te / "model.safetensors").write_bytes(_safetensors.dumps({key: matrix(889, width, seed=n)}))
        tok = root / f"tokenizer{suffix}"
        tok.mkdir()
        for name, text in tiny_tokenizer_files().items():
            (tok / name).write_text(text, encoding="utf-8")
        index[f"text_encoder{suffix}"] = ["transformers", "CLIPTextModel"]
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(json.dumps({"sample_size": 96, "cross_attention_dim": sum(widths)}))
    if prediction:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_folder_with_weights(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", (1024,), prediction="v_prediction")
    model = read_model(folder)
    assert (model.family, model.label, model.prediction_type, model.sample_size) == ("sd2", "SD 2.x 768-v", "v_prediction", 768)
    [enc] = model.encoders
    assert enc.fingerprint == hashlib.sha256(matrix(889, 1024).tobytes()).hexdigest()
    assert enc.norms is not None and enc.tokenizer is not None and enc.tokenizer.vocab_size == 889
    assert list(model.files) == ["text_encoder/model.safetensors"]
    assert model.files["text_encoder/model.safetensors"]["sha256"] == hashlib.sha256(
        (folder / "text_encoder" / "model.safetensors").read_bytes()
    ).hexdigest()
    assert read_model(folder, hash_files=False).files == {}


def test_folder_transformers5_key_and_sdxl(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "xl", (768, 1280), pipeline="StableDiffusionXLPipeline", key="embeddings.token_embedding.weight")
    model = read_model(folder)
    assert model.family == "sdxl" and all(e.fingerprint for e in model.encoders)


def test_folder_without_scheduler_or_text_encoder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", (768,), prediction=None, weights=False)
    shutil.rmtree(folder / "text_encoder")
    model = read_model(folder)
    assert model.family == "sd1" and model.prediction_type == "epsilon"
    assert any("cross-attention" in n for n in model.notes) and any("epsilon" in n for n in model.notes)


def test_added_tokens_join_the_vocabulary(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    (folder / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<cat-toy>": 889, "<cat-toy>_1": 890}))
    model = read_model(folder)
    assert model.encoders[0].tokenizer is not None
    assert model.encoders[0].tokenizer.added_tokens == ["<cat-toy>", "<cat-toy>_1"]
    vocab = model.vocabulary("clip_l")
    assert vocab is not None and {"<cat-toy>", "<cat-toy>_1", "cat</w>"} <= vocab


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}, "FluxPipeline"),
        ({"_class_name": "StableDiffusion3Pipeline", "text_encoder_3": ["transformers", "T5EncoderModel"]}, "StableDiffusion3Pipeline"),
    ],
)
def test_foreign_pipelines(tmp_path: Path, index: dict[str, object], message: str) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnknownModelError, match=message):
        read_model(tmp_path)


def test_foreign_text_encoder_width(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", (768,), weights=False)
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 4096}))
    with pytest.raises(UnknownModelError, match="T5-XXL"):
        read_model(folder)


def test_empty_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="not a diffusers model folder"):
        read_model(tmp_path)


def test_broken_config(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", weights=False)
    (folder / "text_encoder" / "config.json").write_text("{nope")
    with pytest.raises(CorruptFileError, match="text_encoder/config.json: is not valid JSON"):
        read_model(folder)


# --- compatibility -----------------------------------------------------------------------------


def test_compatible() -> None:
    assert compatible(sd1(), "sd1") and not compatible(sd1(), "sd2") and not compatible(sd1(), "sdxl")
    assert compatible(sd2(), "sd2-v") and not compatible(sd2(), "sd1")
    assert compatible(sdxl(), "sdxl") and not compatible(sdxl(), "sd1")
    assert not compatible(["clip_g"], "sdxl")  # SDXL needs both halves
    assert compatible({"clip_l": 768}, family_model("sd1"))  # a Concept's encoders dict


def test_compatible_refiner(tmp_path: Path) -> None:
    refiner = read_model(write_checkpoint(tmp_path / "r.safetensors", {REFINER_KEY: matrix(8, 1280)}))
    assert compatible(sdxl(), refiner) and compatible(["clip_g"], refiner) and not compatible(sd1(), refiner)


# --- registry ----------------------------------------------------------------------------------


def test_add_list_get(shared_models: Path, tmp_path: Path) -> None:
    info = add_model(shared_models / "sd15")
    assert info.name == "sd15" and info.added
    record = models_dir() / "sd15.json"
    assert record.is_file() and json.loads(record.read_text())["family"] == "sd1"
    assert (models_dir() / "vocab" / f"{STANDARD_CLIP_VOCAB}.json").is_file()
    add_model(shared_models / "sdxl-base", name="xl")
    assert [m.name for m in list_models()] == ["sd15", "xl"]
    again = get_model("xl")
    assert (again.name, again.family, again.source) == ("xl", "sdxl", str(shared_models / "sdxl-base"))
    with pytest.raises(DestinationExistsError, match="already registered"):
        add_model(shared_models / "sd15")
    assert add_model(shared_models / "sd15", force=True).name == "sd15"
    with pytest.raises(ModelNotFoundError) as err:
        get_model("nope")
    assert err.value.known == ["sd15", "xl"] and "registered: sd15, xl" in (err.value.hint or "")


def test_record_round_trip(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    info = add_model(folder, name="tiny-sd1")
    loaded = get_model("tiny-sd1")
    assert loaded.to_dict() == info.to_dict()
    assert isinstance(loaded, ModelInfo) and loaded.encoders[0].norms == info.encoders[0].norms


def test_registered_model_works_after_the_folder_is_gone(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m")
    add_model(folder, name="gone")
    shutil.rmtree(folder)
    model = resolve_model("gone")
    vocab = model.vocabulary("clip_l")
    assert vocab is not None and "cat</w>" in vocab and model.encoders[0].norms is not None


def test_checkpoints_fall_back_on_the_stored_standard_vocabulary(shared_models: Path, tmp_path: Path) -> None:
    model = read_model(write_checkpoint(tmp_path / "c.safetensors", {SD1_KEY: matrix(8, 768)}))
    assert model.vocabulary("clip_l") is None
    add_model(shared_models / "sd15")
    vocab = model.vocabulary("clip_l")
    assert vocab is not None and len(vocab) == 49408


def test_a_family_name_registers_only_a_model_of_that_family(shared_models: Path) -> None:
    # `--model sd15` may mean a real SD 1.5 folder; never an SD 2.x one.
    for name in ("sd1", "SD15", "sd2-v", "xl"):
        with pytest.raises(UsageError) as err:
            add_model(shared_models / "sd21-base", name=name)
        assert str(err.value).startswith(f"{name!r} is the family name of ") and "this model is SD 2.x base" in str(err.value)
    assert list_models() == []
    assert add_model(shared_models / "sd21-base", name="sd21").name == "sd21"  # its own family's alias
    assert resolve_model("sd1").family == "sd1"


def test_bad_names_and_paths(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "m", weights=False)
    with pytest.raises(UsageError, match="invalid model name"):
        add_model(folder, name="../evil")
    with pytest.raises(ModelNotFoundError):
        add_model(tmp_path / "missing")
    assert add_model(folder, name="ok.v1_2+x").name == "ok.v1_2+x"


def test_corrupt_record(tmp_path: Path) -> None:
    models_dir().mkdir(parents=True)
    (models_dir() / "bad.json").write_text("{}")
    with pytest.raises(CorruptFileError, match="not a valid model record"):
        list_models()


def test_resolve_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path / "sdxl", (1024,), weights=False)
    add_model(make_folder(tmp_path / "real-sd1", weights=False), name="sd1")  # shadows the family name
    assert (resolve_model("sd1").family, resolve_model("sd1").kind) == ("sd1", "diffusers")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("sdxl").kind == "diffusers"  # an existing path wins over everything
    assert resolve_model("sd2-v").kind == "family"
    with pytest.raises(ModelNotFoundError, match="'nothing'"):
        resolve_model("nothing")


# --- weights for rendering and training ----------------------------------------------------------


def test_require_weights_names_the_components_without_weight_files(tmp_path: Path) -> None:
    from conceptlib.samples import write_model_description

    folder = write_model_description(tmp_path / "configs-only")
    info = read_model(folder)  # configs are a whole model for reading and validation
    with pytest.raises(ModelWeightsMissingError) as caught:
        require_weights(info)
    assert str(caught.value) == f"{folder.resolve()}: has configs but no weights (no weight files in text_encoder)"
    assert "conceptlib models create-tiny" in (caught.value.hint or "")
    assert caught.value.components == ["text_encoder"]

    # Components model_index.json lists, each checked; a Git LFS stub's copy is not weights.
    index = json.loads((folder / "model_index.json").read_text())
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"])
    (folder / "model_index.json").write_text(json.dumps(index))
    for component in ("unet", "vae"):
        (folder / component).mkdir()
        (folder / component / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (folder / "vae" / "diffusion_pytorch_model.safetensors.lfs-pointer").write_text("version https://git-lfs")
    (folder / "text_encoder" / "model-00001-of-00002.safetensors").write_bytes(b"a shard")
    with pytest.raises(ModelWeightsMissingError, match=r"has no weight files in vae \(configs only there\)$"):
        require_weights(info)
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"weights")
    require_weights(info)
    require_weights(read_model("sd1"))  # family names: the callers say what they need


def test_family_model_keys_and_family_models_agree() -> None:
    # families.FAMILY_MODEL_KEYS (the alias table's targets) and models.FAMILY_MODELS (what a
    # family name describes) must name the same kinds with the same families.
    from conceptlib.families import FAMILY_MODEL_KEYS
    from conceptlib.models import FAMILY_MODELS

    assert {key: spec[0] for key, spec in FAMILY_MODELS.items()} == FAMILY_MODEL_KEYS
