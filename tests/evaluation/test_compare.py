"""`python -m cwr_fast.compare` on real runs: two tiny training runs on real MNIST (PGD-AT and
TRADES, built once per module) and two evaluation reports of the session MNIST CNN (unbalanced
classes, one without PGD)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import numpy as np
import pytest

from cwr_fast import compare
from cwr_fast.attacks import build_attacks
from cwr_fast.classwise import build_report, evaluate_classwise
from cwr_fast.classwise.stats import wilson_interval, worst_class_statistics
from cwr_fast.report import pct, write_report
from helpers.train import run_train

RUN_ARGS = ["--dataset", "mnist", "--train-per-class", "30", "--val-per-class", "4",
            "--batch-size", "30", "--steps", "2", "--alpha", "0.1", "--val-steps", "2",
            "--epochs", "1", "--final-attacks", "fgsm,pgd-2", "--final-limit", "50",
            "--progress", "off", "--threads", "1", "--no-plots"]


@pytest.fixture(scope="module")
def train_runs(shared_data, tmp_path_factory):
    """{method: run dir} of two tiny real training runs."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("pgd-at", "trades"):
        out = root / f"run_{method}"
        args = RUN_ARGS + ["--data-dir", str(shared_data), "--method", method, "--out", str(out)]
        proc = run_train(*args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[method] = out
    return runs


@pytest.fixture(scope="module")
def eval_dirs(mnist_model, mnist_eval, tmp_path_factory):
    """{name: evaluation output dir}: 'both' (fgsm, pgd-5) and 'fgsm_only', on the first 300 real
    test images (unbalanced classes), as `python -m cwr_fast.evaluate --out` writes them."""
    x, y = mnist_eval
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(y), 100)]
    root = tmp_path_factory.mktemp("evals")
    dirs = {}
    for name, spec in (("both", "fgsm,pgd-5"), ("fgsm_only", "fgsm")):
        attacks = build_attacks(spec, mnist_model, eps=0.15, track="any")
        counts = evaluate_classwise(mnist_model, batches, 10, attacks)
        report = build_report(counts, [str(c) for c in range(10)], attacks=attacks,
                              config={"dataset": "mnist", "eps": 0.15, "attacks": list(attacks)},
                              dataset={"name": "mnist", "split": "test"})
        dirs[name] = write_report(report, root / name, plots=False)
    return dirs


def _md_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _pick(records: list, field: str, worst: bool):
    """The worst (lowest) or best (highest) class, first on ties: independent of class_summary."""
    valid = [r for r in records if getattr(r, field) is not None]
    target = (min if worst else max)(getattr(r, field) for r in valid)
    return next(r for r in valid if getattr(r, field) == target)


def _sections(report) -> dict:
    """{label: (section, accuracy field, overall accuracy, ci_low, ci_high)} of a typed report."""
    clean = report.clean
    out = {"clean": (clean, "clean_acc", clean.accuracy, clean.ci_low, clean.ci_high)}
    for label, a in [(a.label, a) for a in report.attacks] + [(compare.WORST_CASE, report.worst_case)]:
        out[label] = (a, "robust_acc", a.overall.robust_acc, a.overall.ci_low, a.overall.ci_high)
    return out


# ---- loading ----------------------------------------------------------------------------------

def test_load_run_reads_every_layout(train_runs, eval_dirs):
    run = compare.load_run(train_runs["trades"])
    assert run["name"] == "run_trades" and run["config"]["method"] == "trades"
    assert run["config"]["defense"] == "none" and run["report"].dataset.name == "mnist"
    direct = compare.load_run(train_runs["pgd-at"] / "report" / "report.json")
    assert direct["name"] == "run_pgd-at" and direct["config"]["method"] == "pgd-at"
    assert direct["report"] == json.loads((train_runs["pgd-at"] / "report" / "report.json").read_text())
    ev = compare.load_run(eval_dirs["both"])
    assert ev["name"] == "both" and ev["config"].get("method") is None
    assert compare.load_run(eval_dirs["both"] / "report.json", name="x")["name"] == "x"


