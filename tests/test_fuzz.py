"""Fuzzing every reader and the CLI entry points with mutated files (issue 17).

The property, for any bytes at all: reading returns an :class:`Embedding` or raises a
:class:`ConceptlibError` whose message names the file on one line of fewer than 1,000
characters; never another exception; in under 5 s and 300 MiB of allocations (tracemalloc:
numpy reports its data buffers to it, checked on numpy 2.4; what tracemalloc cannot see, such
as Pillow's decoders, is bounded by ``tests/test_memory_bounds.py``); the CLI exits 0 or 2 (``validate``: 0, 1 or 2), prints no traceback and never says
"unexpected", and ``inspect --json`` prints strict JSON (no NaN/Infinity).

Inputs are the seeds of ``tests/fuzzing.py`` (every format, family, dtype and size, written by
conceptlib itself, plus hand-built legacy pickles, zTXt/iTXt/pixel-only PNGs and WebP) mutated
by generic and structure-aware mutators, and exhaustive tables of hostile values at every
field. The default run is deterministic and takes well under a minute on 2 cores;
``CONCEPTLIB_FUZZ_SCALE=20`` runs 20 times more examples and ``benchmarks/fuzz_campaign.py``
runs for as long as you like. A failure prints the seed, the violated rule and the input.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import fuzzing as fz
import pytest

from conceptlib.embedding import Embedding

SYNTH = fz.file_seeds("small", shared=False)
PICKLES = [s for s in SYNTH if s.data[:2] == b"PK" or s.data[:1] == b"\x80"]
SAFETENSORS = [s for s in SYNTH if fz._st_split(s.data) is not None]
IMAGES = [s for s in SYNTH if s.suffix in (".png", ".webp")]
FOLDERS = fz.folder_seeds("small")
# Splice partners: small files of every container (big ones only slow each example down).
PARTNERS = [s.data for s in SYNTH if len(s.data) < 64 * 1024]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder for the whole module: hypothesis runs many examples per test function."""
    folder = Path(tempfile.mkdtemp(prefix="conceptlib-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fuzz_read(c: fz.Chooser, seeds: Sequence[fz.Seed]) -> None:
    seed = c.choice(seeds)
    data = fz.mutate(c, seed.data, PARTNERS)
    # The suffix is a hint only; sometimes lie about it.
    suffix = c.choice([seed.suffix, seed.suffix, ".safetensors", ".pt", ".png", ".bin", ""])
    path = f"/fuzz dir/{seed.label.replace('/', '_')}{suffix}"
    try:
        fz.check_read_bytes(data, path)
    except fz.PropertyViolation as exc:
        raise AssertionError(f"{exc} -- seed {seed.label}, input {fz.describe_bytes(data)}") from None


# --- read_bytes, per container ------------------------------------------------------------------


def test_seeds_are_valid_embeddings(scratch: Path) -> None:
    """The corpus is what it claims: every synthesized seed reads back as an embedding."""
    assert len(SYNTH) > 100 and PICKLES and SAFETENSORS and IMAGES and FOLDERS
    for seed in [*SYNTH, *FOLDERS]:
        where = scratch / "seeds" / seed.label.replace("/", "_")
        where.mkdir(parents=True)
        outcome = fz.check_read_path(seed.materialise(where), memory=False)
        assert isinstance(outcome.embedding, Embedding), (seed.label, outcome.error)


@fz.fuzz_test(300)
def test_fuzz_pickles(c: fz.Chooser) -> None:
    """Zip and legacy torch pickles: flips, truncation, zip header fields, opcode edits."""
    _fuzz_read(c, PICKLES)


@fz.fuzz_test(250)
def test_fuzz_safetensors(c: fz.Chooser) -> None:
    """safetensors: header length, hostile JSON values, payload damage."""
    _fuzz_read(c, SAFETENSORS)


@fz.fuzz_test(120)
def test_fuzz_images(c: fz.Chooser) -> None:
    """PNG (tEXt, zTXt, iTXt, pixel-only) and WebP: chunk edits, hostile JSON, IHDR fields."""
    _fuzz_read(c, IMAGES)


@fz.fuzz_test(100)
def test_fuzz_splices_across_containers(c: fz.Chooser) -> None:
    """Any seed, with more rounds: splices between containers, stacked edits."""
    seed = c.choice(SYNTH)
    data = fz.mutate(c, seed.data, PARTNERS, rounds=c.integer(2, 6))
    try:
        fz.check_read_bytes(data, f"/fuzz/{seed.label.replace('/', '_')}{seed.suffix}")
    except fz.PropertyViolation as exc:
        raise AssertionError(f"{exc} -- seed {seed.label}, input {fz.describe_bytes(data)}") from None


@fz.fuzz_test(60)
def test_fuzz_read_files(c: fz.Chooser) -> None:
    """``formats.read(path)`` on mutated files written to disk (the size check, the SDXL pair
    lookup beside the file, the file read itself)."""
    seed = c.choice(SYNTH)
    data = fz.mutate(c, seed.data, PARTNERS)
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        path = Path(tmp) / seed.name
        path.write_bytes(data)
        try:
            fz.check_read_path(path)
        except fz.PropertyViolation as exc:
            raise AssertionError(f"{exc} -- seed {seed.label}, input {fz.describe_bytes(data)}") from None


@pytest.mark.shared
def test_fuzz_shared_files(shared_embeddings: Path) -> None:
    """The real third-party files of ../shared/data/embeddings as seeds (skipped without them)."""
    seeds = [s for s in fz.file_seeds("small", shared=True) if s.label.startswith("shared/")]
    assert seeds

    @fz.fuzz_test(100)
    def run(c: fz.Chooser) -> None:
        _fuzz_read(c, seeds)

    run()


# --- exhaustive tables of hostile values ----------------------------------------------------------


def _violations(cases: Iterator[tuple[str, bytes, str]]) -> list[str]:
    found = []
    for label, data, path in cases:
        try:
            fz.check_read_bytes(data, path, memory=False)
        except fz.PropertyViolation as exc:
            found.append(f"{label}: {exc}"[:400])
    return found


def _json_label(value: object) -> str:
    text = value if isinstance(value, fz.Raw) else json.dumps(value)
    return text if len(text) < 40 else f"{text[:30]}...({len(text)} chars)"


ST_BASE = {
    "__metadata__": {"format": "pt", "conceptlib.step": "12", "conceptlib.name": "n"},
    "<tok>": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]},
}
ST_SITES = [
    ("dtype", lambda h, v: h["<tok>"].__setitem__("dtype", v)),
    ("shape", lambda h, v: h["<tok>"].__setitem__("shape", v)),
    ("shape[0]", lambda h, v: h["<tok>"]["shape"].__setitem__(0, v)),
    ("data_offsets", lambda h, v: h["<tok>"].__setitem__("data_offsets", v)),
    ("data_offsets[1]", lambda h, v: h["<tok>"]["data_offsets"].__setitem__(1, v)),
    ("entry", lambda h, v: h.__setitem__("<tok>", v)),
    ("__metadata__", lambda h, v: h.__setitem__("__metadata__", v)),
    ("metadata conceptlib.step", lambda h, v: h["__metadata__"].__setitem__("conceptlib.step", v)),
    ("metadata conceptlib.metadata", lambda h, v: h["__metadata__"].__setitem__("conceptlib.metadata", v)),
    ("metadata string holding the value", lambda h, v: h["__metadata__"].__setitem__("conceptlib.metadata", fz.dump_json({"k": v}).decode("utf-8", "surrogatepass"))),
    ("metadata step string holding the value", lambda h, v: h["__metadata__"].__setitem__("conceptlib.step", fz.dump_json(v).decode("utf-8", "surrogatepass"))),
]  # fmt: skip


