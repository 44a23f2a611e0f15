"""Helpers shared by several test modules (imported as ``helpers``; pytest puts ``tests/`` on the
path): the table of contents of the book, and the bad-input assertion of the parametrised tables."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    """Every file entry of ``_toc.yml``, the root first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return files


def assert_rejected(call: Callable[[], object], exc: type[Exception], name: str) -> None:
    """``call()`` raises exactly ``exc`` and the message starts with the argument's ``name``."""
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc
    assert re.match(rf"{re.escape(name)}\b", str(info.value)), str(info.value)
