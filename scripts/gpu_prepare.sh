#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_check.sh needs on the GPU machine, where only the
# checkout travels (64 MiB at most) and there is no network: into .gpu/ (git-ignored)
#   .gpu/data/cifar10-subset/   the real CIFAR-10 subset (17 MB), from ../shared/data
#   .gpu/data/MNIST/raw/        the MNIST test split (9 MB): the shared-data fixture looks for it
#   .gpu/site/                  torchattacks and the reference AutoAttack's Python files (peers)
# Then call the device tool with carry [".gpu"] and the command `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SHARED=${CWR_FAST_SHARED_DATA:-../shared/data}
DEST=${CWR_FAST_GPU_DIR:-.gpu}
rm -rf "$DEST/data" "$DEST/site"
mkdir -p "$DEST/data/MNIST/raw" "$DEST/site"
cp -r "$SHARED/cifar10-subset" "$DEST/data/"
cp "$SHARED"/MNIST/raw/t10k-* "$DEST/data/MNIST/raw/"
# The peers as plain Python packages (pyautoattack's wheel carries a 40 MB example model we skip).
DEST="$DEST" "$PYTHON" - <<'PY'
import importlib, os, pathlib, shutil
for name in ("torchattacks", "pyautoattack"):
    src = pathlib.Path(importlib.import_module(name).__file__).parent
    shutil.copytree(src, pathlib.Path(os.environ["DEST"]) / "site" / name,
                    ignore=shutil.ignore_patterns("examples", "__pycache__", "*.h5", "*.pt"))
PY
du -sh "$DEST"
