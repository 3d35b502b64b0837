"""`python -m cwr_fast.compare`: class-wise robustness of several runs side by side.

    python -m cwr_fast.compare runs/pgd-at runs/trades reports/mnist --attacks pgd-20,aa \\
        --names pgd-at,trades,baseline --out reports/compare

Each argument is a training run directory (`python -m cwr_fast.train`: reads report/report.json
and config.json), an evaluation output directory (`python -m cwr_fast.evaluate --out DIR`:
DIR/report.json), a report.json, or the per-image outcomes file of `evaluate --save-adv FILE.npz`
(the report recomputed from them). For each run and for clean accuracy, each requested attack and
the worst case over the run's attacks it shows the class mean, the worst and the best class with
95% Wilson intervals. Prints the Markdown table; with --out, also writes compare.md, compare.csv,
compare.json and compare.png (mean vs worst-class robust accuracy per run) there, each file
atomically (--overwrite replaces an earlier comparison there; other files are never touched). Runs on different datasets, splits or class sets are refused unless --allow-mismatch.
With --paired, two runs evaluated on the same images are also compared image by image
(cwr_fast/compare_paired.py): per class, for the mean and for the worst class, B - A with an
interval and a p-value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cwr_fast.classwise.analysis import report_from_outcomes
from cwr_fast.classwise.outcomes import PerImageOutcomes
from cwr_fast.classwise.report_data import (ABSENT, SCHEMA, JsonRecord, Report, ReportFormatError, Summary,
                                            WorstStats, known)
from cwr_fast.classwise.stats import wilson_interval, worst_class_statistics
from cwr_fast.compare_paired import paired_markdown, paired_sections
from cwr_fast.errors import UsageError
from cwr_fast.options import comma_list, usage_error
from cwr_fast.outputs import check_output_dir, write_atomic, write_files
from cwr_fast.report import csv_text, figure, pct, table

COMPARE_SCHEMA = "cwr_fast.compare"
COMPARISON_KIND = "comparison"  # its kind in cwr_fast.outputs
WORST_CASE = "worst case"
MISSING = "-"
ROW_FIELDS = ["run", "method", "defense", "dataset", "split", "images", "accuracy", "kind", "present",
              "attacks", "overall", "mean", "mean_ci_low", "mean_ci_high", "worst_class",
              "worst_acc", "worst_ci_low", "worst_ci_high", "worst_share", "best_class", "best_acc",
              "best_ci_low", "best_ci_high", "std", "gap"]
CAPTION = ("Accuracies in %. *mean*: mean of the per-class accuracies; its 95% CI is the Wilson "
           "interval of the pooled accuracy over all images, as in the report's `overall` (the "
           "same number as the class mean on class-balanced sets). *worst class*: the class with the "
           "lowest accuracy, with a simultaneous 95% interval for the lowest class accuracy "
           "(whichever class it is: Bonferroni-adjusted Clopper-Pearson over the classes) and the "
           "share of bootstrap draws in which that class is the worst. *best class*: the class with "
           "the highest accuracy, with its 95% Wilson interval. "
           "*worst case*: robust only if every attack of the run fails (AutoAttack's rule)")


class CompareError(UsageError):
    """Bad input to the comparison: printed as one line, exit status 2 (a ValueError too)."""


# ---- reading ------------------------------------------------------------------------------------

def _report_path(path: Path) -> tuple[Path, Path]:
    """(report.json, the run's directory) for a run dir, an evaluation dir or a report.json."""
    if path.is_file():
        report, folder = path, path.parent
    elif (path / "report" / "report.json").is_file():
        report, folder = path / "report" / "report.json", path
    elif (path / "report.json").is_file():
        report, folder = path / "report.json", path
    elif path.is_dir():
        raise CompareError(f"no report in {path}: expected report/report.json (a training run "
                           "directory with its final evaluation) or report.json (an evaluation "
                           "output directory)")
    else:
        raise CompareError(f"{path} does not exist")
    if folder.name == "report" and (folder.parent / "config.json").is_file():
        folder = folder.parent  # report.json of a training run, given directly
    return report, folder


def _read_json(path: Path):
    """The JSON in path; CompareError naming the file when it cannot be read, is not JSON, holds an
    integer longer than Python reads (4,300 digits) or nests too deep."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise CompareError(f"cannot read {path}: its JSON nests too deep") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, too-long integers
        if "digits" in str(err) and not isinstance(err, json.JSONDecodeError):
            err = "it holds an integer of more than 4,300 digits"
        raise CompareError(f"cannot read {path}: {err}") from None


def _parse_report(data, path: Path) -> Report:
    """The Report of a report.json's content (Report.from_json: every version); CompareError naming
    the file when it is not a cwr_fast class-wise report or a part of it is malformed."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CompareError(f"{path} is not a cwr_fast class-wise report (schema "
                           f"{data.get('schema') if isinstance(data, dict) else None!r})")
    try:
        return Report.from_json(data)
    except ReportFormatError as err:
        raise CompareError(f"{path} is damaged: {err}") from None


def _check_report(report: Report, path: Path) -> None:
    """CompareError naming the file and the first missing or malformed part of a report that the
    comparison reads (dataset, clean, attacks, worst case, their per-class records and summaries)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CompareError(f"{path} is damaged or incomplete: {what}")

    need(isinstance(report.dataset, JsonRecord), "no 'dataset' section")
    names = report.dataset.class_names
    need(isinstance(names, list) and len(names) > 0, "no 'dataset.class_names' list")
    need(report.dataset.num_images is not ABSENT, "no 'dataset.num_images'")
    need(isinstance(report.config or {}, dict), "'config' is not an object")
    sections = [("clean", report.clean), ("worst_case", report.worst_case)]
    need(isinstance(report.attacks, list), "no 'attacks' list")
    sections += [(f"attacks[{i}]", a) for i, a in enumerate(report.attacks)]
    for where, section in sections:
        need(isinstance(section, JsonRecord), f"no '{where}' section")
        need(isinstance(section.per_class, list), f"'{where}.per_class' is not a list of per-class records")
        overall = getattr(section, "overall", ABSENT)
        need(overall is ABSENT or isinstance(overall, JsonRecord), f"'{where}.overall' is not an object")
        need(isinstance(section.summary, Summary), f"no '{where}.summary' section")
    for i, a in enumerate(report.attacks):
        need(isinstance(a.label, str), f"'attacks[{i}]' has no label")


def load_run(path: str | os.PathLike, name: str | None = None) -> dict:
    """{name, path, report_path, report (a Report), config} of a run: config is the training
    configuration (config.json) for a training run, else the report's own config. name defaults to
    the run's directory name."""
    if Path(path).suffix == ".npz":  # the per-image outcomes of `evaluate --save-adv`
        try:
            outcomes = PerImageOutcomes.load(path)
        except (OSError, ValueError) as err:
            raise CompareError(str(err)) from None
        try:
            report = report_from_outcomes(outcomes)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            raise CompareError(f"cannot read per-image outcomes from {path}: damaged "
                               f"({type(err).__name__}: {err})") from None
        return {"name": name or Path(path).stem, "path": str(path), "report_path": str(path),
                "report": report, "config": dict(report.config)}
    report_path, folder = _report_path(Path(path))
    report = _parse_report(_read_json(report_path), report_path)
    _check_report(report, report_path)
    config = dict(report.config or {})
    if (folder / "config.json").is_file():
        extra = _read_json(folder / "config.json")
        if not isinstance(extra, dict):
            raise CompareError(f"cannot read {folder / 'config.json'}: not a JSON object")
        config = {**config, **extra}
    return {"name": name or folder.resolve().name, "path": str(folder),
            "report_path": str(report_path), "report": report, "config": config}


def _config(report: Report) -> dict:
    """The report's own config ({} where an older report has none)."""
    return report.config or {}


def check_compatible(runs: Sequence[dict], allow_mismatch: bool = False) -> list[str]:
    """Differences between the runs' datasets, splits and class sets: raises CompareError unless
    allow_mismatch, then returns them as warnings. Also warns when the eps differ."""
    if not runs:
        raise CompareError("no runs to compare")
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise CompareError(f"run names are not unique ({', '.join(names)}): pass --names")
    first = runs[0]
    problems, warnings = [], []
    for run in runs[1:]:
        for key, label in (("name", "dataset"), ("split", "split"), ("class_names", "classes")):
            a, b = (known(getattr(r["report"].dataset, key)) for r in (first, run))
            if a != b:
                shown = (lambda v: f"{len(v)} classes") if key == "class_names" else repr
                problems.append(f"{label} differs: {first['name']} has {shown(a)}, "
                                f"{run['name']} has {shown(b)}")
        eps_a, eps_b = (_config(r["report"]).get("eps") for r in (first, run))
        if eps_a is not None and eps_b is not None and eps_a != eps_b:
            warnings.append(f"eps differs: {first['name']} was attacked at eps {eps_a:g}, "
                            f"{run['name']} at {eps_b:g}")
    if problems and not allow_mismatch:
        raise CompareError("; ".join(problems) + " (pass --allow-mismatch to compare anyway)")
    return problems + warnings


# ---- rows ---------------------------------------------------------------------------------------

def attack_labels(runs: Sequence[dict], attacks: Sequence[str] | None = None) -> list[str]:
    """The requested attack labels, or every label of any run in order of first appearance;
    CompareError for a requested label that no run has."""
    present = list(dict.fromkeys(a.label for r in runs for a in r["report"].attacks))
    if attacks is None:
        return present
    unknown = [a for a in attacks if a not in present]
    if unknown:
        raise CompareError(f"attack {', '.join(unknown)} is in no run's report (available: "
                           f"{', '.join(present) or 'none'})")
    return list(dict.fromkeys(attacks))


def missing_attacks(runs: Sequence[dict], attacks: Sequence[str] | None = None) -> list[dict]:
    """[{run, attack}] for each requested attack that a run's report lacks."""
    return [{"run": r["name"], "attack": label} for label in attack_labels(runs, attacks)
            for r in runs if label not in {a.label for a in r["report"].attacks}]


def _ci(record, field: str) -> tuple[float | None, float | None]:
    """A per-class record's Wilson CI, recomputed with wilson_interval if the report lacks it."""
    if record.ci_low is not ABSENT and record.ci_high is not ABSENT:
        return record.ci_low, record.ci_high
    low, high = wilson_interval(getattr(record, field), record.n)
    return (None if math.isnan(low) else float(low)), (None if math.isnan(high) else float(high))


def _stats(section, acc_field: str, count_field: str, overall: tuple) -> dict:
    """mean, worst, best (with CIs), std and gap of one section (clean, an attack, worst case);
    overall: (accuracy, ci_low, ci_high) over all images."""
    s, by_class = section.summary, {r.class_index: r for r in section.per_class}
    out = {"overall": overall[0], "mean": s.mean, "mean_ci_low": overall[1],
           "mean_ci_high": overall[2], "std": s.std, "gap": s.gap}
    for which in ("worst", "best"):
        pick = getattr(s, which)
        record = by_class.get(pick.class_index) if pick else None
        low, high = _ci(record, count_field) if record else (None, None)
        out.update({f"{which}_class": pick.class_name if pick else None,
                    f"{which}_acc": getattr(record, acc_field) if record else None,
                    f"{which}_ci_low": low, f"{which}_ci_high": high})
    worst = s.worst_stats or _worst_stats(section, count_field)  # reports before schema version 3
    if s.worst is not None and worst is not None:
        out.update({"worst_ci_low": worst.ci_low, "worst_ci_high": worst.ci_high,
                    "worst_share": worst.worst_frequency[s.worst.class_index]})
    else:
        out["worst_share"] = None
    return out


def _worst_stats(section, count_field: str) -> WorstStats | None:
    stats = worst_class_statistics([getattr(r, count_field) for r in section.per_class],
                                   [r.n for r in section.per_class])
    return None if stats is None else WorstStats(**stats)


def _overall(section) -> tuple:
    """(robust accuracy, ci_low, ci_high) of an attack's or the worst case's overall."""
    o = section.overall
    return known(o.robust_acc), known(o.ci_low), known(o.ci_high)


def comparison_rows(runs: Sequence[dict], attacks: Sequence[str] | None = None) -> list[dict]:
    """One row per (run, accuracy): clean, each attack (all of any run's if attacks is None) and
    the worst case over the run's attacks, with fields ROW_FIELDS. Accuracies are fractions; an
    attack a run lacks gives present=False and None values."""
    labels = attack_labels(runs, attacks)
    rows = []
    for run in runs:
        report, cfg = run["report"], run["config"]
        base = {"run": run["name"], "method": cfg.get("method"), "defense": cfg.get("defense"),
                "dataset": known(report.dataset.name), "split": known(report.dataset.split),
                "images": report.dataset.num_images}
        clean = report.clean
        rows.append({**base, "accuracy": "clean", "kind": "clean", "present": True, "attacks": None,
                     **_stats(clean, "clean_acc", "clean_correct",
                              (known(clean.accuracy), known(clean.ci_low), known(clean.ci_high)))})
        sections = {a.label: a for a in report.attacks}
        for label in labels:
            row = {**base, "accuracy": label, "kind": "attack", "present": label in sections,
                   "attacks": None}
            if label in sections:
                row.update(_stats(sections[label], "robust_acc", "robust", _overall(sections[label])))
            rows.append({f: row.get(f) for f in ROW_FIELDS})
        worst = report.worst_case
        rows.append({**base, "accuracy": WORST_CASE, "kind": "worst_case", "present": True,
                     "attacks": "+".join(worst.attacks),
                     **_stats(worst, "robust_acc", "robust", _overall(worst))})
    return [{f: row.get(f) for f in ROW_FIELDS} for row in rows]


# ---- Markdown, CSV, plot --------------------------------------------------------------------------

def _interval(low, high) -> str:
    return f"[{pct(low)}, {pct(high)}]"


def _class_cell(row: dict, which: str) -> str:
    if row[f"{which}_class"] is None:
        return pct(None)
    cell = (f"{row[f'{which}_class']}: {pct(row[f'{which}_acc'])} "
            f"{_interval(row[f'{which}_ci_low'], row[f'{which}_ci_high'])}")
    if which == "worst" and row.get("worst_share") is not None:
        cell += f", worst in {100 * row['worst_share']:.0f}%"
    return cell


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows of comparison_rows as a Markdown table (accuracies in %) with its caption."""
    header = ["run", "method", "defense", "images", "accuracy", "mean [95% CI]",
              "worst class [95% CI]", "best class [95% CI]"]
    cells = []
    for r in rows:
        head = [r["run"], r["method"] or MISSING, r["defense"] or MISSING, str(r["images"]), r["accuracy"]]
        if not r["present"]:
            cells.append(head + [MISSING] * 3)
            continue
        cells.append(head + [f"{pct(r['mean'])} {_interval(r['mean_ci_low'], r['mean_ci_high'])}",
                             _class_cell(r, "worst"), _class_cell(r, "best")])
    caption = CAPTION
    worst_sets = {r["run"]: r["attacks"] for r in rows if r["kind"] == "worst_case"}
    if len(set(worst_sets.values())) > 1:
        caption += " over: " + "; ".join(f"{run}: {a}" for run, a in worst_sets.items())
    elif worst_sets:
        caption += f" over {next(iter(worst_sets.values()))}"
    caption += "."
    missing = [f"{r['accuracy']} ({r['run']})" for r in rows if not r["present"]]
    if missing:
        caption += f" {MISSING}: the attack is not in that run's report: " + ", ".join(missing) + "."
    return "\n".join(table(header, cells) + ["", caption]) + "\n"


def comparison_csv(rows: Sequence[dict]) -> str:
    return csv_text(ROW_FIELDS, [["" if r[f] is None else r[f] for f in ROW_FIELDS] for r in rows])


def _percent(value) -> float:
    return math.nan if value is None else 100 * value


def _errors(value, low, high) -> list[float]:
    if value is None or low is None or high is None:
        return [0.0, 0.0]
    return [100 * (value - low), 100 * (high - value)]


def plot_comparison(rows: Sequence[dict], path: str | os.PathLike, runs: Sequence[dict] | None = None,
                    accuracy: str = WORST_CASE) -> None:
    """compare.png: per run, class-mean against worst-class robust accuracy (`accuracy`: the worst
    case by default, or an attack label) with 95% CI error bars; with `runs` (load_run dicts), a
    second panel of per-class robust accuracy, one line per run. Written atomically."""
    chosen = [r for r in rows if r["accuracy"] == accuracy and r["present"]]
    fig = figure(12.0 if runs else 6.5, 4.6)
    ax = fig.add_subplot(1, 2 if runs else 1, 1)
    for r in chosen:
        err_x = [[e] for e in _errors(r["mean"], r["mean_ci_low"], r["mean_ci_high"])]
        err_y = [[e] for e in _errors(r["worst_acc"], r["worst_ci_low"], r["worst_ci_high"])]
        ax.errorbar([_percent(r["mean"])], [_percent(r["worst_acc"])], xerr=err_x, yerr=err_y,
                    fmt="o", capsize=3, label=r["run"])
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"class-mean robust accuracy, {accuracy} (%)")
    ax.set_ylabel(f"worst-class robust accuracy, {accuracy} (%)")
    ax.set_title("Mean vs worst class (95% CIs)")
    ax.legend(fontsize="small", loc="upper left")
    if runs:
        ax2 = fig.add_subplot(1, 2, 2)
        for run in runs:
            report = run["report"]
            section = (report.worst_case if accuracy == WORST_CASE else
                       next((a for a in report.attacks if a.label == accuracy), None))
            if section is None:
                continue
            ax2.plot(range(len(section.per_class)), [_percent(r.robust_acc) for r in section.per_class],
                     marker=".", linewidth=1, label=run["name"])
        names = runs[0]["report"].class_names
        if len(names) <= 20:
            ax2.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0)
        ax2.set_ylim(0, 100)
        ax2.set_xlabel("class")
        ax2.set_ylabel(f"robust accuracy, {accuracy} (%)")
        ax2.set_title("Per class")
        ax2.legend(fontsize="small")
    write_atomic(path, "wb", lambda f: fig.savefig(f, format="png"))


# ---- writing ------------------------------------------------------------------------------------

def comparison(runs: Sequence[dict], attacks: Sequence[str] | None = None,
               warnings: Sequence[str] = ()) -> dict:
    """The content of compare.json: the runs, attack labels, missing attacks, warnings and rows."""
    return {
        "schema": COMPARE_SCHEMA, "schema_version": 1,
        "runs": [{"name": r["name"], "path": r["path"], "report": r["report_path"],
                  "method": r["config"].get("method"), "defense": r["config"].get("defense"),
                  "arch": r["config"].get("arch"), "dataset": r["report"].dataset.as_dict(),
                  "eps": _config(r["report"]).get("eps"),
                  "attacks": [a.label for a in r["report"].attacks]} for r in runs],
        "attacks": attack_labels(runs, attacks),
        "missing": missing_attacks(runs, attacks),
        "warnings": list(warnings),
        "ci": "mean: Wilson interval of the pooled accuracy; worst class: simultaneous interval of "
              "the lowest class accuracy (cwr_fast.classwise.stats.WORST_CLASS_METHOD), worst_share: "
              "how often that class is the worst in bootstrap draws; best class: its Wilson interval",
        "rows": comparison_rows(runs, attacks),
    }


def comparison_markdown(result: dict) -> str:
    ds = result["runs"][0]["dataset"]
    lines = [f"# Comparison of {len(result['runs'])} runs", "",
             f"Dataset **{ds.get('name', '?')}** ({ds.get('split', '?')}), {ds['num_classes']} classes.", ""]
    lines += [f"- warning: {w}" for w in result["warnings"]] + ([""] if result["warnings"] else [])
    return "\n".join(lines) + "\n" + markdown_table(result["rows"])


def write_comparison(runs: Sequence[dict], out_dir: str | os.PathLike | None,
                     attacks: Sequence[str] | None = None, allow_mismatch: bool = False,
                     per_class: bool = True, overwrite: bool = False, paired: bool = False) -> dict:
    """Checks the runs fit together and, if out_dir is given, writes compare.md, compare.csv,
    compare.json and compare.png there (cwr_fast.outputs: an earlier comparison's files are
    replaced only with overwrite=True, other files are left alone). paired: two runs on the same
    images, compared image by image (cwr_fast.compare_paired), under "paired". Returns the
    compare.json content plus its Markdown under "markdown"."""
    warnings = check_compatible(runs, allow_mismatch)
    result = comparison(runs, attacks, warnings)
    text = comparison_markdown(result)
    if paired:
        result["paired"] = paired_sections(runs, attacks)
        text += "\n" + paired_markdown(result["paired"])
    if out_dir is not None:
        write_files(out_dir, COMPARISON_KIND, overwrite=overwrite, files={
            "compare.md": text,
            "compare.csv": comparison_csv(result["rows"]),
            "compare.json": json.dumps(result, indent=1, allow_nan=False) + "\n",
            "compare.png": lambda path: plot_comparison(result["rows"], path, runs if per_class else None)})
    return {**result, "markdown": text}


# ---- command line -------------------------------------------------------------------------------

_labels = comma_list(str, "names")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cwr_fast.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="training run directory, evaluation output directory, report.json, or "
                        "the per-image outcomes of evaluate --save-adv (FILE.npz)")
    p.add_argument("--out", help="write compare.md, compare.csv, compare.json and compare.png here")
    p.add_argument("--attacks", type=_labels, help="attack labels to show, e.g. pgd-20,aa (default: all)")
    p.add_argument("--names", type=_labels, help="run names, one per RUN (default: directory names)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare runs on different datasets, splits or class sets (with a warning)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")
    p.add_argument("--no-per-class", action="store_true", help="leave the per-class panel out of the plot")
    p.add_argument("--paired", action="store_true",
                   help="two runs on the same images: per class, mean and worst class, the "
                        "difference with a 95%% interval and its p-value (McNemar, Holm-corrected; "
                        "paired bootstrap and randomisation), from the per-image outcomes")
    return p


def _damaged(runs: Sequence[dict], err: Exception) -> CompareError:
    """The one-line error for a report that passed _check_report but lacks a field the comparison
    reads: names the first run whose report alone fails, and the field."""
    for run in runs:
        try:
            comparison_markdown(comparison([run], None, []))
        except (KeyError, TypeError, IndexError, AttributeError) as own:
            return CompareError(f"{run['report_path']} is damaged or incomplete: "
                                f"{type(own).__name__} {own}")
    return CompareError(f"the reports do not fit together: {type(err).__name__} {err}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.out is not None:
            check_output_dir(args.out, COMPARISON_KIND, args.overwrite)
        if args.names is not None and len(args.names) != len(args.runs):
            raise CompareError(f"--names has {len(args.names)} names for {len(args.runs)} runs")
        names = args.names or [None] * len(args.runs)
        runs = [load_run(path, name) for path, name in zip(args.runs, names)]
        try:
            result = write_comparison(runs, args.out, args.attacks, args.allow_mismatch,
                                      per_class=not args.no_per_class, overwrite=args.overwrite,
                                      paired=args.paired)
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            raise _damaged(runs, err) from None
    except (UsageError, OSError) as err:  # a report that cannot be read, an unwritable --out
        return usage_error("cwr_fast.compare", err)
    for w in result["warnings"]:
        print(f"cwr_fast.compare: warning: {w}", file=sys.stderr)
    for m in result["missing"]:
        print(f"cwr_fast.compare: note: {m['attack']} is not in {m['run']}'s report (shown as "
              f"'{MISSING}')", file=sys.stderr)
    print(result["markdown"], end="")
    if args.out:
        print(f"comparison written to {args.out} (compare.md, compare.csv, compare.json, compare.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
