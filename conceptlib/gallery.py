"""A static gallery of the library: open ``index.html`` from a folder or publish it on GitHub Pages.

``conceptlib gallery OUT`` writes::

    OUT/index.html        the cards: search, filters, paging (no server, no CDN, no network)
    OUT/items.js          every item's fields for the page (a script, so file:// can load it)
    OUT/index.json        the same, for tools
    OUT/app.js, style.css
    OUT/items/NAME.html   one page per concept: images, description, hashes, lineage, downloads
    OUT/thumbs/HASH.png   a thumbnail per distinct sample image (or vectors), by content hash
    OUT/files/HASH/...    the concept as AUTOMATIC1111/ComfyUI and diffusers load it

The same library gives the same bytes (items sorted by name, no build time written). A rebuild
writes only what changed: thumbnails and downloads are named by content hash and kept, pages are
rewritten only when their bytes differ, and what no concept uses any more is removed.

Item fields come from concept manifests and file names written by strangers: every value is
HTML-escaped in pages and JSON-encoded (with ``<`` escaped) in scripts.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib._atomic import atomic_write_bytes

if TYPE_CHECKING:
    from conceptlib.concept import Concept
    from conceptlib.embedding import Embedding
    from conceptlib.library import Library
    from conceptlib.models import ModelInfo

__all__ = ["GalleryReport", "build"]

#: Thumbnail size in pixels (the longer side).
THUMB = 256
#: The fields of a concept's source a gallery shows.
_PUBLIC_SOURCE = ("type", "repo_id", "revision", "commit", "url", "file", "expression", "parents", "words")


@dataclass
class GalleryReport:
    """What :func:`build` did.

    Attributes:
        out: the gallery folder.
        items: concepts in the gallery.
        written: files written this time (others were already right).
        removed: files of earlier builds that no concept uses any more.
    """

    out: Path
    items: int
    written: int = 0
    removed: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"out": str(self.out), "index": str(self.out / "index.html"), "items": self.items, "written": self.written, "removed": self.removed, "skipped": list(self.skipped)}


class _Writer:
    """Writes files only when their bytes change, and remembers what the gallery holds."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.kept: set[Path] = set()
        self.written = 0

    def put(self, rel: str, data: bytes) -> str:
        path = self.out / rel
        self.kept.add(path)
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return rel
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        self.written += 1
        return rel

    def has(self, rel: str) -> bool:
        path = self.out / rel
        if path.is_file():
            self.kept.add(path)
            return True
        return False


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script>: ``</script>`` and comments cannot close it."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _thumbnail(source: bytes, path: str | os.PathLike[str]) -> bytes | None:
    """The thumbnail of a picture, or None for one that is no image within the limits (the card
    then shows another picture, or the vectors)."""
    from conceptlib._images import thumbnail_png
    from conceptlib.errors import ImageFileError

    try:
        return thumbnail_png(source, path, (THUMB, THUMB))
    except ImageFileError:
        return None


