#!/usr/bin/env bash
# Set-up used by the README and CI: pinned packages into the in-project .venv (which `poetry run` uses),
# coco-seg installed editable, Poetry itself in its own .venv-poetry unless one is already on PATH, and Debian's
# Chromium for the report's browser test (Playwright is pointed at it; it never downloads a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
export TL_DISABLE_ANALYTICS=true
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), "coco-seg needs Python 3.11 or 3.12"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
if ! command -v poetry >/dev/null 2>&1; then
  [ -x .venv-poetry/bin/poetry ] || { "$PYTHON" -m venv .venv-poetry &&
    .venv-poetry/bin/python -m pip install --quiet --disable-pip-version-check poetry==2.5.1; }
fi
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null || { $SUDO apt-get update -q >/dev/null &&
    $SUDO apt-get install -y -q chromium >/dev/null; }
fi
POETRY=$(command -v poetry || echo .venv-poetry/bin/poetry)
"$POETRY" check --lock
echo "set-up done: .venv ready; run tests with: $POETRY run test"
