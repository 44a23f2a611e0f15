"""The code listings of the chapters are the library's source as it is now.

A chapter shows the lines that *are* a method with ``lora_edu.listing.show_source``: the stored
output carries the listed object's name and markers in its metadata. These tests re-read the
current source of every stored listing and compare it with what the page shows, and check that
each chapter shows the implementations its method consists of.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_edu.listing import LISTING_METADATA_KEY, resolve_listing_name, source_listing

ROOT = Path(__file__).resolve().parents[2]

#: What each chapter must show from the library's source (module:qualname).
REQUIRED = {
    "02_lora": ["lora_edu.lora.layer:LoRALinear.reference_forward",
                "lora_edu.lora.layer:LoRALinear.forward",
                "lora_edu.inject:add_low_rank_bypass",
                "lora_edu.lora.layer:LoRALinear.merge"],
    "04_nf4": ["lora_edu.quant.blockwise:quantize_4bit_reference"],
    "06_qlora": ["lora_edu.qlora:QLoRALinear.reference_forward",
                 "lora_edu.qlora:NF4Linear.forward",
                 "lora_edu.qlora:_DequantizeMatmul.forward",
                 "lora_edu.qlora:_DequantizeMatmul.backward",
                 "lora_edu.paged:PagedAdamW.step"],
    "07_adalora": ["lora_edu.adalora.svd_linear:SVDLinear.forward",
                   "lora_edu.adalora.svd_linear:orthogonal_regularizer",
                   "lora_edu.adalora.importance:ImportanceTracker.update",
                   "lora_edu.adalora.allocator:RankAllocator.step",
                   "lora_edu.adalora.allocator:RankAllocator.mask_to_budget"],
}


def stored_listings(notebook: Path) -> list[tuple[dict, dict]]:
    """(metadata of the listing, output data) of every listing stored in ``notebook``."""
    found = []
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            for meta in output.get("metadata", {}).values():
                if isinstance(meta, dict) and LISTING_METADATA_KEY in meta:
                    data = {mime: "".join(value) if isinstance(value, list) else value
                            for mime, value in output["data"].items()}   # stored as lines
                    found.append((meta[LISTING_METADATA_KEY], data))
    return found


def all_listings() -> list[tuple[str, dict, dict]]:
    return [(path.stem, meta, data) for path in sorted((ROOT / "book").glob("*.ipynb"))
            for meta, data in stored_listings(path)]


def test_the_book_has_listings():
    assert len(all_listings()) >= sum(len(v) for v in REQUIRED.values())


@pytest.mark.parametrize("chapter, meta, data", all_listings(),
                         ids=lambda v: v["name"] if isinstance(v, dict) and "name" in v else None)
def test_each_stored_listing_is_the_current_source(chapter, meta, data):
    obj = resolve_listing_name(meta["name"])
    current = source_listing(obj, start=meta["start"], stop=meta["stop"])
    assert data["text/plain"] == current, (
        f"{chapter}: the listing of {meta['name']} is not the library's source any more; "
        "re-execute the chapter")
    assert f"```python\n{current}\n```" in data["text/markdown"]


@pytest.mark.parametrize("chapter", sorted(REQUIRED))
def test_each_chapter_shows_its_methods_code(chapter):
    shown = {meta["name"] for meta, _ in stored_listings(ROOT / "book" / f"{chapter}.ipynb")}
    missing = [name for name in REQUIRED[chapter] if name not in shown]
    assert not missing, f"{chapter} does not show {missing}"