def _vector_picture(vectors: Any) -> bytes:
    """A concept without images, drawn from its vectors: a heat map (blue < 0 < red)."""
    import numpy as np
    from PIL import Image

    from conceptlib.analysis import heat_rgb

    rows = np.concatenate([t.to_float32().reshape(t.shape[0], -1) for t in vectors.values()], axis=1)
    rows = rows[:, : (rows.shape[1] // 16) * 16].reshape(rows.shape[0], -1, 16).mean(axis=2)
    scale = float(np.abs(rows).max()) or 1.0
    picture = Image.fromarray(heat_rgb(rows / scale), "RGB")
    picture = picture.resize((THUMB, max(16, min(THUMB, 16 * rows.shape[0]))), Image.Resampling.NEAREST)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _snippets(concept: Concept, word: str) -> dict[str, str]:
    return {
        "a1111": word,
        "comfyui": f"embedding:{word}",
        "diffusers": f'pipe.load_textual_inversion("{concept.name}/learned_embeds.safetensors", token="{concept.token}")',
    }


def _badge(library: Library, emb: Embedding, model: ModelInfo | None) -> dict[str, str] | None:
    if model is None:
        return None
    from conceptlib.validate import validate

    return _verdict(validate(emb, model, home=library.home), model)


def _verdict(findings: list[Any], model: ModelInfo) -> dict[str, str]:
    """A card's badge: the first error, else the first warning, else that it fits."""
    for severity in ("error", "warning"):
        found = [f for f in findings if f.severity == severity]
        if found:
            return {"status": severity, "text": found[0].message}
    return {"status": "ok", "text": f"fits {model.display_name}"}


class _Lazy:
    """An item's vectors (or a hypernetwork's network), decoded (and their hash checked) only
    when a file must be made, once."""

    def __init__(self, library: Library, name: str, *, network: bool = False) -> None:
        self.library, self.name, self.network = library, name, network
        self._emb: Any = None

    def __call__(self) -> Any:
        if self._emb is None:
            self._emb = self.library.hypernetwork(self.name) if self.network else self.library.embedding(self.name)
        return self._emb


def _network_files(concept: Concept, load: Callable[[], Any], writer: _Writer) -> tuple[str, dict[str, str]]:
    """A hypernetwork's download, by content hash: the ``WORD.pt`` ``export --for a1111`` writes."""
    from conceptlib import hypernet
    from conceptlib.library import network_word

    word = network_word(concept)
    paths = {"a1111": f"files/{concept.content_hash[:20]}/hypernetwork/{word}.pt"}
    if not writer.has(paths["a1111"]):
        writer.put(paths["a1111"], hypernet.dumps(load(), "a1111"))
    return word, paths


def _network_badge(library: Library, network: Any, model: ModelInfo | None) -> dict[str, str] | None:
    if model is None:
        return None
    from conceptlib.validate import validate_hypernetwork

    return _verdict(validate_hypernetwork(network, model, home=library.home), model)


def _network_snippets(word: str) -> dict[str, str]:
    return {
        "a1111": f"<hypernet:{word}:1>",
        "comfyui": f"HypernetworkLoader: {word}.pt, strength 1.0",
        "diffusers": f'with applied(pipe.unet, [(hypernet.read("{word}.pt"), 1.0)]): image = pipe(prompt).images[0]',
    }


def _network_picture(network: Any) -> bytes:
    """A hypernetwork without images, drawn from the first rows of each width's first layer."""
    import numpy as np

    from conceptlib.tensor import Tensor

    rows = {}
    for width in network.widths:
        first = next(t for k, t in sorted(network.modules[width][0].items(), key=lambda kv: int(kv[0].split(".")[1])) if t.ndim == 2)
        rows[str(width)] = Tensor.from_numpy(first.to_float32()[:8, :256].copy())
    # Widths differ: each is its own row block, padded to the widest.
    widest = max(t.shape[1] for t in rows.values())
    stacked = np.concatenate([np.pad(t.to_float32(), ((0, 0), (0, widest - t.shape[1]))) for t in rows.values()])
    return _vector_picture({"weights": Tensor.from_numpy(stacked)})


def _files(concept: Concept, load: Callable[[], Embedding], writer: _Writer) -> tuple[str, dict[str, str]]:
    """The concept's downloads, by content hash: (the UI word, layout -> relative path).

    The AUTOMATIC1111/ComfyUI file is the one ``export --for a1111`` writes (the same format,
    the same word for its name); the diffusers one is ``learned_embeds.safetensors``.
    """
    from conceptlib.formats import FORMATS, plan
    from conceptlib.library import UI_FORMATS, concept_word

    single, sdxl = UI_FORMATS["a1111"]
    is_sdxl = concept.family == "sdxl"
    fmt = sdxl if is_sdxl else single
    word = concept_word(concept, "a1111")
    folder = f"files/{concept.content_hash[:20]}"
    paths = {"a1111": f"{folder}/a1111/{word}{FORMATS[fmt].suffix}", "diffusers": f"{folder}/diffusers/learned_embeds.safetensors"}
    if all(writer.has(rel) for rel in paths.values()):
        return word, paths  # by content hash: already the right bytes, nothing is decoded
    emb = load()
    # Named by its word, as export names it (AUTOMATIC1111 reads the file's stored name).
    [(_, data)] = plan(replace(emb, name=word), Path(paths["a1111"]).name, format=fmt)[1]
    writer.put(paths["a1111"], data)
    [(_, data)] = plan(emb, "learned_embeds.safetensors", format="sdxl" if is_sdxl else "diffusers")[1]
    writer.put(paths["diffusers"], data)
    return word, paths


class _Previews:
    """Preview renders for concepts without sample images: one pipeline, loaded on first need.

    Each preview is cached by what made it (the concept's content hash, the model's fingerprints,
    the prompt, steps, size and seed), so a rebuild renders only new or changed concepts.
    """

    def __init__(self, library: Library, model: ModelInfo, steps: int) -> None:
        from conceptlib.single_file import native_size

        self.library, self.model, self.steps = library, model, steps
        self.size = min(512, native_size(model, None))
        self._pipe: Any = None
        self.failed: list[str] = []

    def key(self, concept: Concept) -> tuple[str, str, str]:
        from conceptlib.preview import NEGATIVE_PROMPTS, OBJECT_TEMPLATES, STYLE_TEMPLATES

        if concept.type == "negative":
            prompt, negative = NEGATIVE_PROMPTS[0], concept.token
        else:
            prompt, negative = (STYLE_TEMPLATES if concept.type == "style" else OBJECT_TEMPLATES)[0].format(concept.token), ""
        made_by = json.dumps([concept.content_hash, self.model.fingerprints(), prompt, negative, self.steps, self.size, 0], sort_keys=True)
        return hashlib.sha256(made_by.encode()).hexdigest()[:20], prompt, negative

    def render(self, concept: Concept, prompt: str, negative: str) -> bytes | None:
        import tempfile

        from conceptlib.errors import ConceptlibError
        from conceptlib.render import RenderConfig, render

        try:
            if self._pipe is None:
                from conceptlib.pipelines import load_pipeline

                self._pipe = load_pipeline(self.model)
            with tempfile.TemporaryDirectory(dir=self.library.staging_dir, prefix="gallery-") as folder:
                done = render(
                    RenderConfig(model=self.model, prompts=[prompt], negative=negative, steps=self.steps, size=(self.size, self.size), seed=0, out=folder, home=self.library.home),
                    pipeline=self._pipe,
                )  # fmt: skip
                return _thumbnail(done.images[0].path.read_bytes(), done.images[0].path)
        except ConceptlibError as exc:  # a concept that does not fit the model keeps its vectors' picture
            self.failed.append(f"{concept.name}: no preview ({exc.message})")
            return None


def build(
    library: Library,
    out: str | os.PathLike[str],
    *,
    model: ModelInfo | None = None,
    title: str = "Concepts",
    previews: bool = True,
    steps: int = 20,
) -> GalleryReport:
    """Write (or bring up to date) the gallery of ``library`` in ``out``.

    Args:
        library: the library.
        out: the gallery folder (created; files of earlier builds that no concept uses any
            more are removed, nothing else in it is touched).
        model: validate every concept against it and show the result as a badge; with the
            torch extra and weights, concepts without sample images get a preview render as
            their thumbnail.
        title: the page title.
        previews: render previews with ``model`` (False: the vectors' picture instead).
        steps: sampling steps of a preview.

    Returns:
        A :class:`GalleryReport`.
    """
    from conceptlib._terminal import printable
    from conceptlib.errors import ConceptlibError

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    writer = _Writer(root)
    items: list[dict[str, Any]] = []
    report = GalleryReport(root, 0)
    renders: _Previews | None = None
    if model is not None and previews and model.kind in ("diffusers", "checkpoint"):
        from conceptlib import _deps

        if _deps.available("torch") and _deps.available("diffusers") and _deps.available("transformers"):
            renders = _Previews(library, model, steps)
    for summary in library.list():
        network = summary.kind == "hypernetwork"
        load = _Lazy(library, summary.name, network=network)
        try:
            concept = library.show(summary.name)
            if network:
                word, downloads = _network_files(concept, load, writer)
                badge = _network_badge(library, load(), model) if model is not None else None
            else:
                word, downloads = _files(concept, load, writer)
                badge = _badge(library, load(), model) if model is not None else None
        except (ConceptlibError, OSError) as exc:  # one damaged concept is one skipped card, not a failed gallery
            report.skipped.append(f"{summary.name}: {printable(str(getattr(exc, 'message', exc)), 200)}")
            continue
        images: list[dict[str, Any]] = []
        folder = concept.path
        for record in concept.images:
            thumb_rel = f"thumbs/{record.sha256[:20]}.png"
            full_rel = f"images/{record.sha256[:20]}{Path(record.path).suffix.lower()}"
            if not (writer.has(thumb_rel) and writer.has(full_rel)):  # both, by the image's hash
                picture = folder / record.path if folder else None
                if picture is None or not picture.is_file():
                    continue
                data = picture.read_bytes()
                thumb = _thumbnail(data, picture)
                if thumb is None:
                    continue
                writer.put(thumb_rel, thumb)
                writer.put(full_rel, data)
            images.append({"thumb": thumb_rel, "full": full_rel})
        if not images and renders is not None and not network:
            key, prompt, negative = renders.key(concept)
            rel = f"thumbs/r-{key}.png"
            if writer.has(rel) or ((rendered := renders.render(concept, prompt, negative)) is not None and writer.put(rel, rendered)):
                images.append({"thumb": rel, "full": rel, "preview": prompt + (f" (negative: {negative})" if negative else "")})
        if not images:
            rel = f"thumbs/v-{concept.content_hash[:20]}.png"
            if not writer.has(rel):
                writer.put(rel, _network_picture(load()) if network else _vector_picture(load().vectors))
            images.append({"thumb": rel, "full": rel, "weights" if network else "vectors": True})
        source = concept.source or {}
        item: dict[str, Any] = {
            "kind": "hypernetwork" if network else "concept",
            "name": concept.name,
            "token": concept.token,
            "word": word,
            "type": concept.type,
            "family": concept.family or "unknown",
            "family_label": concept.family_label,
            "vectors": concept.vectors,
            "dtype": concept.dtype,
            "tags": sorted(concept.tags),
            "license": concept.license,
            "description": concept.description,
            "content_hash": concept.content_hash,
            "sha256": concept.file_sha256,
            "autov2": concept.file_sha256[:10] if concept.file_sha256 else None,
            "a1111": concept.file_sha256[:12] if concept.file_sha256 else None,
            "format": concept.format,
            # Where it came from, as far as it is public: a Hub repository, a merge. A local
            # source is a path on the machine that built the gallery, which a published site
            # must not show.
            "source": {k: v for k, v in source.items() if k in _PUBLIC_SOURCE},
            "history": [str(h.get("content_hash", ""))[:12] for h in concept.history],
            "images": images,
            "downloads": downloads,
            "snippets": _network_snippets(word) if network else _snippets(concept, word),
            "badge": badge,
            "page": f"items/{concept.name}.html",
        }
        if network:
            item["widths"] = concept.metadata.get("hypernetwork_widths", "")
        items.append(item)
        writer.put(item["page"], _item_page(item, title).encode("utf-8"))
    report.items = len(items)
    if renders is not None:
        report.skipped += renders.failed
    writer.put("index.json", (json.dumps({"title": title, "items": items}, ensure_ascii=False, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    writer.put("items.js", f"window.GALLERY = {_script_json({'title': title, 'items': items})};\n".encode())
    writer.put("index.html", _index_page(title, model).encode("utf-8"))
    writer.put("app.js", _APP_JS.encode("utf-8"))
    writer.put("style.css", _STYLE_CSS.encode("utf-8"))
    for sub in ("items", "thumbs", "images", "files"):
        base = root / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), reverse=True):
            if path.is_file() and path not in writer.kept:
                path.unlink()
                report.removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    report.written = writer.written
    return report


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _index_page(title: str, model: ModelInfo | None) -> str:
    against = f" Validation badges: against {_e(model.display_name)}." if model is not None else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="stylesheet" href="style.css">
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="about">Textual-inversion concepts, built by conceptlib.{against}</p>
<form id="filters" role="search" onsubmit="return false">
<label>Search <input id="q" type="search" placeholder="name, token, tag, description" autocomplete="off"></label>
<label>Family <select id="family"><option value="">all</option></select></label>
<label>Type <select id="type"><option value="">all</option></select></label>
<label>Kind <select id="kind"><option value="">all</option></select></label>
<label>Tag <select id="tag"><option value="">all</option></select></label>
<span id="count" aria-live="polite"></span>
</form>
</header>
<main>
<ul id="cards" class="cards"></ul>
<nav id="pages" aria-label="pages"></nav>
</main>
<script src="items.js"></script>
<script src="app.js"></script>
</body>
</html>
"""


def _shows(image: dict[str, Any], n: int) -> str:
    """What a picture of an item shows, for its alt text."""
    if image.get("vectors"):
        return "its vectors as a heat map"
    if image.get("weights"):
        return "its first layers' weights as a heat map"
    if image.get("preview"):
        return f"preview render of {image['preview']}"
    return f"sample image {n + 1}"


def _item_page(item: dict[str, Any], title: str) -> str:
    images = "\n".join(
        f'<a href="../{_e(i["full"])}"><img src="../{_e(i["thumb"])}" alt="{_e(item["name"])}: {_e(_shows(i, n))}" loading="lazy"></a>'
        for n, i in enumerate(item["images"])
    )
    rows = [
        ("token", item["token"]), ("type", item["type"]), ("base", item["family_label"]),
        ("widths", f"{item['widths']} ({item['dtype']})") if item["kind"] == "hypernetwork" else ("vectors", f"{item['vectors']} ({item['dtype']})"),
        ("tags", ", ".join(item["tags"])), ("license", item["license"]), ("format", item["format"]),
        ("content hash", item["content_hash"]), ("sha256", item["sha256"]), ("AutoV2", item["autov2"]), ("A1111", item["a1111"]),
        ("history", ", ".join(item["history"])),
    ]  # fmt: skip
    source = item["source"]
    if source.get("type") == "merge":
        rows.append(("merged from", source.get("expression")))
        rows.append(("parents", ", ".join(f"{p.get('name')} ({str(p.get('content_hash', ''))[:12]})" for p in source.get("parents") or [] if isinstance(p, dict))))
    elif source.get("repo_id"):
        rows.append(("source", f"{source.get('repo_id')}@{str(source.get('commit') or source.get('revision') or '')[:12]}"))
    table = "\n".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    badge = item["badge"]
    badge_html = f'<p class="badge {_e(badge["status"])}">{_e(badge["text"])}</p>' if badge else ""
    downloads = item["downloads"]
    snippets = item["snippets"]
    if item["kind"] == "hypernetwork":
        links = (
            f'<li><a href="../{_e(downloads["a1111"])}" download>AUTOMATIC1111 / ComfyUI</a>: put it in <code>models/hypernetworks/</code>, '
            f'write <code>{_e(snippets["a1111"])}</code> (ComfyUI: <code>{_e(snippets["comfyui"])}</code>)</li>\n'
            f'<li>diffusers, with conceptlib: <code>{_e(snippets["diffusers"])}</code></li>'
        )
    else:
        links = (
            f'<li><a href="../{_e(downloads["a1111"])}" download>AUTOMATIC1111 / ComfyUI</a>: put it in <code>embeddings/</code>, '
            f'write <code>{_e(snippets["a1111"])}</code> (ComfyUI: <code>{_e(snippets["comfyui"])}</code>)</li>\n'
            f'<li><a href="../{_e(downloads["diffusers"])}" download>diffusers</a>: <code>{_e(snippets["diffusers"])}</code></li>'
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(item["name"])} · {_e(title)}</title>
<link rel="stylesheet" href="../style.css">
</head>
<body>
<header><p><a href="../index.html">← {_e(title)}</a></p><h1>{_e(item["name"])}</h1>{badge_html}</header>
<main class="item">
<section class="images">{images}</section>
<section>
<p class="description">{_e(item["description"] or "")}</p>
<table>{table}</table>
<h2>Download</h2>
<ul>
{links}
</ul>
</section>
</main>
</body>
</html>
"""


_STYLE_CSS = """:root { color-scheme: light dark; font-family: system-ui, sans-serif; }
body { margin: 0 auto; max-width: 1200px; padding: 0 1rem 2rem; }
header h1 { margin-bottom: 0.2rem; }
#filters { display: flex; flex-wrap: wrap; gap: 0.8rem; align-items: end; margin: 1rem 0; }
#filters label { display: flex; flex-direction: column; font-size: 0.85rem; }
.cards { list-style: none; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }
.card { border: 1px solid #8884; border-radius: 8px; padding: 0.6rem; display: flex; flex-direction: column; gap: 0.3rem; }
.card img { width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 4px; background: #8882; }
.card h2 { font-size: 1rem; margin: 0; }
.meta { font-size: 0.8rem; opacity: 0.8; }
.tags span { font-size: 0.75rem; border: 1px solid #8886; border-radius: 4px; padding: 0 0.3rem; margin-right: 0.2rem; }
.badge { font-size: 0.8rem; border-radius: 4px; padding: 0.1rem 0.3rem; }
.badge.ok { background: #2a72; } .badge.warning { background: #da22; } .badge.error { background: #d222; }
.copy { display: flex; gap: 0.3rem; flex-wrap: wrap; }
.copy button { font-size: 0.75rem; }
#pages { display: flex; gap: 0.4rem; margin-top: 1rem; flex-wrap: wrap; }
#pages button[aria-current="page"] { font-weight: bold; }
.item { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; }
.item .images img { max-width: 48%; margin: 0 1% 1% 0; }
table th { text-align: left; padding-right: 1rem; vertical-align: top; }
td { word-break: break-all; }
"""

_APP_JS = r"""// conceptlib gallery: search, filters, paging and copy buttons over window.GALLERY.
(function () {
  "use strict";
  var data = window.GALLERY || { items: [] };
  var items = data.items;
  var PAGE = 60;
  var page = 0;
  var q = document.getElementById("q");
  var selects = { family: document.getElementById("family"), type: document.getElementById("type"), kind: document.getElementById("kind"), tag: document.getElementById("tag") };
  var cards = document.getElementById("cards");
  var pages = document.getElementById("pages");
  var count = document.getElementById("count");
  items.forEach(function (item) {
    item._text = [item.name, item.token, item.word, item.type, item.family_label, item.description || "", item.tags.join(" ")].join(" ").toLowerCase();
  });

  function fill(select, values) {
    values.sort().forEach(function (value) {
      var option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      select.appendChild(option);
    });
  }
  function unique(values) { return Object.keys(values.reduce(function (seen, v) { seen[v] = 1; return seen; }, {})); }
  fill(selects.family, unique(items.map(function (i) { return i.family; })));
  fill(selects.type, unique(items.map(function (i) { return i.type; })));
  fill(selects.kind, unique(items.map(function (i) { return i.kind; })));
  fill(selects.tag, unique([].concat.apply([], items.map(function (i) { return i.tags; }))));

  function matching() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    return items.filter(function (item) {
      if (selects.family.value && item.family !== selects.family.value) return false;
      if (selects.type.value && item.type !== selects.type.value) return false;
      if (selects.kind.value && item.kind !== selects.kind.value) return false;
      if (selects.tag.value && item.tags.indexOf(selects.tag.value) < 0) return false;
      return words.every(function (w) { return item._text.indexOf(w) >= 0; });
    });
  }

  function copy(text, button) {
    var done = function () { button.setAttribute("data-copied", text); button.textContent = "copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else {
      fallback(text);
      done();
    }
  }
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "absolute";
    area.style.left = "-9999px";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* the text stays selectable */ }
    document.body.removeChild(area);
  }

  function card(item) {
    var li = document.createElement("li");
    li.className = "card";
    li.setAttribute("data-name", item.name);
    var link = document.createElement("a");
    link.href = item.page;
    var img = document.createElement("img");
    img.src = item.images[0].thumb;
    img.alt = item.name + (item.images[0].vectors ? ": its vectors as a heat map" : item.images[0].weights ? ": its first layers' weights as a heat map" : item.images[0].preview ? ": preview render of " + item.images[0].preview : ": sample image");
    img.loading = "lazy";
    link.appendChild(img);
    var h = document.createElement("h2");
    var title = document.createElement("a");
    title.href = item.page;
    title.textContent = item.name;
    h.appendChild(title);
    var meta = document.createElement("p");
    meta.className = "meta";
    var size = item.kind === "hypernetwork" ? "hypernetwork, widths " + item.widths : item.vectors + (item.vectors === 1 ? " vector" : " vectors");
    meta.textContent = item.word + " · " + item.type + " · " + item.family_label + " · " + size + (item.license ? " · " + item.license : "");
    var tags = document.createElement("p");
    tags.className = "tags";
    item.tags.forEach(function (t) { var s = document.createElement("span"); s.textContent = t; tags.appendChild(s); });
    li.appendChild(link);
    li.appendChild(h);
    li.appendChild(meta);
    li.appendChild(tags);
    if (item.badge) {
      var badge = document.createElement("p");
      badge.className = "badge " + item.badge.status;
      badge.textContent = item.badge.text;
      li.appendChild(badge);
    }
    var buttons = document.createElement("div");
    buttons.className = "copy";
    [["a1111", "A1111"], ["comfyui", "ComfyUI"], ["diffusers", "diffusers"]].forEach(function (pair) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "copy-" + pair[0];
      b.textContent = "copy " + pair[1];
      b.setAttribute("aria-label", "copy the " + pair[1] + " prompt snippet for " + item.name);
      b.addEventListener("click", function () { copy(item.snippets[pair[0]], b); });
      buttons.appendChild(b);
    });
    li.appendChild(buttons);
    return li;
  }

  function render() {
    var found = matching();
    var total = Math.max(1, Math.ceil(found.length / PAGE));
    if (page >= total) page = total - 1;
    cards.textContent = "";
    var fragment = document.createDocumentFragment();
    found.slice(page * PAGE, (page + 1) * PAGE).forEach(function (item) { fragment.appendChild(card(item)); });
    cards.appendChild(fragment);
    count.textContent = found.length + " of " + items.length;
    pages.textContent = "";
    if (total > 1) {
      for (var p = 0; p < total; p++) {
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = String(p + 1);
        if (p === page) b.setAttribute("aria-current", "page");
        b.addEventListener("click", (function (target) { return function () { page = target; render(); window.scrollTo(0, 0); }; })(p));
        pages.appendChild(b);
      }
    }
  }
  var timer = null;
  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(function () { page = 0; render(); }, 60); });
  Object.keys(selects).forEach(function (k) { selects[k].addEventListener("change", function () { page = 0; render(); }); });
  render();
})();
"""
