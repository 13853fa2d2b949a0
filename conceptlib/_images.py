"""Images from the wild, checked as what they claim to be before the library keeps them.

A concept's sample images come from strangers (an sd-concepts-library repository's
``concept_images/``, a downloaded folder) and end up in the library, in model cards pushed to the
Hub and in web pages that show them. A file only becomes such an image here when:

* its bytes are an image of a format the library keeps (PNG, JPEG, WebP, GIF, BMP), sniffed
  from the bytes, never taken from the name; a ``.png`` that is a shell script or an HTML page
  is refused;
* that format is the one its suffix claims (a ``.png`` holding a JPEG is refused: a file that
  lies about its type is how polyglot tricks start, and the library stores what the name says);
* it is at most :data:`MAX_IMAGE_BYTES` bytes and :data:`MAX_IMAGE_PIXELS` pixels, checked
  from the header before any pixel is decoded, and its first frame decodes completely.

Pillow's own decompression-bomb check only *warns* (on stderr) between its limit and twice
that; here it is an error like any other, and Pillow never prints anything.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from dataclasses import dataclass

from conceptlib._terminal import printable
from conceptlib.errors import ImageFileError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "ImageInfo", "check_image", "sniff_image", "thumbnail_png"]

#: The suffixes the library keeps as images, and the format each one claims.
SUFFIX_FORMATS: dict[str, str] = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP",
}  # fmt: skip
IMAGE_SUFFIXES = tuple(SUFFIX_FORMATS)
#: Larger files are refused unread: training photos and samples are a few MB at most.
MAX_IMAGE_BYTES = 50 * 2**20
#: 8192 x 8192: more than any camera or training image, below Pillow's own bomb limit (89 MP),
#: and about 256 MB once decoded as RGBA.
MAX_IMAGE_PIXELS = 8192 * 8192

# warnings.catch_warnings swaps process-wide state; two checks at once must not interleave.
_DECODE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`check_image` found.

    Attributes:
        format: ``PNG``, ``JPEG``, ``WEBP``, ``GIF`` or ``BMP``.
        width: in pixels.
        height: in pixels.
    """

    format: str
    width: int
    height: int


def sniff_image(data: bytes) -> str | None:
    """The image format of ``data`` from its first bytes, or None when it is no image kept here."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    return None


def _what_it_is(data: bytes) -> str:
    """A few words on what a non-image holds, for the message."""
    if not data:
        return "the file is empty"
    head = data[:2048].lstrip().lower()
    if head.startswith(b"#!"):
        return "it holds a script"
    if head.startswith((b"<!doctype html", b"<html", b"<head")) or b"<html" in head:
        return "it holds an HTML page"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "it holds text"
    return f"its first bytes are {data[:8]!r}"


def _plugin(fmt: str) -> type:
    # The format's own class, not Image.open: Image.open would try every format Pillow knows
    # (the bytes decide here, once) and warns on stderr about large images.
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngImageFile

        return PngImageFile
    if fmt == "JPEG":
        from PIL.JpegImagePlugin import JpegImageFile

        return JpegImageFile
    if fmt == "WEBP":
        from PIL.WebPImagePlugin import WebPImageFile

        return WebPImageFile
    if fmt == "GIF":
        from PIL.GifImagePlugin import GifImageFile

        return GifImageFile
    from PIL.BmpImagePlugin import BmpImageFile

    return BmpImageFile


def check_image(data: bytes, path: str | os.PathLike[str]) -> ImageInfo:
    """Check that ``data``, read from ``path``, is an image of the format its suffix claims.

    Args:
        data: the file's bytes.
        path: where they come from: its suffix is the claim, and messages name it.

    Returns:
        The format and size found.

    Raises:
        ImageFileError: not an image (a script, an HTML page, text), another format than the
            suffix says, too many bytes or pixels, or damaged.

    Example:
        >>> check_image(Path("cat.png").read_bytes(), "cat.png").format  # doctest: +SKIP
        'PNG'
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageFileError(f"is {len(data) / 2**20:.0f} MiB, more than the {MAX_IMAGE_BYTES // 2**20} MiB an image may have", path=path)
    fmt = sniff_image(data)
    claimed = SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        named = f"named {suffix}" if suffix else "named as an image"
        raise ImageFileError(f"is not an image, though {named}: {_what_it_is(data)}", path=path)
    if claimed is not None and claimed != fmt:
        raise ImageFileError(f"is named {suffix} but holds a {fmt} image", path=path, hint="give it the suffix of the format it holds, if you trust it")
    from PIL import Image

    with _DECODE_LOCK, warnings.catch_warnings():
        # Pillow's other warnings (odd metadata) would reach stderr; its bomb warning is an error.
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        try:
            image = _plugin(fmt)(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageFileError(
                    f"is {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS // 10**6} million an image may have",
                    path=path,
                )
            image.load()
        except ImageFileError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # A GIF frame larger than its screen, say: Pillow measured it before we could.
            measured = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(measured.group(1)) / 10**6:.0f} million pixels" if measured else "too many pixels"
            raise ImageFileError(
                f"is a decompression bomb: its frames claim {size}, more than the {MAX_IMAGE_PIXELS // 10**6} million an image may have",
                path=path,
            ) from None
        except MemoryError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad bytes
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImageFileError(f"is a damaged {fmt} image ({printable(detail)})", path=path) from None
    return ImageInfo(fmt, width, height)


def thumbnail_png(data: bytes, path: str | os.PathLike[str], box: tuple[int, int]) -> bytes:
    """A PNG of the image in ``data`` scaled down to fit ``box`` (never up), in RGB.

    The bytes are checked first (:func:`check_image`: format, size and pixel limits), so a
    picture is only decoded within the bounds every image in conceptlib has.

    Raises:
        ImageFileError: see :func:`check_image`.
    """
    check_image(data, path)
    from PIL import Image

    with _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            picture = image.convert("RGB")
    picture.thumbnail(box)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