def test_hostile_safetensors_header_values() -> None:
    """Every hostile JSON value (huge and 5000-digit ints, bools, NaN, nesting, surrogates, ...)
    at every field of a valid safetensors header."""

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for site, put in ST_SITES:
            for value in fz.HOSTILE_JSON:
                header = json.loads(json.dumps(ST_BASE))
                put(header, value)
                data = fz.safetensors_with_header(fz.dump_json(header), bytes(3072))
                yield f"{site} = {_json_label(value)}", data, "/fuzz/hostile.safetensors"
        for key in fz.HOSTILE_KEYS:
            for width in (768, 7):  # read, or refused with the key in the message
                header = {k: v for k, v in ST_BASE.items() if k != "<tok>"}
                header[key] = {"dtype": "F32", "shape": [1, width], "data_offsets": [0, 4 * width]}
                data = fz.safetensors_with_header(fz.dump_json(header), bytes(4 * width))
                yield f"tensor key {key[:30]!r} width {width}", data, "/fuzz/key.safetensors"

    found = _violations(cases())
    assert not found, f"{len(found)} hostile safetensors headers broke the property:\n" + "\n".join(found)


def test_hostile_safetensors_header_lengths() -> None:
    seed = next(s for s in SAFETENSORS if s.label.startswith("diffusers/sd1/float32/1"))
    (n,) = struct.unpack("<Q", seed.data[:8])

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for value in sorted({0, 1, 2, 7, 8, n - 1, n + 1, n + 8, len(seed.data) - 8, len(seed.data), 100 * 2**20, 100 * 2**20 + 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1}):
            yield f"header length {value}", struct.pack("<Q", value) + seed.data[8:], "/fuzz/len.safetensors"

    found = _violations(cases())
    assert not found, "\n".join(found)


