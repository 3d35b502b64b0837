#!/usr/bin/env bash
# Installs cwr_fast with its pinned environment and builds the extension (CPU kernels, plus CUDA
# kernels when nvcc is found). Safe to run again: pip skips what is there, ninja rebuilds only
# what changed.   Usage: bash scripts/install.sh [--with-ffcv]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

with_ffcv=0
[[ "${1:-}" == "--with-ffcv" ]] && with_ffcv=1

"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/embedded.txt
# RobustBench's model zoo and timm (--model robustbench:/timm:), without their download code:
# see requirements/robustbench.txt for why --no-deps
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/robustbench.txt

if (( with_ffcv )); then
  # FFCV compiles against libturbojpeg and OpenCV (Debian packages).
  if ! pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        libturbojpeg0-dev libopencv-dev pkg-config >/dev/null
    else
      echo "error: FFCV needs libturbojpeg0-dev libopencv-dev pkg-config (apt-get as root)" >&2
      exit 1
    fi
  fi
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements/ffcv.txt
fi

MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PYTHON" -m pip install --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps -e .
"$PYTHON" -c "import cwr_fast; print('cwr_fast', cwr_fast.__version__, 'ops backend:', cwr_fast.ops.backend())"
