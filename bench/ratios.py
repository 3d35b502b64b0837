"""Ratio table of the op benchmarks (bench/bench_ops.py) from pytest-benchmark JSON.

    pytest bench/bench_ops.py --benchmark-only --benchmark-json=out.json
    python bench/ratios.py out.json [more.json ...] [--markdown]

One row per benchmark group (op, size, dtype, device), from the medians (--stat min|mean to change):
  fused        median time of the fused op (cwr_fast.ops)
  vs eager     eager median / fused median   (> 1: the fused op is faster)
  vs compile   torch.compile median / fused median
  % of copy    copy median / fused median, in %: the fraction of the bandwidth of a plain
               `dst.copy_(src)` moving the same number of bytes that the fused op reaches
  GB/s         bytes moved by the op / fused median
  targets      the issue's performance targets for that op: steps >= 1.0x compile and >= 70% of
               copy; temperature CE >= 3x eager and >= 1.5x compile (margin: none set)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

VARIANTS = ("fused", "eager", "compile", "copy")
# op -> (min speed-up vs eager, min speed-up vs compile, min % of copy bandwidth); None: no target
TARGETS = {
    "linf_pgd_step_": (None, 1.0, 70.0),
    "l2_pgd_step_": (None, 1.0, 70.0),
    "temperature_ce_fwd_bwd": (3.0, 1.5, None),
    "margin_loss_fwd_bwd": (None, None, None),
    "dlr_loss_fwd_bwd": (None, None, None),
    "hyperplane_projection_linf": (None, None, None),
    # the differentiable losses, loss.backward() (the AutoAttack issue: >= 2x eager)
    "temperature_cross_entropy": (2.0, None, None),
    "margin_loss": (2.0, None, None),
}


def collect_rows(benchmarks: list[dict], stat: str = "median") -> list[dict]:
    """Groups benchmark dicts (as in the JSON's "benchmarks" list) into one row per group, taking
    `stat` (median, min or mean) of each variant's timings."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for b in benchmarks:
        info = b.get("extra_info") or {}
        variant = info.get("variant")
        if variant not in VARIANTS or "stats" not in b or not b["stats"]:
            continue
        key = b.get("group") or info.get("op", "?")
        row = groups.setdefault(key, {"group": key, "op": info.get("op"), "size": info.get("size"),
                                      "dtype": info.get("dtype"), "device": info.get("device"),
                                      "bytes": info.get("bytes")})
        row[variant] = b["stats"][stat]
    rows = []
    for row in groups.values():
        fused = row.get("fused")
        if fused:
            for v in ("eager", "compile"):
                row[f"vs_{v}"] = row[v] / fused if row.get(v) else None
            row["pct_copy"] = 100.0 * row["copy"] / fused if row.get("copy") else None
            row["gbps"] = row["bytes"] / fused / 1e9 if row.get("bytes") else None
            row["targets"] = check_targets(row)
        rows.append(row)
    return rows


def check_targets(row: dict) -> str:
    target = TARGETS.get(row.get("op"))
    if target is None or all(t is None for t in target):
        return "-"
    min_eager, min_compile, min_copy = target
    out = []
    for name, want, got, unit in (("eager", min_eager, row.get("vs_eager"), "x"),
                                  ("compile", min_compile, row.get("vs_compile"), "x"),
                                  ("copy", min_copy, row.get("pct_copy"), "%")):
        if want is None or got is None:
            continue
        ok = got >= want
        out.append(f"{'ok' if ok else 'MISS'} {name}>={want:g}{unit}")
    return ", ".join(out) if out else "-"


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def _fmt(v, spec) -> str:
    return "-" if v is None else format(v, spec)


HEADERS = ["op", "size", "dtype", "device", "fused", "eager", "compile", "copy", "vs eager",
           "vs compile", "% of copy", "GB/s", "targets"]


def table_lines(rows: list[dict], markdown: bool = False) -> list[str]:
    cells = [[r.get("op") or r["group"], r.get("size") or "", r.get("dtype") or "", r.get("device") or "",
              _fmt_time(r.get("fused")), _fmt_time(r.get("eager")), _fmt_time(r.get("compile")),
              _fmt_time(r.get("copy")), _fmt(r.get("vs_eager"), ".2f") + "x",
              _fmt(r.get("vs_compile"), ".2f") + "x", _fmt(r.get("pct_copy"), ".0f") + "%",
              _fmt(r.get("gbps"), ".1f"), r.get("targets", "-")] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return lines
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(HEADERS)]
    fmt = "  ".join(f"{{:{'<' if i < 4 or i == len(HEADERS) - 1 else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*HEADERS), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells]


def machine_line(data: dict) -> str:
    m = data.get("machine_info") or {}
    cwr = m.get("cwr_fast") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw", m.get("processor", "?"))
    parts = [f"cpu: {cpu}", f"torch {cwr.get('torch', '?')}", f"backend: {cwr.get('backend', '?')}",
             f"threads: {cwr.get('num_threads', '?')}"]
    if cwr.get("gpu"):
        parts.append(f"gpu: {cwr['gpu']}")
    return f"{data.get('datetime', '')}  " + ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="files written by pytest --benchmark-json=FILE")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--stat", choices=["median", "min", "mean"], default="median",
                        help="statistic of each variant's rounds (default median; min is the more "
                             "robust one on a machine shared with other jobs)")
    args = parser.parse_args(argv)
    for path in args.json:
        with open(path) as f:
            data = json.load(f)
        print(f"# {path}: {machine_line(data)}; {args.stat}s")
        rows = collect_rows(data.get("benchmarks", []), args.stat)
        if not rows:
            print("(no op benchmarks with timings in this file: was it run with --benchmark-disable?)")
            continue
        print("\n".join(table_lines(rows, markdown=args.markdown)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
