#!/usr/bin/env bash
# The test command: installs the pinned environment with FFCV, builds the extension WITH its CUDA
# kernels (compile and link prove them valid even where no GPU can run them), runs every test,
# then runs the benchmark suite once without timing so its code is exercised.
#   CWR_FAST_CUDA=auto bash scripts/test.sh   on a machine without nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CWR_FAST_CUDA=${CWR_FAST_CUDA:-1}

bash scripts/install.sh --with-ffcv
[[ "$CWR_FAST_CUDA" == 1 ]] && export CWR_FAST_EXPECT_CUDA_BUILD=1
"$PYTHON" -m pytest tests -q -p no:cacheprovider "$@"
"$PYTHON" -m pytest bench -q -p no:cacheprovider --benchmark-disable
