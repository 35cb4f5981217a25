#!/usr/bin/env bash
# Create .venv and install the project with the extras named in $1 (default: dev = train,cpu,test).
# Fails loudly on any install error. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
stamp=".venv/.installed-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing spatial-disorder[$extras] (first run: torch is large, this can take a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
.venv/bin/python -c "import spatial_disorder" || { echo "[setup] error: spatial_disorder does not import" >&2; exit 1; }
