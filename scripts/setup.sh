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
echo "   (first run: about a minute, torch and Jupyter Book are large; later runs: seconds)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -e . \
  2> >(grep -v "^WARNING: Location" >&2)
