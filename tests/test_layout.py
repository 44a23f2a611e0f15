"""The library's layout rules: one import path per public name, basic → composite imports only,
documented exports."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import lora_edu

PKG = Path(lora_edu.__file__).parent

# A concept may import concepts of a lower layer (and itself), never a higher one.
LAYER = {
    "checks": 0,
    "listing": 1, "report": 1, "parallel": 1, "timing": 1,
    "lowrank": 1, "quant": 1, "inject": 1, "memory": 1, "paged": 1, "pretrained": 1,
    "wordnet": 1,
    "lora": 2, "toy": 2, "adapter": 2, "encoder": 2,
    "adalora": 3, "qlora": 3, "placement": 3,
    "supersense": 4, "grading": 4,
}


def modules() -> list[str]:
    return ["lora_edu"] + [m.name for m in pkgutil.walk_packages(lora_edu.__path__, "lora_edu.")]


def source_file(name: str) -> Path:
    return Path(importlib.import_module(name).__file__)


def concept(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_known_layer():
    for name in modules():
        if name != "lora_edu":
            assert concept(name) in LAYER, f"{name}: add its concept to LAYER"


@pytest.mark.parametrize("name", modules())
def test_all_names_are_defined_where_listed(name):
    """Outside a package's __init__.py, a module lists only names it defines itself."""
    path = source_file(name)
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    if path.name == "__init__.py":
        for public in exported:
            assert hasattr(module, public), f"{name}.__all__ lists missing {public!r}"
        return
    tree = ast.parse(path.read_text())
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
    for public in exported:
        assert public in defined, f"{name} re-exports {public!r}; import it from its own module"


def test_every_public_name_has_one_import_path():
    """A public name is listed by exactly one public face: a package __init__ or a flat module."""
    faces: dict[str, list[str]] = {}
    for name in modules():
        path = source_file(name)
        parent_is_package = name.count(".") >= 2  # lora_edu.quant.codes: behind lora_edu.quant
        if parent_is_package and path.name != "__init__.py":
            continue
        for public in importlib.import_module(name).__all__:
            faces.setdefault(public, []).append(name)
    doubled = {n: f for n, f in faces.items() if len(f) > 1 and n != "__version__"}
    assert not doubled, doubled


@pytest.mark.parametrize("name", [m for m in modules() if m != "lora_edu"])
def test_imports_go_from_composite_to_basic_only(name):
    own = concept(name)
    tree = ast.parse(source_file(name).read_text())
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            if target == "lora_edu":
                pytest.fail(f"{name} imports the top-level package; import the concept instead")
            if target.startswith("lora_edu."):
                other = concept(target)
                assert other == own or LAYER[other] < LAYER[own], (
                    f"{name} (layer {LAYER[own]}) imports {target} (layer {LAYER[other]})")


@pytest.mark.parametrize("name", modules())
def test_exported_callables_have_docstrings(name):
    module = importlib.import_module(name)
    for public in module.__all__:
        obj = getattr(module, public)
        if callable(obj) and (inspect.isfunction(obj) or inspect.isclass(obj)):
            assert inspect.getdoc(obj), f"{name}.{public} has no docstring"


FORBIDDEN = {"matplotlib", "peft", "bitsandbytes", "transformers"}


def test_library_does_not_import_matplotlib_or_test_only_packages():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, (
                    f"{path.relative_to(PKG)} imports {n}")


def test_no_public_function_raises_key_error():
    """The API convention: a wrong or missing key is a wrong value, ``ValueError`` (a
    ``KeyError`` would also print its message with quotes); no library module raises KeyError."""
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id == "KeyError":
                    offenders.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not offenders, offenders


def test_apply_functions_return_the_model():
    """``apply_*`` (and ``prepare_qlora``) change the model in place and return it."""
    from torch import nn

    from lora_edu.adalora import apply_adalora
    from lora_edu.adapter import apply_adapters
    from lora_edu.lora import apply_lora
    from lora_edu.qlora import prepare_qlora

    calls = [lambda m: apply_lora(m, "0", r=2, alpha=4), lambda m: apply_adalora(m, "0", r=2),
             lambda m: apply_adapters(m, "0", bottleneck=2),
             lambda m: prepare_qlora(m, "0", r=2, alpha=4)]
    for call in calls:
        model = nn.Sequential(nn.Linear(64, 8))
        assert call(model) is model
