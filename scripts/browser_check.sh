#!/usr/bin/env bash
# The real-browser check of the built book (_build/html): installs Debian's chromium and
# fonts-noto-cjk if they are missing, then loads every page offline in headless Chromium
# at 1280 px and at 390 px (scripts/browser_check.py). Screenshots go to _build/screenshots/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# (grep -c reads all of fc-list's output: with pipefail, grep -q's early exit would make fc-list
# die of SIGPIPE and the pipeline fail now and then, and the fonts be "installed" again)
{ command -v fc-list >/dev/null 2>&1 && [ "$(fc-list | grep -c "Noto Sans CJK")" -gt 0 ]; } \
  || need+=(fonts-noto-cjk)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages, about a minute)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi
[ -f _build/html/index.html ] || { echo "no _build/html: build the book first" >&2; exit 2; }
.venv/bin/python scripts/browser_check.py --html _build/html --screenshots _build/screenshots
