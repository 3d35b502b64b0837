"""The two walks of docs/ARCHITECTURE.md, counted: which cwr_fast files a reader passes through
from the command line to a fused op.

    python scripts/walks.py            # both walks, the files of each
    python scripts/walks.py --json     # the same as JSON

Three counts per walk, all up to the first call of the op (`python -m cwr_fast.evaluate --attacks
aa` down to APGD-T's DLR loss; `python -m cwr_fast.train` down to the Linf PGD step of its first
training step):
- walk: every cwr_fast file any of whose functions ran (imports aside) from the start of the
  command to that call, outside the data and model layers (cwr_fast/data/, cwr_fast/models/: the
  same for every command, and not what a reader of the attack or training path follows). This is
  the count of issue 27 (17 files for the evaluate walk before the restructuring);
- touched: the same with the data and model layers;
- chain: the distinct cwr_fast files on the call stack at that call.
The C++ side (the schema in csrc/ops.cpp, the kernel) is the same for every walk and not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's cwr_fast, whatever is installed
PACKAGE = str(REPO / "cwr_fast") + os.sep
OPS_FILE = os.path.join("torch", "_ops.py")
THIS = os.path.abspath(__file__)


def walk(run, op: str, via: str = "") -> dict[str, list[str]]:
    """{"walk", "touched", "chain": files} of run() up to its first call of torch.ops.cwr_fast.<op>
    made from the file `via` (any file if empty)."""
    touched: set[str] = set()
    chain: list[str] = []

    def rel(frame) -> str:
        return os.path.relpath(frame.f_code.co_filename, REPO)

    def importing(frame) -> bool:  # module and class bodies run by an import are not a walk
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_code.co_filename != THIS:
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, arg):
        if event != "call":
            return
        if frame.f_code.co_filename.startswith(PACKAGE):
            if not importing(frame):
                touched.add(rel(frame))
        elif frame.f_code.co_name == "__call__" and frame.f_code.co_filename.endswith(OPS_FILE) \
                and op in str(frame.f_locals.get("self")):
            stack, caller = [], frame.f_back
            while caller is not None:
                if caller.f_code.co_filename.startswith(PACKAGE):
                    stack.append(rel(caller))
                caller = caller.f_back
            if not via or any(f.endswith(via) for f in stack):
                chain.extend(stack)
                sys.setprofile(None)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    if not chain:
        raise RuntimeError(f"the run never called torch.ops.cwr_fast.{op}")
    lower = (os.path.join("cwr_fast", "data", ""), os.path.join("cwr_fast", "models", ""))
    return {"walk": sorted(f for f in touched if not f.startswith(lower)), "touched": sorted(touched),
            "chain": sorted(set(chain))}


def evaluate_walk(out: Path, checkpoint: Path | None) -> dict[str, list[str]]:
    from cwr_fast import evaluate, train

    if checkpoint is None:  # the default run's model: robust enough that APGD-T has images to attack
        train.main(["--no-final-eval", "--no-plots", "--progress", "off", "--out", str(out / "run")])
        checkpoint = out / "run" / "checkpoints" / "best_mean.pt"
    argv = ["--arch", "small_cnn", "--checkpoint", str(checkpoint), "--dataset", "mnist-embedded",
            "--attacks", "aa", "--limit", "20", "--no-plots", "--no-progress",
            "--out", str(out / "report")]
    return walk(lambda: evaluate.main(argv), "dlr_loss", via=os.path.join("attacks", "apgd.py"))


def train_walk(out: Path) -> dict[str, list[str]]:
    from cwr_fast import train

    argv = ["--epochs", "1", "--train-per-class", "5", "--val-per-class", "1", "--no-final-eval",
            "--no-plots", "--progress", "off", "--out", str(out / "walk-run")]
    return walk(lambda: train.main(argv), "linf_pgd_step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--checkpoint", type=Path, help="the MNIST small CNN the evaluate walk attacks "
                        "(default: train the default run first, about 2 minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        walks = {"python -m cwr_fast.evaluate --attacks aa -> APGD-T's DLR loss":
                 evaluate_walk(Path(tmp), args.checkpoint),
                 "python -m cwr_fast.train (one step) -> the Linf PGD step": train_walk(Path(tmp))}
    if args.json:
        print(json.dumps({name: {kind: {"files": len(files), "walk": files} for kind, files in w.items()}
                          for name, w in walks.items()}, indent=1))
    else:
        for name, w in walks.items():
            for kind, files in w.items():
                print(f"{name}, {kind}: {len(files)} files\n  " + "\n  ".join(files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
