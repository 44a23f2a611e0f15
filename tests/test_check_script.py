"""scripts/check.sh reports every step: a failing step does not hide the ones after it."""

from __future__ import annotations

import subprocess

from helpers import ROOT


def run_steps(body: str) -> subprocess.CompletedProcess:
    script = f"set -uo pipefail\nsource scripts/steps.sh\n{body}\nfinish_steps\n"
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_failed_step_does_not_stop_the_next_and_the_end_fails():
    result = run_steps('step "first" false\nstep "second" echo ran-second\nstep "third" true')
    assert "ran-second" in result.stdout
    assert result.returncode == 1
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("   ")]
    assert [(w[0], w[2]) for w in lines] == [("FAILED", "first"), ("ok", "second"),
                                             ("ok", "third")]
    assert "exit 1" in result.stdout


def test_all_steps_ok_exit_zero():
    result = run_steps('step "one" true\nstep "two" true')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


def test_check_script_runs_its_steps_through_the_runner_without_set_e():
    text = (ROOT / "scripts" / "check.sh").read_text()
    after_setup = text.split("source scripts/setup.sh", 1)[1]
    assert "set +e" in after_setup.split("\n")[1], "errexit must be off once set-up is done"
    for what in ("ruff", "library tests", "notebooks, native", "notebooks again, portable",
                 "book build", "browser check"):
        assert f'step "{what}' in text, what
    assert text.rstrip().endswith("finish_steps")
