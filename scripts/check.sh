#!/usr/bin/env bash
# Set up (idempotent) and run every check: ruff, the library tests, every notebook under nbval
# twice (this CPU's native kernels, then torch's and MKL's portable baseline kernels, so that
# the stored outputs are shown to hold on another x86-64 CPU too), and a fresh book build with
# warnings as errors, and the real-browser check of every page (scripts/browser_check.sh).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export PYTHONHASHSEED=0

run_pytest() {  # pytest exit code 5 means "no tests collected": a broken suite, not a pass.
  local rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "ERROR: pytest collected no tests for: $* (investigate; this is not a pass)" >&2
  fi
  return "$rc"
}

SECONDS=0
echo "== ruff"
.venv/bin/ruff check .
echo "== library tests"
run_pytest tests
t_tests=$SECONDS
# A cell may take several times longer on a busy 2-core machine than on an idle one.
NBVAL=(--nbval --nbval-current-env --nbval-cell-timeout=900 book)
echo "== notebooks, native CPU kernels (nbval re-executes every chapter, compares stored outputs)"
run_pytest "${NBVAL[@]}"
echo "== notebooks again, portable CPU kernels (ATEN_CPU_CAPABILITY=default, MKL SSE4.2), no re-saving"
ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 run_pytest "${NBVAL[@]}"
t_nbval=$((SECONDS - t_tests))
echo "== book build (warnings are errors)"
rm -rf _build
build_book -W
t_book=$((SECONDS - t_tests - t_nbval))
echo "== browser check (every page in headless Chromium, offline)"
bash scripts/browser_check.sh
t_browser=$((SECONDS - t_tests - t_nbval - t_book))
echo "== all checks passed: tests ${t_tests}s, nbval ${t_nbval}s, book ${t_book}s, browser ${t_browser}s"
