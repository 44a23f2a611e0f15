"""After the book build: the library reference documents every public name of ``lora_edu``.

Reads the built book's Sphinx inventory (``_build/html/objects.inv``) and checks that

* every name in the ``__all__`` of every ``lora_edu`` module (except ``NOT_YET_DOCUMENTED``) has
  an entry of its kind (class, exception, function or data) under its one import path — the
  module's, or for a module inside a package the package's (``lora_edu.quant.quantize_4bit``);
* the general index (``genindex.html``) links every one of them;
* every link of each chapter's "Library reference" cell resolved: the built chapter links the
  reference entry of each name (and module) the cell names.

``tests/book/test_reference.py`` checks the page sources before a build; this checks what the
build made of them. Exit status 1 on any problem.

Usage: ``.venv/bin/python scripts/check_reference.py [--html _build/html]``
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import posixpath
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Modules being written, left out of these checks until a reference page (book/api/*.md) has an
#: ``automodule`` directive for them: adding that line brings them in.
NOT_YET_DOCUMENTED = ("lora_edu.grading",)

#: A MyST cross-reference role in a Markdown cell: {py:func}`~lora_edu.lora.apply_lora`.
ROLE = re.compile(r"\{py:(\w+)\}`~?([\w.]+)`")
#: The inventory type of each kind of public name, and the role that links it.
INVENTORY_TYPE = {"class": "py:class", "exception": "py:exception", "function": "py:function",
                  "data": "py:data", "module": "py:module"}
ROLE_OF_KIND = {"class": "class", "exception": "exc", "function": "func", "data": "data",
                "module": "mod"}


def _on_a_reference_page(module: str) -> bool:
    directive = re.compile(rf"automodule(?:::|\}})\s*{re.escape(module)}\s*$", re.M)
    return any(directive.search(page.read_text(encoding="utf-8"))
               for page in (ROOT / "book" / "api").glob("*.md"))


def _skipped(module: str) -> bool:
    return any((module == m or module.startswith(m + ".")) and not _on_a_reference_page(m)
               for m in NOT_YET_DOCUMENTED)


def library_modules() -> list[str]:
    """``lora_edu`` and every module and package below it, without importing the skipped ones."""
    import lora_edu

    found = ["lora_edu"]

    def walk(path: list[str], prefix: str) -> None:
        for info in pkgutil.iter_modules(path, prefix):
            if _skipped(info.name):
                continue
            found.append(info.name)
            if info.ispkg:
                walk(list(importlib.import_module(info.name).__path__), info.name + ".")

    walk(list(lora_edu.__path__), "lora_edu.")
    return found


def public_module(module: str) -> str:
    """The import path of ``module``'s public names: itself, or its package below ``lora_edu``
    (``lora_edu.quant.codes`` → ``lora_edu.quant``)."""
    return ".".join(module.split(".")[:2])


def kind_of(obj: object) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    return "function" if callable(obj) else "data"


def public_names() -> dict[str, str]:
    """Every public name as ``{import path + name: kind}``, from the ``__all__`` of every module."""
    names = {}
    for module in library_modules():
        mod = importlib.import_module(module)
        face = public_module(module)
        for name in mod.__all__:
            names[f"{face}.{name}"] = kind_of(getattr(mod, name))
    return names


def public_modules() -> list[str]:
    """The modules and packages the public names are imported from (one reference entry each)."""
    return sorted({public_module(m) for m in library_modules()})


def load_inventory(html: Path) -> dict[str, dict[str, tuple]]:
    from sphinx.util.inventory import InventoryFile

    with open(html / "objects.inv", "rb") as stream:
        return InventoryFile.load(stream, "", posixpath.join)


def inventory_problems(names: dict[str, str], inventory: dict[str, dict[str, tuple]]) -> list[str]:
    """Each public name missing from the inventory, or there as another kind."""
    problems = []
    for name, kind in sorted(names.items()):
        wanted = INVENTORY_TYPE[kind]
        if name in inventory.get(wanted, {}):
            continue
        other = [t for t, entries in inventory.items() if name in entries]
        problems.append(f"{name}: documented as {other[0]}, not {wanted}" if other else
                        f"{name}: not in the reference ({wanted})")
    return problems


def genindex_problems(names: dict[str, str], html: Path) -> list[str]:
    text = (html / "genindex.html").read_text(encoding="utf-8")
    return [f"{name}: not in the general index" for name in sorted(names)
            if f'#{name}"' not in text]


def reference_cell(notebook: Path) -> str:
    """The Markdown of the chapter's "Library reference" cell ("" if it has none)."""
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith("## Library reference"):
            return text
    return ""


def chapter_link_problems(inventory: dict[str, dict[str, tuple]], html: Path) -> list[str]:
    """Each name of a chapter's "Library reference" cell that the built chapter does not link."""
    problems = []
    uris = {name: entry[2] for entries in inventory.values() for name, entry in entries.items()}
    for notebook in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")):
        page = f"book/{notebook.stem}.html"
        built = (html / page).read_text(encoding="utf-8")
        roles = ROLE.findall(reference_cell(notebook))
        if not roles:
            problems.append(f"{notebook.name}: no Library reference links")
        for _role, name in roles:
            if name not in uris:
                problems.append(f"{notebook.name}: {name} is not in the reference")
                continue
            href = posixpath.relpath(uris[name].split("#")[0], posixpath.dirname(page))
            href += "#" + uris[name].split("#", 1)[1] if "#" in uris[name] else ""
            if f'href="{href}"' not in built:
                problems.append(f"{notebook.name}: the link to {name} ({href}) did not resolve")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default=ROOT / "_build" / "html", type=Path)
    args = parser.parse_args()
    inventory = load_inventory(args.html)
    names = public_names()
    modules = {m: "module" for m in public_modules()}
    problems = (inventory_problems(names, inventory) + inventory_problems(modules, inventory)
                + genindex_problems(names, args.html) + chapter_link_problems(inventory, args.html))
    for problem in problems:
        print(f"    {problem}")
    print(f"reference check: {len(names)} public names in {len(modules)} modules, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
