#!/usr/bin/env bash
# Idempotent set-up: system GDAL (Debian), a virtual environment with the pinned Python
# dependencies, and the GDAL Python binding built against the system library.
# Usage: bash scripts/install.sh [VENV_DIR]   (default .venv)
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v gdal-config >/dev/null 2>&1; then
  echo "[install] system GDAL missing: installing libgdal-dev gdal-bin with apt-get"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq libgdal-dev gdal-bin >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip wheel setuptools
# numpy first: the GDAL binding compiles gdal_array only when numpy is importable.
"$VPY" -m pip install -q "numpy>=1.26,<3"
"$VPY" -m pip install -q -r requirements.txt
GDAL_VERSION=$(gdal-config --version)
if ! "$VPY" -c "from osgeo import gdal, gdal_array; import sys; sys.exit(0 if gdal.__version__ == '$GDAL_VERSION' else 1)" 2>/dev/null; then
  echo "[install] building the GDAL $GDAL_VERSION Python binding"
  "$VPY" -m pip install -q --no-build-isolation --no-cache-dir "GDAL==$GDAL_VERSION"
fi
"$VPY" -c "from osgeo import gdal, gdal_array; import torch, torchvision; print('[install] ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'gdal', gdal.__version__)"