# ---- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["train", "eval"])
def test_table_numbers_equal_the_reports(which, train_runs, eval_dirs):
    paths = list(train_runs.values()) if which == "train" else list(eval_dirs.values())
    runs = [compare.load_run(p) for p in paths]
    rows = compare.comparison_rows(runs)
    md = _md_rows(compare.markdown_table(rows))
    assert len(md) == len(rows)
    by_key = {(r["run"], r["accuracy"]): (r, cells) for r, cells in zip(rows, md)}
    checked = 0
    for run in runs:
        for label, (section, field, overall, low, high) in _sections(run["report"]).items():
            row, cells = by_key[(run["name"], label)]
            assert row["present"] and cells[0] == run["name"] and cells[4] == label
            assert row["overall"] == overall
            assert row["mean"] == section.summary.mean
            assert (row["mean_ci_low"], row["mean_ci_high"]) == (low, high)
            assert cells[5] == f"{pct(row['mean'])} [{pct(low)}, {pct(high)}]"
            for col, worst in ((6, True), (7, False)):
                rec = _pick(section.per_class, field, worst)
                key = "worst" if worst else "best"
                assert row[f"{key}_class"] == rec.class_name
                assert row[f"{key}_acc"] == getattr(rec, field)
                # the worst class: the simultaneous interval of the lowest class accuracy
                stats = section.summary.worst_stats if worst else rec
                assert (row[f"{key}_ci_low"], row[f"{key}_ci_high"]) == (stats.ci_low, stats.ci_high)
                share = (f", worst in {100 * stats.worst_frequency[rec.class_index]:.0f}%" if worst else "")
                assert cells[col] == (f"{rec.class_name}: {pct(getattr(rec, field))} "
                                      f"[{pct(stats.ci_low)}, {pct(stats.ci_high)}]{share}")
            checked += 1
    assert checked == sum(r["present"] for r in rows) == len(rows) - (which == "eval")
    header = compare.markdown_table(rows).splitlines()[0]
    assert "mean [95% CI]" in header and "worst class [95% CI]" in header and "best class [95% CI]" in header
    caption = compare.markdown_table(rows).splitlines()[-1]
    assert "Wilson interval of the pooled accuracy" in caption and "simultaneous 95% interval for the lowest class" in caption


def test_mean_is_class_mean_and_its_ci_the_pooled_wilson_interval(eval_dirs):
    run = compare.load_run(eval_dirs["both"])
    report = run["report"]
    row = next(r for r in compare.comparison_rows([run]) if r["accuracy"] == "pgd-5")
    pgd = report.attacks[1]
    per_class = [r.robust_acc for r in pgd.per_class]
    assert len({r.n for r in pgd.per_class}) > 1  # unbalanced: mean and pooled differ
    assert row["mean"] == pytest.approx(np.mean(per_class))
    assert not math.isclose(row["mean"], row["overall"])
    low, high = wilson_interval(pgd.overall.robust, pgd.overall.n)
    assert (row["mean_ci_low"], row["mean_ci_high"]) == pytest.approx((low, high))
    worst = pgd.per_class[int(np.argmin(per_class))]
    assert row["worst_class"] == worst.class_name and 0 < row["best_acc"] and row["worst_acc"] < row["best_acc"]
    # the worst class's interval covers the lowest class accuracy, whichever class it is
    stats = worst_class_statistics([r.robust for r in pgd.per_class], [r.n for r in pgd.per_class])
    assert (row["worst_ci_low"], row["worst_ci_high"]) == pytest.approx((stats["ci_low"], stats["ci_high"]))
    assert row["worst_ci_low"] <= row["worst_acc"] <= row["worst_ci_high"]
    low, high = wilson_interval(worst.robust, worst.n)
    assert row["worst_ci_low"] <= low, "wider than the one class's own interval"


def test_attack_missing_from_a_run_is_a_dash(eval_dirs):
    runs = [compare.load_run(eval_dirs[n]) for n in ("both", "fgsm_only")]
    rows = compare.comparison_rows(runs)
    assert [r["accuracy"] for r in rows] == ["clean", "fgsm", "pgd-5", "worst case"] * 2
    missing = [r for r in rows if not r["present"]]
    assert [(r["run"], r["accuracy"]) for r in missing] == [("fgsm_only", "pgd-5")]
    assert missing[0]["mean"] is None and missing[0]["worst_class"] is None
    md = compare.markdown_table(rows)
    assert _md_rows(md)[6][5:] == ["-", "-", "-"]
    assert "not in that run's report: pgd-5 (fgsm_only)" in md
    assert "worst case" in md and "both: fgsm+pgd-5; fgsm_only: fgsm" in md
    assert compare.missing_attacks(runs) == [{"run": "fgsm_only", "attack": "pgd-5"}]


