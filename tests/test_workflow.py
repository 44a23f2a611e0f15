"""The GitHub Actions workflow that publishes the book: it builds with the README's command and
deploys ``_build/html`` with GitHub Pages' official actions, on a push to main."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

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
