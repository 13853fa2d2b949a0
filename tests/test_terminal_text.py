"""conceptlib._terminal: file-controlled text made safe and short for a terminal."""

from __future__ import annotations

import pytest

from conceptlib._terminal import MAX_SHOWN_CHARS, invisible_characters, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("cat-toy", "cat-toy"),
        ("猫 <cat> 🐈", "猫 <cat> 🐈"),  # every script stays readable
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # an escape sequence cannot clear the screen
        ("evil\u202egnp.pt", "evil\\u202egnp.pt"),  # a bidi override cannot reorder the line
        ("to\u200bken", "to\\u200bken"),  # zero-width space
        ("\ufefftoken", "\\ufefftoken"),  # BOM
        ("line\nbreak\r\x00", "line\\x0abreak\\x0d\\x00"),
        ("a\u2028b", "a\\u2028b"),  # line separator
        ("C:\\models\\x.pt", "C:\\models\\x.pt"),  # a real backslash stays as it is
    ],
)
def test_printable_escapes_what_draws_nothing(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_bounds_length_and_says_so() -> None:
    shown = printable("x" * 10_000)
    assert shown == "x" * MAX_SHOWN_CHARS + f"…(+{10_000 - MAX_SHOWN_CHARS} characters)"
    assert printable("x" * 10, limit=None) == "x" * 10


def test_printable_of_hostile_values_is_cheap_and_bounded() -> None:
    # str() of a 6,000-digit int raises ValueError; str() of a huge list walks all of it.
    assert printable(10**6000) == "<an integer of 19932 bits>"
    assert len(printable(list(range(1_000_000)))) < 100
    assert printable({"k": "\x1b"}) == "{'k': '\\x1b'}"


def test_invisible_characters_lists_each_once_in_order() -> None:
    assert invisible_characters("a\u202eb\x1bc\u202e") == ["\\u202e", "\\x1b"]
    assert invisible_characters("plain <token>") == []


def test_printable_shows_a_path_as_its_text() -> None:
    from pathlib import Path

    assert printable(Path("/tmp/x\x1b.pt")) == "/tmp/x\\x1b.pt"


def test_a1111_checksum_of_huge_values_warns_nothing() -> None:
    import warnings

    import numpy as np

    from conceptlib.hashing import a1111_checksum
    from conceptlib.tensor import Tensor

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning would raise here
        assert len(a1111_checksum(Tensor(np.full((1, 768), 3e38, dtype=np.float32), "float32"))) == 4