# ---- command line and files ---------------------------------------------------------------------

def test_cli_writes_markdown_csv_json_and_plot(train_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    paths = [str(train_runs["pgd-at"]), str(train_runs["trades"])]
    assert compare.main(paths + ["--out", str(out), "--names", "at,tr", "--attacks", "pgd-2"]) == 0
    stdout = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    assert md in stdout and "| at | pgd-at | none | 50 | pgd-2 |" in md and "| tr | trades |" in md
    result = json.loads((out / "compare.json").read_text())
    runs = [compare.load_run(p, n) for p, n in zip(paths, ["at", "tr"])]
    assert result["rows"] == compare.comparison_rows(runs, ["pgd-2"])
    assert [r["accuracy"] for r in result["rows"]] == ["clean", "pgd-2", "worst case"] * 2
    assert result["attacks"] == ["pgd-2"] and result["missing"] == []
    table = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert len(table) == 6 and list(table[0]) == compare.ROW_FIELDS
    assert float(table[1]["mean_ci_high"]) == result["rows"][1]["mean_ci_high"]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the API returns the same as the command writes
    again = compare.write_comparison(runs, tmp_path / "api", attacks=["pgd-2"])
    assert again["markdown"] == md and again["rows"] == result["rows"]


def test_plot_without_per_class_panel(eval_dirs, tmp_path):
    rows = compare.comparison_rows([compare.load_run(p) for p in eval_dirs.values()])
    compare.plot_comparison(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    report = json.loads((dst / "report.json").read_text())
    edit(report)
    (dst / "report.json").write_text(json.dumps(report))
    return dst


def test_mismatched_datasets_are_refused_unless_allowed(eval_dirs, tmp_path, capsys):
    other = _edited_copy(eval_dirs["both"], tmp_path / "cifar",
                         lambda r: r["dataset"].update(name="cifar10"))
    fewer = _edited_copy(eval_dirs["both"], tmp_path / "fewer",
                         lambda r: r["dataset"].update(class_names=r["dataset"]["class_names"][:9]))
    base = str(eval_dirs["both"])
    assert compare.main([base, str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwr_fast.compare: error: dataset differs: both has 'mnist', cifar has 'cifar10'")
    assert "--allow-mismatch" in err
    assert compare.main([base, str(fewer)]) == 2
    assert "classes differs: both has 10 classes, fewer has 9 classes" in capsys.readouterr().err
    assert compare.main([base, str(other), "--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "cwr_fast.compare: warning: dataset differs" in captured.err and "| cifar |" in captured.out


def test_missing_attack_is_noted_on_stderr(eval_dirs, capsys):
    assert compare.main([str(eval_dirs["both"]), str(eval_dirs["fgsm_only"])]) == 0
    captured = capsys.readouterr()
    assert "note: pgd-5 is not in fgsm_only's report (shown as '-')" in captured.err
    assert "| fgsm_only | - | - | 300 | pgd-5 | - | - | - |" in captured.out


@pytest.mark.parametrize("case, message", [
    ("empty_dir", "no report in"),
    ("nowhere", "does not exist"),
    ("not_a_report", "is not a cwr_fast class-wise report"),
    ("bad_json", "cannot read"),
    ("unknown_attack", "attack aa is in no run's report (available: fgsm, pgd-5)"),
    ("names_count", "--names has 1 names for 2 runs"),
    ("same_names", "run names are not unique"),
])
def test_bad_input_exits_2_with_a_clear_error(case, message, eval_dirs, tmp_path, capsys):
    both, fgsm = str(eval_dirs["both"]), str(eval_dirs["fgsm_only"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    (tmp_path / "bad.json").write_text("{not json")
    argv = {"empty_dir": [both, str(tmp_path / "empty")],
            "nowhere": [both, str(tmp_path / "nowhere")],
            "not_a_report": [both, str(tmp_path / "other.json")],
            "bad_json": [both, str(tmp_path / "bad.json")],
            "unknown_attack": [both, fgsm, "--attacks", "pgd-5,aa"],
            "names_count": [both, fgsm, "--names", "one"],
            "same_names": [both, fgsm, "--names", "a,a"]}[case]
    assert compare.main(argv + ["--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("cwr_fast.compare: error: ") and message in captured.err
    assert captured.out == "" and not (tmp_path / "out").exists()
