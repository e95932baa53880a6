#!/usr/bin/env bash
# Debian's chromium, for the browser tests of the page of `src/app.py --web` (tests/test_web_page.py,
# headless, driven over the DevTools protocol). Run by ./setup.sh and by those tests when chromium is
# missing. Exit 0 when chromium is there (or was installed), 1 with one line saying why it cannot be.
set -uo pipefail
found() { command -v chromium || command -v chromium-browser; }
if found >/dev/null; then
  echo "chromium: $(found)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "cannot install chromium: no apt-get here (install Chromium, or Chrome as 'chromium', yourself)" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "cannot install chromium: apt-get needs root (run: sudo apt-get install -y chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing (a fresh container): fetched once when the first try fails.
if ! "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1; then
  "${as_root[@]}" apt-get update -q >/dev/null 2>&1
  if ! "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1; then
    echo "cannot install chromium: 'apt-get install -y chromium' failed (no such package here, or no network)" >&2
    exit 1
  fi
fi
found >/dev/null || { echo "cannot install chromium: installed, but no chromium command on PATH" >&2; exit 1; }
echo "chromium: $(found)"
