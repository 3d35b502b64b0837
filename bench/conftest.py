"""pytest-benchmark setup of the bench/ suite.

- Collects bench/bench_*.py (pytest's default only collects test_*.py).
- Leaves torch's thread count at its default (all cores), as a user would run;
  CWR_FAST_BENCH_THREADS=N sets it (e.g. 1 on a machine that other jobs keep busy, where
  multi-threaded barriers wait on descheduled threads and time the scheduler, not the code).
- Records the torch version, the cwr_fast backend, threads and the GPU in the JSON machine info.
- Drops the per-round timings from --benchmark-json output (the stats stay), so result files stay
  small enough to keep under bench/results/; CWR_FAST_BENCH_KEEP_DATA=1 keeps them.
- Prints the ratio table of the op benchmarks (bench/ratios.py) at the end of a timed run.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ratios.py


def pytest_configure(config):
    threads = os.environ.get("CWR_FAST_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's python plugin collects it already
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None  # already collected by pytest's own rule (the project configured it)
    return pytest.Module.from_parent(parent, path=file_path)


def _backend() -> str:
    from cwr_fast import ops
    return ops.backend()


def pytest_report_header(config):
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return [f"cwr_fast bench: torch {torch.__version__}, backend {_backend()}, "
            f"{torch.get_num_threads()} threads, GPU {gpu}"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cwr_fast"] = {
        "torch": torch.__version__,
        "backend": _backend(),
        "num_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda,
        "CWR_FAST_BACKEND": os.environ.get("CWR_FAST_BACKEND"),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if os.environ.get("CWR_FAST_BENCH_KEEP_DATA") == "1":
        return
    for b in output_json.get("benchmarks", []):
        (b.get("stats") or {}).pop("data", None)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    from ratios import collect_rows, table_lines

    rows = collect_rows([b.as_dict(include_data=False) for b in session.benchmarks])
    if not rows:
        return
    terminalreporter.write_sep("-", "cwr_fast op ratios (medians; python bench/ratios.py on the JSON "
                                    "gives the same table)")
    for line in table_lines(rows):
        terminalreporter.write_line(line)