PNG_SEED = next(s for s in IMAGES if s.label == "png/sd1/float32/1")
PNG_DOC = json.loads(base64.b64decode(fz.png_text_payload(PNG_SEED.data) or b""))
PNG_SITES = [
    ("top level", lambda d, v: v),
    ("string_to_param", lambda d, v: {**d, "string_to_param": v}),
    ("string_to_param.*", lambda d, v: {**d, "string_to_param": {"*": v}}),
    ("TORCHTENSOR", lambda d, v: {**d, "string_to_param": {"*": {"TORCHTENSOR": v}}}),
    ("TORCHTENSOR[0]", lambda d, v: {**d, "string_to_param": {"*": {"TORCHTENSOR": [v]}}}),
    ("name", lambda d, v: {**d, "name": v}),
    ("step", lambda d, v: {**d, "step": v}),
    ("sd_checkpoint", lambda d, v: {**d, "sd_checkpoint": v}),
    ("string_to_token", lambda d, v: {**d, "string_to_token": v}),
    ("conceptlib_dtypes", lambda d, v: {**d, "conceptlib_dtypes": v}),
    ("conceptlib_dtypes[path]", lambda d, v: {**d, "conceptlib_dtypes": {"string_to_param.*": v}}),
    ("clip_l", lambda d, v: {"clip_l": v, "clip_g": {"TORCHTENSOR": [[0.0] * 1280]}}),
]  # fmt: skip


@pytest.mark.parametrize("how", ["tEXt", "zTXt", "iTXt"])
def test_hostile_png_payload_values(how: str) -> None:
    """Every hostile JSON value at every field of the A1111 payload, in each text chunk kind."""

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for site, put in PNG_SITES:
            for value in fz.HOSTILE_JSON:
                raw = fz.dump_json(put(PNG_DOC, value))
                data = fz.png_retext(PNG_SEED.data, base64.b64encode(raw), how)
                yield f"{how} {site} = {_json_label(value)}", data, "/fuzz/hostile.png"
        for key in fz.HOSTILE_KEYS:
            raw = fz.dump_json({**PNG_DOC, "string_to_param": {key: PNG_DOC["string_to_param"]["*"]}})
            yield f"{how} placeholder {key[:30]!r}", fz.png_retext(PNG_SEED.data, base64.b64encode(raw), how), "/fuzz/key.png"

    found = _violations(cases())
    assert not found, f"{len(found)} hostile PNG payloads broke the property:\n" + "\n".join(found)


def test_hostile_png_pixel_payloads() -> None:
    """Container B (pixels only) carrying hostile JSON documents."""

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for site, put in PNG_SITES[:8]:
            for value in fz.HOSTILE_JSON[::3]:
                yield f"pixels {site} = {_json_label(value)}", fz.pixel_png(fz.dump_json(put(PNG_DOC, value))), "/fuzz/pixels.png"
        for raw in (b"", b"{", b"\xff\xfe", b"[]", b"null", b"{}" + b" " * 1000):
            yield f"pixels raw {raw[:10]!r}", fz.pixel_png(raw), "/fuzz/pixels.png"

    found = _violations(cases())
    assert not found, f"{len(found)} hostile pixel payloads broke the property:\n" + "\n".join(found)


def test_hostile_png_headers() -> None:
    """IHDR fields, palettes, bit depths and interlacing that no embedding PNG uses."""
    chunks = fz.png_chunks(PNG_SEED.data)
    assert chunks is not None

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for offset, values in ((0, [0, 1, 65536, 2**31 - 1, 2**32 - 1]), (4, [0, 1, 65536, 2**31 - 1, 2**32 - 1])):
            for value in values:
                edited = [(k, b[:offset] + struct.pack(">I", value) + b[offset + 4 :] if k == b"IHDR" else b) for k, b in chunks]
                yield f"IHDR[{offset}] = {value}", fz.png_from_chunks(edited), "/fuzz/ihdr.png"
        for offset in (8, 9, 10, 11, 12):
            for value in (0, 1, 2, 3, 4, 6, 7, 16, 255):
                edited = [(k, b[:offset] + bytes([value]) + b[offset + 1 :] if k == b"IHDR" else b) for k, b in chunks]
                yield f"IHDR[{offset}] = {value}", fz.png_from_chunks(edited), "/fuzz/ihdr.png"

    found = _violations(cases())
    assert not found, "\n".join(found)


