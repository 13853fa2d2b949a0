"""Validation: widths, tokens against the real CLIP vocabulary, context, values, hashes, dtypes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conceptlib.embedding import Embedding
from conceptlib.formats import read
from conceptlib.models import EncoderInfo, ModelInfo, NormStats, family_model, read_model
from conceptlib.tensor import Tensor
from conceptlib.validate import (
    Finding,
    a1111_file_word,
    concept_word,
    coverage,
    exit_status,
    expansions,
    suggest_token,
    summarize,
    validate,
    validate_many,
)
from factory import sd1, sd2, sdxl, vectors

SHARED_MODEL = {"sd1": "sd15", "sd2": "sd21-base", "sdxl": "sdxl-base"}
# Every embedding in ../shared/data/embeddings and the family it belongs to (see PROVENANCE.tsv).
SHARED_FAMILY = {
    "JarrentWu1031+SingleInsert+learned_embeds.bin": "sd1",
    "Kaleidia+Embeddings-for-AI-Imagery+SD1.5-HairDetail.pt": "sd1",
    "Kaleidia+Embeddings-for-AI-Imagery+SDXL-Detail.safetensors": "sdxl",
    "KoAlbert+SD_Textual_Inversion+learned_embeds.safetensors": "sd1",
    "eastonhill+stable-diffusion+embeddings.pt": "sd1",
    "fastai+diffusion-nbs+learned_embeds.bin": "sd1",
    "fgjd4j23423f+sd+EasyNegative.pt": "sd1",
    "fgjd4j23423f+sd+negative_hand-neg.pt": "sd1",
    "fgjd4j23423f+sd+test_embedding.png": "sd1",
    "lazealia+Stable_Diff_WebUI_with_Ext+nfixer.pt": "sd2",
    "lazealia+Stable_Diff_WebUI_with_Ext+ng_deepnegative_v1_75t.pt": "sd1",
    "mayaru-ai+stable-diffusion-bestconfig+EasyNegative.safetensors": "sd1",
    "mayaru-ai+stable-diffusion-bestconfig+bad-artist.pt": "sd1",
    "mayaru-ai+stable-diffusion-bestconfig+bad_prompt_version2.pt": "sd1",
    "mayaru-ai+stable-diffusion-bestconfig+eyeliner2.pt": "sd1",
    "oss-roettger+XL-Textual-Inversion+myPuppet768.pt": "sdxl",
    "soejrd+aiTests+learned_embeds.bin": "sd1",
}
UNREADABLE = {"fgjd4j23423f+sd+empty.pt"}  # an empty dict: nothing to validate
NOT_EMBEDDINGS = {"KoAlbert+SD_Textual_Inversion+hparams.yml", "PROVENANCE.tsv"}
# What the width check says, per (embedding family, model family).
MISMATCH = {
    ("sd1", "sd2"): "embedding width 768 fits SD 1.x, this model is SD 2.x (1024)",
    ("sd1", "sdxl"): "embedding width 768 fits SD 1.x, this model is SDXL (768 + 1280)",
    ("sd2", "sd1"): "embedding width 1024 fits SD 2.x, this model is SD 1.x (768)",
    ("sd2", "sdxl"): "embedding width 1024 fits SD 2.x, this model is SDXL (768 + 1280)",
    ("sdxl", "sd1"): "embedding widths 768 + 1280 fit SDXL, this model is SD 1.x (768)",
    ("sdxl", "sd2"): "embedding widths 768 + 1280 fit SDXL, this model is SD 2.x (1024)",
}


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def by_code(findings: list[Finding], code: str) -> Finding:
    [finding] = [f for f in findings if f.code == code]
    return finding


@pytest.fixture(scope="module")
def sd15(request: pytest.FixtureRequest) -> ModelInfo:
    from conftest import SHARED_MODELS

    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/data/models is not present (a fresh clone)")
    return read_model(SHARED_MODELS / "sd15")


# --- widths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("emb_family", "model_family"), sorted(MISMATCH))
def test_width_mismatch_names_the_family_it_fits(emb_family: str, model_family: str) -> None:
    emb = {"sd1": sd1, "sd2": sd2, "sdxl": sdxl}[emb_family](token="<x>")
    [finding] = [f for f in validate(emb, model_family) if f.severity == "error"]
    assert finding.code == "width-mismatch"
    assert finding.message.startswith(MISMATCH[(emb_family, model_family)] + ": ")


def test_sd1_on_sdxl_says_sdxl_needs_both_encoders() -> None:
    message = by_code(validate(sd1(token="<x>"), "sdxl"), "width-mismatch").message
    assert "SDXL concepts need vectors for both text encoders (clip_l 768 + clip_g 1280)" in message


def test_sdxl_half_concept() -> None:
    emb = Embedding({"clip_g": vectors(2, 1280)}, token="<x>")
    finding = by_code(validate(emb, "sdxl"), "sdxl-incomplete")
    assert finding.severity == "error" and finding.encoder == "clip_g"
    assert finding.message.startswith("embedding has only clip_g (1280) vectors, this model is SDXL (768 + 1280)")
    assert "learned_embeds_2.safetensors" in finding.message


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl"])
def test_matching_widths_are_clean(family: str) -> None:
    emb = {"sd1": sd1, "sd2": sd2, "sd2-v": sd2, "sdxl": sdxl}[family](token="<x>")
    assert validate(emb, family) == []


# --- tokens against the real CLIP vocabulary ---------------------------------------------------


def test_token_that_is_a_word_piece(sd15: ModelInfo) -> None:
    # "cat" is both a piece ("cat") and a whole word ("cat</w>") of the CLIP vocabulary.
    finding = by_code(validate(sd1(token="cat"), sd15), "token-in-vocabulary")
    assert finding.severity == "error"
    assert finding.message.startswith("token 'cat' is already in the tokenizer's vocabulary: diffusers refuses to load it")
    assert "load it as '<cat>' instead" in finding.message


def test_token_case_does_not_hide_a_collision(sd15: ModelInfo) -> None:
    # CLIP lowercases prompts, so "Cat" is matched as "cat".
    assert "token-in-vocabulary" in codes(validate(sd1(token="Cat"), sd15))


def test_token_that_is_an_ordinary_word(sd15: ModelInfo) -> None:
    # "sks" (the DreamBooth favourite) and "kitten" are whole words only: diffusers would accept
    # them and then every use of the word in a prompt would become the concept.
    vocab = sd15.vocabulary("clip_l")
    assert vocab is not None and "sks" not in vocab and "sks</w>" in vocab
    finding = by_code(validate(sd1(token="sks"), sd15), "token-is-word")
    assert finding.severity == "error"
    assert finding.message == (
        "token 'sks' is the ordinary word 'sks': once loaded, every 'sks' in a prompt turns into this "
        "concept; load it as '<sks>' instead (diffusers: load_textual_inversion(..., token='<sks>'); "
        "conceptlib: convert --token '<sks>')"
    )
    assert codes(validate(sd1(token="kitten"), sd15)) == ["token-is-word"]


def test_prompt_word_from_a_file_name_only_warns(sd15: ModelInfo) -> None:
    # AUTOMATIC1111 files carry no token; the word comes from the name, which users pick freely.
    emb = sd1(name="cat")
    assert concept_word(emb) == ("cat", False)
    finding = by_code(validate(emb, sd15), "token-in-vocabulary")
    assert finding.severity == "warning" and "prompt word 'cat'" in finding.message
    # The library's token overrides it, and is checked as a chosen token.
    assert validate(emb, sd15, token="<cat-toy>") == []


def test_a1111_file_name_is_checked_where_a1111_uses_it(sd15: ModelInfo, tmp_path: Path) -> None:
    from conceptlib.formats import write

    # AUTOMATIC1111 ignores the name of a .pt: `cat.pt` is triggered by every "cat".
    write(sd1(2, name="my-cat-style"), tmp_path / "cat.pt")
    emb = read(tmp_path / "cat.pt")
    assert a1111_file_word(emb) == "cat"
    finding = by_code(validate(emb, sd15), "file-name-in-vocabulary")
    assert finding.severity == "warning"
    assert finding.message == (
        "AUTOMATIC1111 takes this file's prompt word from its file name, 'cat', not from its name "
        "'my-cat-style', and 'cat' is already in the tokenizer's vocabulary: there every 'cat' in a "
        "prompt would turn into this concept; rename the file, e.g. to 'my-cat-style.pt'"
    )
    # Named after its name, a library token, or an image (whose name A1111 does use): no finding.
    write(sd1(2, name="my-cat-style"), tmp_path / "my-cat-style.pt")
    assert validate(read(tmp_path / "my-cat-style.pt"), sd15) == []
    assert validate(emb, sd15, token="<my-cat-style>") == []
    write(sd1(2, name="my-cat-style"), tmp_path / "cat.png")
    assert a1111_file_word(read(tmp_path / "cat.png")) is None


def test_bracketed_tokens_are_free(sd15: ModelInfo) -> None:
    assert validate(sd1(3, token="<cat-toy>"), sd15) == []


def test_expansion_hits_an_existing_token(sd15: ModelInfo, tmp_path: Path) -> None:
    # The CLIP vocabulary cannot hold "x_1" (digits are always split off), so expansions collide
    # with tokens added to a tokenizer, e.g. a model saved after load_textual_inversion.
    folder = tmp_path / "sd15-with-concept"
    shutil.copytree(Path(sd15.source), folder)
    (folder / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<cat-toy>": 49408, "<cat-toy>_1": 49409, "<dog>_2": 49410}))
    model = read_model(folder)
    found = validate(sd1(2, token="<cat-toy>"), model)
    assert codes(found) == ["token-in-vocabulary", "expansion-in-vocabulary"]
    assert by_code(found, "expansion-in-vocabulary").message.startswith(
        "'<cat-toy>_1' (vector 2 of 2 of '<cat-toy>') is already in the tokenizer's vocabulary"
    )
    assert "'<cat-toy-2>'" in by_code(found, "expansion-in-vocabulary").message
    # Three vectors: "<dog>_2" is the third one.
    assert codes(validate(sd1(3, token="<dog>"), model)) == ["expansion-in-vocabulary"]
    # diffusers probes "<tok>_1" even for a single vector.
    (folder / "tokenizer" / "added_tokens.json").write_text(json.dumps({"<solo>_1": 49408}))
    message = by_code(validate(sd1(1, token="<solo>"), read_model(folder)), "expansion-in-vocabulary").message
    assert "diffusers' multi-vector probe" in message


def test_expansion_is_an_ordinary_word(sd15: ModelInfo) -> None:
    # A multi-vector concept whose token collides: every expansion is reported only once.
    found = validate(sd1(4, token="dog"), sd15)
    assert codes(found) == ["token-in-vocabulary"]


def test_concepts_clash_with_each_other(sd15: ModelInfo) -> None:
    items = [
        ("a.pt", sd1(3, token="<a>"), None),
        ("b.pt", sd1(1, token="<a>_2"), None),
        ("c.pt", sd1(1, token="<c>"), None),
        ("d.pt", sd1(1, token="<C>"), None),
        ("e.pt", sd1(1, token="<e>"), None),
        ("f.pt", sd1(1, token="<e>_1"), None),
    ]
    a, b, c, d, e, f = validate_many(items, sd15)
    assert codes(a) == codes(b) == ["token-conflict"]
    assert "'<a>_2' is in both concepts' multi-vector expansions" in a[0].message
    assert codes(c) == codes(d) == ["token-conflict"] and "both use this token" in c[0].message
    # A single-vector "<e>" still swallows "<e>_1": diffusers expands every "<e>_<n>" it knows.
    assert codes(e) == codes(f) == ["token-conflict"]
    assert "diffusers would read '<e>_1' as part of '<e>'" in e[0].message
    assert "e.g. '<e-2>'" in e[0].message


def test_suggest_token() -> None:
    vocab = frozenset({"cat", "cat</w>", "<cat>"})
    assert suggest_token("cat", 1, [vocab]) == "<cat-2>"
    assert suggest_token("Cat Toy", 2) == "<cat-toy>"
    assert suggest_token("<x>", 2, [], {"<x>": 1}) == "<x-2>"
    assert suggest_token("<x>", 1, [], {"<x>_1": 1}) == "<x-2>"
    assert suggest_token("!!!", 1) == "<concept>"
    assert expansions("<t>", 3) == ["<t>", "<t>_1", "<t>_2"] and expansions("<t>", 1) == ["<t>"]


def test_no_vocabulary_no_token_checks() -> None:
    model = family_model("sd1")
    assert validate(sd1(token="cat"), model) == []
    assert codes(coverage(model)) == ["no-vocabulary", "no-weights", "no-hashes"]


# --- context, values, norms, hashes, dtypes ----------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(60, []), (61, ["context-tight"]), (75, ["context-tight"]), (76, ["context-overflow"])],
)
def test_context(n: int, expected: list[str]) -> None:
    found = validate(sd1(n, token="<x>"), "sd1")
    assert codes(found) == expected
    if n == 76:
        assert found[0].severity == "error"
        assert found[0].message.startswith("76 vectors do not fit the 77-token context (75 after BOS/EOS)")
    if n == 61:
        assert found[0].severity == "warning" and "leaving 14 for everything else" in found[0].message


def test_non_finite() -> None:
    arr = vectors(2, 768).array.copy()
    arr[0, 3] = np.nan
    arr[1, 5] = np.inf
    found = validate(Embedding({"clip_l": Tensor.from_numpy(arr)}, token="<x>"), "sd1")
    finding = by_code(found, "non-finite")
    assert finding.severity == "error" and finding.encoder == "clip_l"
    assert finding.message.startswith("2 NaN/Inf values in clip_l: the concept is damaged")


def normed_model(median: float = 0.4) -> ModelInfo:
    stats = NormStats(count=49408, mean=median, std=0.05, min=median / 4, p01=median / 2, median=median, p99=median * 1.5, max=median * 2)
    return ModelInfo("m", "checkpoint", "sd1", "SD 1.x", "epsilon", [EncoderInfo("clip_l", 768, norms=stats, fingerprint="f")])


def scaled(*norms: float) -> Embedding:
    rows = np.zeros((len(norms), 768), np.float32)
    for i, norm in enumerate(norms):
        rows[i, i] = norm
    return Embedding({"clip_l": Tensor.from_numpy(rows)}, token="<x>")


def test_norms_against_the_vocabulary() -> None:
    model = normed_model(0.4)
    assert validate(scaled(0.4, 3.0), model) == []  # diffusers-trained concepts are ~8x: normal
    high = by_code(validate(scaled(0.4, 10.0), model), "norm-high")
    assert high.severity == "info" and "25x the vocabulary's median 0.4" in high.message
    outlier = by_code(validate(scaled(0.4, 44.0), model), "norm-outlier")
    assert outlier.severity == "warning"
    assert outlier.message.startswith("vector 2 of clip_l has norm 44, 110x the vocabulary's median 0.4")
    assert "(<x>:0.5)" in outlier.message
    tiny = by_code(validate(scaled(0.4, 0.001), model), "norm-tiny")
    assert tiny.severity == "warning" and tiny.message.startswith("vector 2 of clip_l has norm 0.001")


def test_trained_on_checkpoint() -> None:
    model = normed_model()
    model.hashes = {"sha256": "08d6be750b" + "0" * 54, "autov2": "08d6be750b", "autov1": "7ab762a7"}
    same = validate(sd1(token="<x>", checkpoint_hash="08d6be750b", checkpoint_name="NegTIModel"), model)
    assert same == [Finding("trained-on-this", "info", "trained on this very checkpoint (NegTIModel [08d6be750b])")]
    legacy = validate(sd1(token="<x>", checkpoint_hash="7ab762a7"), model)
    assert codes(legacy) == ["trained-on-this"]
    other = by_code(validate(sd1(token="<x>", checkpoint_hash="27a4ac756c", checkpoint_name="SD15NewVAEpruned"), model), "trained-on-other")
    assert other.severity == "info"
    assert other.message.startswith("trained on SD15NewVAEpruned [27a4ac756c], not on this checkpoint [08d6be750b]")
    # Without hashes on the model side nothing can be compared, and nothing is claimed.
    assert validate(sd1(token="<x>", checkpoint_hash="27a4ac756c"), "sd1") == []


def test_dtypes() -> None:
    assert validate(sd1(token="<x>", dtype="float16"), "sd1") == []
    bf16 = validate(sdxl(token="<x>", dtype="bfloat16"), "sdxl")
    assert bf16 == [by_code(bf16, "dtype-bfloat16")] and bf16[0].severity == "info"
    assert bf16[0].message.startswith("clip_l and clip_g vectors are bfloat16")
    f64 = Embedding({"clip_l": Tensor.from_numpy(vectors(1, 768).array.astype(np.float64))}, token="<x>")
    assert by_code(validate(f64, "sd1"), "dtype-unusual").severity == "warning"
    ints = Embedding({"clip_l": Tensor.from_numpy(np.ones((1, 768), np.int32))}, token="<x>")
    assert by_code(validate(ints, "sd1"), "dtype-invalid").severity == "error"


def test_errors_come_first_and_exit_status() -> None:
    found = validate(sd2(70, token="<x>", dtype="bfloat16"), "sd1")
    assert [f.severity for f in found] == ["error", "warning", "info"]
    assert summarize(found) == {"error": 1, "warning": 1, "info": 1}
    assert exit_status(found) == 1
    warnings_only = [f for f in found if f.severity != "error"]
    assert exit_status(warnings_only) == 0 and exit_status(warnings_only, strict=True) == 1
    assert exit_status([Finding("x", "info", "m")], strict=True) == 0


def test_finding_to_dict() -> None:
    assert Finding("c", "warning", "m", "clip_l").to_dict() == {"code": "c", "severity": "warning", "message": "m", "encoder": "clip_l"}


# --- every real file against every real model --------------------------------------------------


def test_every_shared_file_is_covered(shared_embeddings: Path) -> None:
    assert {p.name for p in shared_embeddings.iterdir()} == set(SHARED_FAMILY) | UNREADABLE | NOT_EMBEDDINGS


@pytest.mark.parametrize("name", sorted(SHARED_FAMILY))
def test_shared_file_against_each_family(shared_embeddings: Path, shared_models: Path, name: str) -> None:
    emb = read(shared_embeddings / name)
    family = SHARED_FAMILY[name]
    for model_family, folder in SHARED_MODEL.items():
        found = validate(emb, read_model(shared_models / folder))
        errors = [f for f in found if f.severity == "error"]
        if model_family == family:
            assert errors == [], f"{name} should fit {folder}"
        else:
            assert [f.code for f in errors] == ["width-mismatch"], f"{name} on {folder}"
            assert errors[0].message.startswith(MISMATCH[(family, model_family)])


def test_shared_warnings(shared_embeddings: Path, shared_models: Path) -> None:
    sd15 = read_model(shared_models / "sd15")
    deep = validate(read(shared_embeddings / "lazealia+Stable_Diff_WebUI_with_Ext+ng_deepnegative_v1_75t.pt"), sd15)
    assert codes(deep) == ["context-tight"]
    rick = validate(read(shared_embeddings / "fgjd4j23423f+sd+test_embedding.png"), sd15)
    assert codes(rick) == ["token-in-vocabulary"] and rick[0].severity == "warning"


def test_empty_shared_file_does_not_read(shared_embeddings: Path) -> None:
    from conceptlib.errors import EmbeddingStructureError

    with pytest.raises(EmbeddingStructureError):
        read(shared_embeddings / "fgjd4j23423f+sd+empty.pt")
