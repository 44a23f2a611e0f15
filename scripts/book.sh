#!/usr/bin/env bash
# Set up (idempotent) and build the book into _build/html.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
echo "== building the book (the notebooks' stored, test-checked outputs; nothing is re-executed)"
build_book
echo "== done: open $(pwd)/_build/html/index.html"