A1111_PICKLE = next(s for s in PICKLES if s.label == "a1111/sd1/float32/1")
LEGACY_PICKLE = next(s for s in PICKLES if s.label == "legacy/a1111/sd1")


@pytest.mark.parametrize("seed", [A1111_PICKLE, LEGACY_PICKLE], ids=["zip", "legacy"])
def test_hostile_pickle_opcodes(seed: fz.Seed) -> None:
    """Each hostile opcode inserted at every opcode boundary of an A1111 pickle, and each
    integer argument replaced by each hostile integer."""
    found_pickle = fz.pickle_of(seed.data)
    assert found_pickle is not None
    pkl, put_back = found_pickle
    ops = fz._opcodes(pkl)
    assert len(ops) > 20

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for _op, _arg, _start, end in ops[::2]:
            for snippet in fz.HOSTILE_OPS:
                yield f"insert {snippet[:24]!r} at {end}", put_back(pkl[:end] + snippet + pkl[end:]), "/fuzz/op.pt"
        for op, arg, start, end in ops:
            if isinstance(arg, int) and not isinstance(arg, bool):
                for value in fz.HOSTILE_INTS:
                    data = put_back(pkl[:start] + fz._encode_int_op(op, value) + pkl[end:])
                    yield f"{op.name} {arg} -> {value} at {start}", data, "/fuzz/int.pt"
            if isinstance(arg, str):
                for text in fz.HOSTILE_STRINGS:
                    yield f"{op.name} {arg[:20]!r} -> {text[:20]!r}", put_back(pkl[:start] + fz._op_str(text) + pkl[end:]), "/fuzz/str.pt"

    found = _violations(cases())
    assert not found, f"{len(found)} pickle edits broke the property:\n" + "\n".join(found[:60])


def test_hostile_zip_fields() -> None:
    """Every size, length, offset, count and method field of every zip header, set to each
    interesting value."""
    data = A1111_PICKLE.data

    def cases() -> Iterator[tuple[str, bytes, str]]:
        for sig, fields in fz._ZIP_FIELDS.items():
            for at in fz._find_all(data, sig):
                for name, (offset, fmt) in fields.items():
                    width = struct.calcsize(fmt)
                    (old,) = struct.unpack(fmt, data[at + offset : at + offset + width])
                    for value in {v & ((1 << 8 * width) - 1) for v in [*fz.INTERESTING_32, old + 1, old - 1, len(data)]}:
                        edited = data[: at + offset] + struct.pack(fmt, value) + data[at + offset + width :]
                        yield f"{sig!r}@{at} {name} {old} -> {value}", edited, "/fuzz/zip.pt"

    found = _violations(cases())
    assert not found, f"{len(found)} zip header edits broke the property:\n" + "\n".join(found[:60])


# --- formats.read on files and folders ------------------------------------------------------------


@fz.fuzz_test(60)
def test_fuzz_folders(c: fz.Chooser) -> None:
    """sd-concepts-library and diffusers folders: mutated embeddings, token and type files,
    a missing or extra file; read both the folder and its first file (the SDXL pair path)."""
    seed = c.choice(FOLDERS)
    files = fz.mutate_folder(c, seed, PARTNERS)
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        folder = fz.Seed(seed.label, files, folder=True).materialise(Path(tmp))
        targets = [folder, *sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))[:1]]
        for target in targets:
            try:
                fz.check_read_path(target)
            except fz.PropertyViolation as exc:
                raise AssertionError(f"{exc} -- folder {seed.label} files {[(n, len(d)) for n, d in files]}") from None


# --- the CLI --------------------------------------------------------------------------------------


def _mutated_file(c: fz.Chooser, where: Path) -> tuple[Path, str]:
    seed = c.choice(SYNTH)
    data = fz.mutate(c, seed.data, PARTNERS)
    path = where / f"in{c.integer(0, 10**6)}{seed.suffix}"
    path.write_bytes(data)
    return path, f"seed {seed.label}, input {fz.describe_bytes(data)}"


def _check(run: fz.CliRun, what: str, **options: object) -> None:
    try:
        fz.check_cli(run, **options)  # type: ignore[arg-type]
    except fz.PropertyViolation as exc:
        raise AssertionError(f"{exc} -- {what}") from None


