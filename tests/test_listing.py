"""lora_edu.listing.source_listing against the source file read directly."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest

from lora_edu.listing import source_listing
from lora_edu.lora import LoRALinear
from lora_edu.paged import PagedAdamW


def plain(x):
    """A docstring
    over two lines."""
    # a comment stays
    y = x + 1
    return y


def no_doc(x):
    return x


class Holder:
    """Class docstring."""

    def method(self, a):
        """Method docstring."""
        if a:
            return 1
        return 2

    @staticmethod
    def static(b):
        """Static."""
        return b

    @property
    def prop(self):
        """Prop."""
        return 3


def decorated_target(x):
    """Doc."""
    return x * 2


decorated = functools.lru_cache(maxsize=None)(decorated_target)


def test_drops_the_docstring_and_keeps_everything_else():
    assert source_listing(plain) == (
        "def plain(x):\n    # a comment stays\n    y = x + 1\n    return y")
    assert source_listing(no_doc) == "def no_doc(x):\n    return x"
    kept = source_listing(plain, docstring=True)
    assert kept.splitlines()[1] == '    """A docstring' and kept.endswith("return y")


def test_methods_are_dedented_and_wrappers_unwrapped():
    assert source_listing(Holder.method) == (
        "def method(self, a):\n    if a:\n        return 1\n    return 2")
    assert source_listing(Holder().method) == source_listing(Holder.method)
    assert source_listing(Holder.__dict__["static"]).startswith("@staticmethod\ndef static(b):")
    assert source_listing(Holder.prop).startswith("@property\ndef prop(self):")
    assert source_listing(decorated) == "def decorated_target(x):\n    return x * 2"
    assert source_listing(Holder).splitlines()[:2] == ["class Holder:", ""]


def test_start_and_stop_cut_out_whole_lines():
    assert source_listing(Holder.method, start="if a", stop="return 1") == (
        "if a:\n    return 1")
    assert source_listing(plain, start="y =") == "y = x + 1\nreturn y"
    assert source_listing(plain, stop="y =") == (
        "def plain(x):\n    # a comment stays\n    y = x + 1")


def test_library_listings_are_the_file_text():
    """The listing of a real library function is the text of its file between its def line and
    its last line, docstring lines removed: read here with plain file reading, not inspect."""
    for obj in (LoRALinear.forward, PagedAdamW.step):   # step: wrapped by torch.no_grad()
        obj = inspect.unwrap(obj)
        path = Path(inspect.getsourcefile(obj))
        lines, first = inspect.getsourcelines(obj)
        file_lines = path.read_text(encoding="utf-8").splitlines()[first - 1:first - 1 + len(lines)]
        listing = source_listing(obj, docstring=True).splitlines()
        indent = len(file_lines[0]) - len(file_lines[0].lstrip())
        assert listing == [line[indent:] for line in file_lines]
        shorter = source_listing(obj).splitlines()
        assert len(shorter) < len(listing) and set(shorter) <= set(listing)
        assert '"""' not in "\n".join(shorter)


def test_bad_input():
    with pytest.raises(TypeError, match="function, method or class"):
        source_listing(42)
    with pytest.raises(TypeError, match="function, method or class"):
        source_listing(len)
    with pytest.raises(TypeError, match="docstring"):
        source_listing(plain, docstring="no")
    with pytest.raises(TypeError, match="start"):
        source_listing(plain, start=3)
    with pytest.raises(ValueError, match="start"):
        source_listing(plain, start="")
    with pytest.raises(ValueError, match="not in the listing"):
        source_listing(plain, start="nowhere")
    with pytest.raises(ValueError, match="stop"):
        source_listing(plain, start="y =", stop="comment")   # before start: not found after it


# --- show_source and Listing: what a chapter displays -----------------------------------------

def test_show_source_names_the_object_and_keeps_the_code():
    from lora_edu.listing import LISTING_METADATA_KEY, resolve_listing_name, show_source

    listing = show_source(PagedAdamW.step, start="for", stop="return")
    assert listing.name == "lora_edu.paged:PagedAdamW.step"
    assert listing.code == source_listing(PagedAdamW.step, start="for", stop="return")
    assert repr(listing) == listing.code
    markdown, meta = listing._repr_markdown_()
    # the code as a fenced python block, under the name; the metadata says what and where
    assert markdown.startswith("`PagedAdamW.step` from `lora_edu.paged` (excerpt)\n\n```python\n")
    assert markdown.endswith(f"\n{listing.code}\n```\n")
    assert meta == {LISTING_METADATA_KEY: {"name": listing.name, "start": "for",
                                           "stop": "return"}}
    assert resolve_listing_name(listing.name) is PagedAdamW.step


def test_show_source_of_a_static_method_and_a_function():
    from lora_edu.listing import resolve_listing_name, show_source
    from lora_edu.lowrank import best_rank_r

    listing = show_source(best_rank_r)
    assert listing.name == "lora_edu.lowrank:best_rank_r" and "(excerpt)" not in \
        listing._repr_markdown_()[0]
    assert resolve_listing_name(listing.name) is best_rank_r
    local = show_source(Holder.static)
    assert local.name.endswith(":Holder.static")


@pytest.mark.parametrize("name, exc", [(3, TypeError), ("no_colon", ValueError),
                                       ("a:b:c", ValueError)])
def test_resolve_listing_name_rejects_bad_names(name, exc):
    from lora_edu.listing import resolve_listing_name

    with pytest.raises(exc):
        resolve_listing_name(name)
