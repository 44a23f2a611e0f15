"""The library reference (book/api/) documents every public name of ``lora_edu`` exactly once, and
each chapter's "Library reference" cell links every name the chapter imports.

Static checks of the sources, before any build: the autodoc directives of the reference pages
against the ``__all__`` of every module, and each chapter's code cells against its last Markdown
cell. ``scripts/check_reference.py`` checks the built inventory after the build.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, toc_files

_spec = importlib.util.spec_from_file_location("check_reference",
                                               ROOT / "scripts" / "check_reference.py")
check_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_reference)

API = ROOT / "book" / "api"
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
#: The autodoc directives that describe one object each (and so give it an index entry).
OBJECT_DIRECTIVES = {"autofunction", "autoclass", "autodata", "autoexception", "autoattribute",
                     "automethod", "autodecorator"}


# --- the reference pages --------------------------------------------------------------------

def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def reference_pages() -> list[Path]:
    return sorted(API.glob("*.md"))


MODULE_DIRECTIVES = {"automodule", "py:module", "py:currentmodule", "currentmodule"}
RST_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::\s*(.*)$")
MYST_DIRECTIVE = re.compile(r"^\s*`{3,}\{([\w:-]+)\}\s*(.*)$")
OPTION = re.compile(r"^\s*:([\w-]+):(?:\s+(.*))?$")


def directives(text: str) -> list[dict]:
    """The autodoc/autosummary directives of a page, in order, whether written as RST inside an
    ``{eval-rst}`` block (``.. automodule:: x``) or as MyST fences (```` ```{automodule} x ````):
    name, argument, options, the entries of an autosummary and the module current at it."""
    found: list[dict] = []
    lines = text.splitlines()
    current = None
    i = 0
    while i < len(lines):
        rst = RST_DIRECTIVE.match(lines[i])
        myst = None if rst else MYST_DIRECTIVE.match(lines[i])
        name, arg = (rst.group(2), rst.group(3)) if rst else myst.groups() if myst else ("", "")
        i += 1
        if not (name.startswith("auto") or name in MODULE_DIRECTIVES):
            continue
        options: dict[str, str] = {}
        while i < len(lines) and (option := OPTION.match(lines[i])):
            options[option.group(1)] = (option.group(2) or "").strip()
            i += 1
        entries: list[str] = []
        if name == "autosummary":     # its content: one name a line, up to the end of the block
            indent = len(rst.group(1)) if rst else -1
            while i < len(lines):
                line = lines[i]
                ends_rst = rst and line.strip() and len(line) - len(line.lstrip()) <= indent
                if ends_rst or line.strip().startswith("```"):
                    break
                if line.strip():
                    entries.append(line.strip())
                i += 1
        if name in MODULE_DIRECTIVES:
            current = arg.strip()
        found.append({"name": name, "arg": arg.strip(), "options": options, "entries": entries,
                      "module": current})
    return found


def all_directives() -> list[tuple[Path, dict]]:
    return [(page, d) for page in reference_pages() for d in directives(page.read_text())]


def full_name(arg: str, module: str | None) -> str:
    return arg if arg.startswith("lora_edu") or module is None else f"{module}.{arg}"


def documented_names() -> list[str]:
    """Every name the reference pages describe with an index entry, once per description."""
    defaults = config()["sphinx"]["config"].get("autodoc_default_options", {})
    names = []
    for _page, d in all_directives():
        opts = d["options"]
        if "no-index" in opts or "noindex" in opts:
            continue
        if d["name"] == "automodule":
            if "no-members" in opts or not ("members" in opts or defaults.get("members")):
                continue
            module = importlib.import_module(d["arg"])
            listed = [n.strip() for n in opts.get("members", "").split(",") if n.strip()]
            excluded = {n.strip() for n in opts.get("exclude-members", "").split(",")}
            special = {n.strip() for n in opts.get("special-members", "").split(",")}
            for n in listed or module.__all__:
                if n in excluded or (n.startswith("__") and n not in special):
                    continue
                names.append(f"{d['arg']}.{n}")
        elif d["name"] in OBJECT_DIRECTIVES:
            names.append(full_name(d["arg"], d["module"]))
    return names


def test_the_reference_pages_follow_the_chapters_in_the_toc():
    files = toc_files()
    pages = [f"book/api/{p.stem}" for p in reference_pages()]
    assert "book/api/index" in pages
    for page in pages:
        assert page in files, f"{page}.md is not in _toc.yml"
    last_chapter = max(files.index(f"book/{nb.stem}") for nb in CHAPTERS)
    assert min(files.index(p) for p in pages) > last_chapter


def test_the_build_loads_autodoc_and_napoleon():
    sphinx = config()["sphinx"]
    for extension in ("sphinx.ext.autodoc", "sphinx.ext.napoleon"):
        assert extension in sphinx["extra_extensions"]
    assert sphinx["config"]["add_module_names"] is False
    assert sphinx["config"]["autodoc_member_order"] == "bysource"


def test_every_public_name_is_documented_once_under_its_import_path():
    public = check_reference.public_names()
    documented = documented_names()
    counts = {name: documented.count(name) for name in public}
    missing = sorted(n for n, c in counts.items() if c == 0)
    doubled = sorted(n for n, c in counts.items() if c > 1)
    stray = sorted(set(documented) - set(public))
    assert not missing, f"public names the reference does not document: {missing}"
    assert not doubled, f"documented more than once (a Sphinx duplicate description): {doubled}"
    assert not stray, f"documented under a path that is not their import path: {stray}"


def test_every_module_has_its_entry_and_a_summary_table_of_its_names():
    modules = check_reference.public_modules()
    documented = [d["arg"] for _p, d in all_directives() if d["name"] == "automodule"]
    assert sorted(documented) == modules
    for page, d in all_directives():
        if d["name"] != "autosummary" or page.stem == "index":
            continue
        listed = {full_name(e, d["module"]) for e in d["entries"]}
        wanted = {f"{d['module']}.{n}" for n in importlib.import_module(d["module"]).__all__}
        assert listed == wanted, (f"{page.name}: the summary of {d['module']} differs from its "
                                  f"__all__: {sorted(listed ^ wanted)}")


def test_the_overview_lists_every_module():
    tables = [d for d in directives((API / "index.md").read_text()) if d["name"] == "autosummary"]
    assert tables
    listed = {e for d in tables for e in d["entries"]}
    assert listed == set(check_reference.public_modules())


def test_the_page_parser_sees_what_autodoc_would_document():
    page = ("```{eval-rst}\n.. automodule:: lora_edu.timing\n   :members:\n\n"
            "   .. autosummary::\n      :nosignatures:\n\n      fastest_ms\n```\n\n"
            "```{autofunction} lora_edu.lowrank.best_rank_r\n:no-index:\n```\n")
    found = directives(page)
    assert [(d["name"], d["arg"]) for d in found] == [
        ("automodule", "lora_edu.timing"), ("autosummary", ""),
        ("autofunction", "lora_edu.lowrank.best_rank_r")]
    assert found[0]["options"] == {"members": ""}
    assert found[1]["entries"] == ["fastest_ms"] and found[1]["module"] == "lora_edu.timing"
    assert found[2]["options"] == {"no-index": ""}


# --- the chapters' "Library reference" cells --------------------------------------------------

def imported_public_names(cells: list[dict]) -> set[str]:
    """The public ``lora_edu`` names the code cells import, under their import paths:
    ``from lora_edu.x import (a, b)``, and ``import lora_edu[.x] [as y]`` with ``y.a`` used."""
    public = check_reference.public_names()
    names = set()
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(source)
        aliases = {}
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "lora_edu"):
                for alias in node.names:
                    names.add(f"{check_reference.public_module(node.module)}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "lora_edu":
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                base = ast.unparse(node.value)
                if base in aliases:
                    names.add(f"{check_reference.public_module(aliases[base])}.{node.attr}")
    return names & set(public)        # private helpers (_name) and submodules are not linked


def reference_cell(nb: Path) -> dict:
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    found = [c for c in cells if c["cell_type"] == "markdown"
             and "".join(c["source"]).startswith("## Library reference")]
    assert len(found) == 1, f"{nb.name}: {len(found)} 'Library reference' cells"
    assert found[0] is cells[-1], f"{nb.name}: the Library reference cell is not the last cell"
    return found[0]


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_each_chapter_links_the_reference_of_every_name_it_imports(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    text = "".join(reference_cell(nb)["source"])
    roles = check_reference.ROLE.findall(text)
    linked = {name for role, name in roles if role != "mod"}
    imported = imported_public_names(cells)
    assert imported, f"{nb.name} imports no public lora_edu name"
    assert not imported - linked, f"{nb.name}: imported but not linked: {sorted(imported - linked)}"
    assert not linked - imported, f"{nb.name}: linked but not imported: {sorted(linked - imported)}"
    public = check_reference.public_names()
    modules = {name for role, name in roles if role == "mod"}
    assert modules == {n.rsplit(".", 1)[0] for n in imported}, f"{nb.name}: module links"
    for role, name in roles:
        kind = "module" if name in modules else public[name]
        assert role == check_reference.ROLE_OF_KIND[kind], f"{nb.name}: {{py:{role}}}`{name}`"


def test_the_import_parser_finds_every_form_of_import():
    def code(source: str) -> dict:
        return {"cell_type": "code", "source": source.splitlines(keepends=True)}

    cells = [code("%matplotlib inline\nimport lora_edu\nlora_edu.seed_everything(0)\n"
                  "from lora_edu.quant import (nf4_code,\n    quantize_4bit)\n"),
             code("import lora_edu.qlora as q\nq.prepare_qlora\nq._DequantizeMatmul\n"
                  "from lora_edu.quant.codes import _normal_float_code\n"),
             {"cell_type": "markdown", "source": ["from lora_edu.toy import train"]}]
    assert imported_public_names(cells) == {"lora_edu.seed_everything", "lora_edu.quant.nf4_code",
                                            "lora_edu.quant.quantize_4bit",
                                            "lora_edu.qlora.prepare_qlora"}


# --- the post-build check (scripts/check_reference.py) ----------------------------------------

def test_public_names_use_one_import_path_and_skip_the_undocumented_modules():
    names = check_reference.public_names()
    assert names["lora_edu.quant.quantize_4bit"] == "function"
    assert names["lora_edu.lora.LoRALinear"] == "class"
    assert names["lora_edu.paged.DeviceOutOfMemory"] == "exception"
    assert names["lora_edu.quant.NF4_OFFSET"] == "data"
    assert names["lora_edu.grading.check_lora_forward"] == "function"
    assert names["lora_edu.grading.HINT_SCALE_ALPHA"] == "data"
    assert not any(".blockwise." in n or ".lora_checks." in n for n in names)


def test_the_inventory_check_reports_a_missing_or_mistyped_name():
    names = {"lora_edu.lowrank.best_rank_r": "function", "lora_edu.toy.Task": "class"}
    entry = ("lora-edu", "", "book/api/x.html#a", "-")
    good = {"py:function": {"lora_edu.lowrank.best_rank_r": entry},
            "py:class": {"lora_edu.toy.Task": entry}}
    assert check_reference.inventory_problems(names, good) == []
    missing = {"py:function": good["py:function"]}
    assert check_reference.inventory_problems(names, missing) == [
        "lora_edu.toy.Task: not in the reference (py:class)"]
    mistyped = {"py:function": good["py:function"], "py:data": good["py:class"]}
    assert check_reference.inventory_problems(names, mistyped) == [
        "lora_edu.toy.Task: documented as py:data, not py:class"]