@fz.fuzz_test(80)
def test_fuzz_cli_inspect(c: fz.Chooser) -> None:
    """``inspect FILE`` and ``inspect FILE --json`` on mutated files."""
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        path, what = _mutated_file(c, Path(tmp))
        _check(fz.run_cli(["inspect", str(path)]), what)
        _check(fz.run_cli(["inspect", str(path), "--json"]), what, json_out=True)


@fz.fuzz_test(30)
def test_fuzz_cli_add(c: fz.Chooser) -> None:
    """``add FILE`` into a fresh library (``--home``)."""
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        path, what = _mutated_file(c, Path(tmp))
        _check(fz.run_cli(["add", str(path), "--home", str(Path(tmp) / "home")]), what)


@fz.fuzz_test(30)
def test_fuzz_cli_validate(c: fz.Chooser) -> None:
    """``validate FILE --model sd1 --json`` (a family name: no model files needed); exit 1 is a
    finding, not a crash; a refused input (exit 2) may leave stdout empty."""
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        path, what = _mutated_file(c, Path(tmp))
        _check(fz.run_cli(["validate", str(path), "--model", "sd1", "--json"]), what, allowed=(0, 1, 2), json_out="if-any")


@fz.fuzz_test(20)
def test_fuzz_cli_folders(c: fz.Chooser) -> None:
    """``inspect --json`` and ``add`` on mutated concept folders."""
    seed = c.choice(FOLDERS)
    files = fz.mutate_folder(c, seed, PARTNERS)
    with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
        folder = fz.Seed(seed.label, files, folder=True).materialise(Path(tmp))
        what = f"folder {seed.label} files {[(n, len(d)) for n, d in files]}"
        _check(fz.run_cli(["inspect", str(folder), "--json"]), what, json_out=True)
        _check(fz.run_cli(["add", str(folder), "--home", str(Path(tmp) / "home")]), what)


HOSTILE_TEXT = [
    "\ud800", "\0", "a\nb", "\x1b]0;title\x07\x1b[2J", "\u202eevil\u200b", "x" * 100_000, "", "[bold]red[/bold]",
]  # fmt: skip


def _text_inputs(text: str, where: Path) -> list[tuple[str, Path]]:
    """The same hostile text as a stored token, an A1111 name, a token file and metadata."""
    from conceptlib.formats import _torchpickle as tp
    from factory import vectors

    vec = vectors(1, 768)

    def st(key: str, metadata: dict[str, str]) -> bytes:  # by hand: JSON escapes lone surrogates
        header = {"__metadata__": metadata, key: {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]}}
        return fz.safetensors_with_header(fz.dump_json(header), vec.tobytes())

    out = []
    token = where / "token.safetensors"
    token.write_bytes(st(text, {"format": "pt"}))
    out.append(("safetensors key", token))
    name = where / "name.pt"
    name.write_bytes(tp.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": text, "step": 1, "sd_checkpoint": text}))
    out.append(("a1111 name", name))
    folder = where / "concept"
    folder.mkdir()
    (folder / "learned_embeds.bin").write_bytes(tp.dumps({"<ok>": vec.reshape(768)}))
    (folder / "token_identifier.txt").write_bytes(text.encode("utf-8", "surrogatepass"))
    (folder / "type_of_concept.txt").write_bytes(text.encode("utf-8", "surrogatepass"))
    out.append(("token_identifier.txt", folder))
    meta = where / "meta.safetensors"
    meta.write_bytes(st("<m>", {"format": "pt", "conceptlib.name": text, text or "k": text, "conceptlib.metadata": json.dumps({text: text})}))
    out.append(("safetensors metadata", meta))
    return out


def test_hostile_text_through_the_cli() -> None:
    """Lone surrogates, control and bidi characters, NULs, terminal escapes, 100,000-character
    strings and rich markup as a token, an A1111 name, a token_identifier.txt and metadata,
    through ``inspect``, ``inspect --json`` and ``add``."""
    found = []
    for i, text in enumerate(HOSTILE_TEXT):
        with tempfile.TemporaryDirectory(prefix="conceptlib-fuzz-") as tmp:
            for label, path in _text_inputs(text, Path(tmp)):
                runs = [
                    (fz.run_cli(["inspect", str(path)]), {}),
                    (fz.run_cli(["inspect", "--json", str(path)]), {"json_out": True}),
                    (fz.run_cli(["add", str(path), "--home", str(Path(tmp) / f"home{i}")]), {}),
                ]
                for run, options in runs:
                    try:
                        fz.check_cli(run, **options)  # type: ignore[arg-type]
                    except fz.PropertyViolation as exc:
                        found.append(f"{label} {text[:20]!r}: {exc}"[:500])
    assert not found, f"{len(found)} CLI runs broke the property:\n" + "\n".join(found)
