"""Writing a class-wise robustness report (the `Report` of `cwr_fast.classwise.analysis.build_report`,
whose docstring documents the report.json schema; `classwise.report_data` its typed parts) to a
directory, atomically. Every writer takes a Report (or a report dict of any version, read with
`Report.from_json`) and reads its attributes:

    report.json                 everything, versioned schema; above SPARSE_CONFUSION_ABOVE classes
                                each confusion matrix as {"sparse": [[true, pred, count], ...],
                                "shape": [C, C]} (read_report gives the dense form back)
    per_class.csv               one row per (attack, class), plus the worst case over attacks
    confusion_<attack>.csv      adversarial confusion matrix (rows: true class, columns: prediction;
                                above SPARSE_CONFUSION_ABOVE classes one row per non-zero cell);
                                also confusion_clean.csv and confusion_worst_case.csv
    sweep_temperature.csv, sweep_eps.csv   per-class robust accuracy per swept value (if run)
    autoattack_<attack>.csv     per class: images each AutoAttack member fooled first, robust ones
    report.md                   readable tables
    *.png                       per-class robust accuracy across attacks, confusion heatmaps,
                                T-sweep and eps-sweep curves, AutoAttack breakdown (stacked bars)
                                (matplotlib, Agg canvas)

Text cells are made safe: a CSV cell starting with = + - @ (formula injection) gets a leading ',
a Markdown cell has | escaped and line breaks replaced.
Each file is written under a temporary name and renamed into place (cwr_fast.outputs), so an
error never leaves a half-written file; --overwrite replaces only an earlier report's own files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from cwr_fast.classwise.report_data import (SPARSE_CONFUSION_ABOVE, AutoAttackSection, ClassRecord,
                                            Report, Summary, Sweep, as_report, known, sparse_cells)
from cwr_fast.outputs import write_files

REPORT_KIND = "evaluation report"  # its kind in cwr_fast.outputs
PER_CLASS_FIELDS = ["attack", "class", "class_name", "n", "clean_correct", "clean_acc", "robust",
                    "robust_acc", "ci_low", "ci_high"]


def safe_name(label: str) -> str:
    """An attack label as a file-name part: 'tpgd-20:T=2' -> 'tpgd-20_T=2'."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "attack"


def pct(value) -> str:
    """A fraction as a percentage with one decimal; '–' for None or NaN."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


# ---- CSV ----------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A CSV cell safe to open in a spreadsheet: a text starting with = + - @, a tab or a carriage
    return (a class or run name such as '=cmd()') gets a leading ' (OWASP's advice against formula
    injection); numbers, and texts that read as numbers or are a lone '-', stay as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) or value == "-":
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_cell(c) for c in header])
    writer.writerows([csv_cell(c) for c in row] for row in rows)
    return buf.getvalue()


def per_class_csv(report: Report) -> str:
    rows = []
    sections = [(a.label, a.per_class) for a in report.attacks]
    sections.append(("worst_case", report.worst_case.per_class))
    for label, records in sections:
        for r in records:
            rows.append([label] + [("" if v is None else v) for v in _per_class_cells(r)])
    return csv_text(PER_CLASS_FIELDS, rows)


def _per_class_cells(r: ClassRecord) -> list:
    """The values of PER_CLASS_FIELDS after 'attack'."""
    return [r.class_index, r.class_name, r.n, r.clean_correct, r.clean_acc, r.robust, r.robust_acc,
            r.ci_low, r.ci_high]


def confusion_csv(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """The matrix as a table (rows: true class, columns: prediction); above
    SPARSE_CONFUSION_ABOVE classes one row per non-zero cell instead (true class, prediction, count)."""
    if len(class_names) > SPARSE_CONFUSION_ABOVE:
        header = ["true_class", "true_name", "predicted_class", "predicted_name", "count"]
        return csv_text(header, [[i, class_names[i], j, class_names[j], n] for i, j, n in sparse_cells(matrix)])
    header = ["true\\pred"] + list(class_names)
    return csv_text(header, [[class_names[i]] + list(row) for i, row in enumerate(matrix)])


# ---- report.json ---------------------------------------------------------------------------------
# (above SPARSE_CONFUSION_ABOVE classes each confusion matrix is stored sparse: report_data)

def report_json(report: Report) -> str:
    """The text of report.json (Report.to_json)."""
    return as_report(report).to_json()


def read_report(path: str | Path) -> Report:
    """A report.json of any version as a Report (confusion matrices dense in memory, whether stored
    dense, as before, or sparse). Read by key too, as the dict it used to be (report_data)."""
    return Report.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def sweep_csv(sweep: Sweep) -> str:
    header = ["class", "class_name", "n"] + [f"{sweep.parameter}={v:g}" for v in sweep.values] + ["strongest"]
    rows = [[r.class_index, r.class_name, r.n] + ["" if a is None else a for a in r.robust_acc]
            + ["" if r.strongest is None else r.strongest] for r in sweep.per_class]
    rows.append(["all", "all", sum(r.n for r in sweep.per_class)] + sweep.overall_robust_acc
                + [sweep.strongest.value])
    return csv_text(header, rows)


def autoattack_rows(section: AutoAttackSection) -> tuple[list[str], list[list]]:
    """Per class: images, clean errors, images each member fooled first, robust images, robust
    accuracy (%) and the last member that was needed."""
    members = section.members
    header = ["class", "n", "clean wrong"] + members + ["robust", "robust %", "last needed"]
    rows = [[r.class_name, r.n, r.clean_wrong] + [r.broken_first_by[m] for m in members]
            + [r.robust, pct(r.robust_acc), r.last_needed or "–"] for r in section.per_class]
    total = sum(r.n for r in section.per_class)
    robust = section.robust
    rows.append(["all", total, section.clean_wrong] + [section.fooled_first(m) for m in members]
                + [robust, pct(robust / total if total else None), ""])
    return header, rows


def autoattack_csv(section: AutoAttackSection) -> str:
    return csv_text(*autoattack_rows(section))


def autoattack_summary(section: AutoAttackSection) -> str:
    """One line: images each member fooled first, and what the worst class needed."""
    line = f"{section.label}: fooled first by " + ", ".join(
        f"{m} {section.fooled_first(m)}" for m in section.members)
    worst = section.worst_class
    if worst is not None:
        line += (f"; worst class {worst.class_name} ({pct(worst.robust_acc)}%) needed "
                 f"{worst.last_needed or 'no member (clean errors only)'}")
    return line


# ---- text and Markdown ----------------------------------------------------------------------------

def md_cell(value) -> str:
    """A value as one Markdown table cell: '|' escaped, line breaks as spaces (a class name or a
    --names entry holding either would otherwise break the table)."""
    text = str(value).replace("|", "\\|")
    return re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]+", " ", text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table (cells escaped by md_cell)."""
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines


def per_class_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The main table: class, n, clean accuracy, robust accuracy under each attack, worst case (%)."""
    report = as_report(report)
    attacks, worst_case = report.attacks, report.worst_case
    header = ["class", "n", "clean"] + [a.label for a in attacks] + ["worst case"]
    rows = []
    for c, clean in enumerate(report.clean.per_class):
        rows.append([clean.class_name, str(clean.n), pct(clean.clean_acc)]
                    + [pct(a.per_class[c].robust_acc) for a in attacks]
                    + [pct(worst_case.per_class[c].robust_acc)])
    rows.append(["all", str(report.dataset.num_images), pct(report.clean.accuracy)]
                + [pct(a.overall.robust_acc) for a in attacks]
                + [pct(worst_case.overall.robust_acc)])
    return header, rows


def _summary_rows(report: Report) -> list[list[str]]:
    rows = []
    for label, section in [(a.label, a) for a in report.attacks] + [("worst case", report.worst_case)]:
        s, o = section.summary, section.overall
        if s.worst is None:
            continue
        rows.append([label, pct(o.robust_acc), f"[{pct(o.ci_low)}, {pct(o.ci_high)}]",
                     pct(s.mean), worst_class_cell(s), f"{s.best.class_name} ({pct(s.best.value)})",
                     pct(s.std), pct(s.gap)])
    return rows


def worst_class_cell(summary: Summary) -> str:
    """'cat (12.0) [3.1, 30.2], worst in 64% of draws': the worst class, its accuracy, the
    simultaneous interval of the lowest class accuracy and how often the class is the worst
    (summary.worst_stats; older reports without it show the first two only)."""
    worst, stats = summary.worst, summary.worst_stats
    cell = f"{worst.class_name} ({pct(worst.value)})"
    if stats:
        share = stats.worst_frequency[worst.class_index]
        cell += f" [{pct(stats.ci_low)}, {pct(stats.ci_high)}], worst in {100 * share:.0f}% of draws"
    return cell


_SUMMARY_HEADER = ["attack", "robust", "95% CI", "class mean",
                   "worst class [simultaneous 95% CI], how often worst", "best class", "std", "gap"]


def format_summary(report: Report) -> str:
    """A one-screen plain-text summary (accuracies in %)."""
    report = as_report(report)
    header, rows = per_class_rows(report)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths))  # noqa: E731
    ds = report.dataset
    lines = [f"class-wise robustness (%), {known(ds.name, '')} {known(ds.split, '')}, {ds.num_images} images"]
    lines += [fmt(header)] + [fmt(r) for r in rows] + [""]
    for row in _summary_rows(report):
        lines.append(f"{row[0]}: robust {row[1]} {row[2]}, worst class {row[4]}, best {row[5]}, "
                     f"gap {row[7]}")
    for _, sweep in report.sweeps.present():
        curve = ", ".join(f"{v:g}: {pct(a)}" for v, a in zip(sweep.values, sweep.overall_robust_acc))
        line = f"{sweep.parameter} sweep ({sweep.attack}), robust: {curve}"
        if sweep.parameter != "eps":  # the largest eps is trivially the strongest
            line += f"; strongest {sweep.parameter}={sweep.strongest.value:g}"
        lines.append(line)
    for section in report.autoattack or []:
        lines.append(autoattack_summary(section))
    for flag in report.flags:
        lines.append(f"FLAG [{flag.severity}] {flag.code}: {flag.message}")
    if not report.flags:
        lines.append("sanity checks: no flags")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    report = as_report(report)
    ds, cfg = report.dataset, report.config
    out = ["# Class-wise robustness report", "",
           f"Dataset **{known(ds.name, '?')}** ({known(ds.split, '?')}), {ds.num_images} images, "
           f"{ds.num_classes} classes. Created {report.created}; cwr_fast "
           f"{report.software.cwr_fast}, ops backend {report.software.ops_backend}.", ""]
    if cfg:
        out += ["Configuration: " + ", ".join(f"`{k}={v}`" for k, v in cfg.items()), ""]
    out += ["## Robust accuracy per class (%)", ""]
    header, rows = per_class_rows(report)
    out += table(header, rows) + [""]
    out += ["Worst case: robust only if every attack fails (AutoAttack's rule). "
            "95% Wilson intervals per class are in report.json and per_class.csv.", ""]
    out += ["## Summaries (%)", ""] + table(_SUMMARY_HEADER, _summary_rows(report)) + [""]
    if report.methods and report.methods.worst_stats:
        out += [f"The worst class: {report.methods.worst_stats}.", ""]
    if report.rank_agreement:
        out += ["## Rank agreement of classes (Spearman)", ""]
        out += table(["attack A", "attack B", "Spearman"],
                     [[r.a, r.b, "–" if r.spearman is None else f"{r.spearman:.3f}"]
                      for r in report.rank_agreement]) + [""]
    out += _gains_markdown(report) + _sweeps_markdown(report) + _autoattack_markdown(report)
    out += ["## Sanity checks", ""]
    out += [f"- **{f.severity}** `{f.code}`: {f.message}" for f in report.flags] or ["- no flags"]
    out += ["", "## Time", ""]
    out += table(["attack", "seconds", "images/s"],
                 [[a.label, f"{a.seconds:.2f}", "–" if a.images_per_s is None else f"{a.images_per_s:.0f}"]
                  for a in report.attacks])
    return "\n".join(out) + "\n"


def _gains_markdown(report: Report) -> list[str]:
    if not report.gains:
        return []
    out = ["## Where a stronger attack gains", "",
           "Images robust to the weaker attack but fooled by the stronger one, by class "
           "(count). The rates: the share of the images the weaker attack leaves robust that the "
           "stronger one fools, in the less robust half of the classes under the weaker attack "
           "(ties by class index) and in the other half.", ""]
    names = [r.class_name for r in report.clean.per_class]
    rows = []
    for g in report.gains:
        rates = [known(g.gain_rate_vulnerable, None), known(g.gain_rate_others, None)]  # version 1 lacks them
        rows.append([g.weaker, g.stronger, str(g.extra_fooled)]
                    + ["–" if r is None else f"{100 * r:.1f}%" for r in rates]
                    + [str(p.count) for p in g.per_class])
    return out + table(["weaker", "stronger", "extra fooled", "rate, less robust half", "rate, other half"]
                       + names, rows) + [""]


def _sweeps_markdown(report: Report) -> list[str]:
    out = []
    titles = {"temperature": "Temperature-PGD sweep", "eps": "eps sweep"}
    for key, sweep in report.sweeps.present():
        out += [f"## {titles[key]} ({sweep.attack}), robust accuracy (%)", ""]
        strongest = key != "eps"  # for eps, the largest is trivially the strongest
        header = ["class"] + [f"{sweep.parameter}={v:g}" for v in sweep.values] + ["strongest"] * strongest
        rows = [[r.class_name] + [pct(a) for a in r.robust_acc]
                + ["–" if r.strongest is None else f"{r.strongest:g}"] * strongest
                for r in sweep.per_class]
        rows.append(["all"] + [pct(a) for a in sweep.overall_robust_acc]
                    + [f"{sweep.strongest.value:g}"] * strongest)
        out += table(header, rows) + [""]
    return out


def _autoattack_markdown(report: Report) -> list[str]:
    out = []
    for section in report.autoattack or []:
        out += [f"## AutoAttack breakdown ({section.label})", "",
                "Images of each class that each member fooled first (members run in this order, each "
                "only on the images every earlier one failed on), the images left robust, and the last "
                "member that fooled an image of the class: without it the class would look more robust.",
                ""]
        out += table(*autoattack_rows(section)) + ["", autoattack_summary(section), ""]
        if section.member_seconds:
            out += ["Time per member: " + ", ".join(f"{m} {t:.1f} s" for m, t in section.member_seconds.items()),
                    ""]
    return out


# ---- plots ----------------------------------------------------------------------------------------

def figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _nan(values):
    return [math.nan if v is None else 100 * v for v in values]


def interval_errors(records: Sequence[dict], key: str) -> list[list[float]]:
    """matplotlib's yerr (in points) of per-class records' 95% intervals around record[key]
    (records as dicts: the study's; plot_per_class reads a report's typed records)."""
    return _errors([(r[key], r.get("ci_low"), r.get("ci_high")) for r in records])


def _errors(points: Sequence[tuple]) -> list[list[float]]:
    """matplotlib's yerr (in points) of (value, ci_low, ci_high) fractions; NaN where one is None."""
    low, high = [], []
    for value, lo, hi in points:
        missing = value is None or lo is None or hi is None
        low.append(math.nan if missing else 100 * max(value - lo, 0.0))
        high.append(math.nan if missing else 100 * max(hi - value, 0.0))
    return [low, high]


def plot_per_class(report: Report, path: Path) -> None:
    """Per-class clean and robust accuracy, one bar per attack, each with its 95% Wilson interval."""
    clean = report.clean.per_class
    names = [r.class_name for r in clean]
    series = [("clean", [(r.clean_acc, r.ci_low, r.ci_high) for r in clean])]
    series += [(a.label, [(r.robust_acc, r.ci_low, r.ci_high) for r in a.per_class]) for a in report.attacks]
    series.append(("worst case", [(r.robust_acc, r.ci_low, r.ci_high) for r in report.worst_case.per_class]))
    fig = figure(min(14.0, max(6.0, 0.2 * len(names) * len(series))), 4.4)
    ax = fig.add_subplot()
    if len(names) <= 20:
        width = 0.8 / len(series)
        for s, (label, points) in enumerate(series):
            ax.bar([c + (s - (len(series) - 1) / 2) * width for c in range(len(names))],
                   _nan([p[0] for p in points]), width=width, label=label,
                   yerr=_errors(points), error_kw={"elinewidth": 0.6, "capsize": 1.5})
        ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    else:
        for label, points in series:
            ax.plot(range(len(names)), _nan([p[0] for p in points]), marker=".", linewidth=1, label=label)
        ax.set_xlabel("class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class robust accuracy" + (" (bars: 95% Wilson intervals)" if len(names) <= 20 else ""))
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize="small",
               ncols=min(7, len(series)))
    fig.savefig(path)


def plot_confusion(matrix, class_names: Sequence[str], title: str, path: Path) -> None:
    import numpy as np

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = min(12.0, 2.5 + 0.45 * len(class_names))
    fig = figure(size, size * 0.85)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xlabel("prediction on the adversarial input")
    ax.set_ylabel("true class")
    if len(class_names) <= 20:
        ax.set_xticks(range(len(class_names)), class_names, rotation=90)
        ax.set_yticks(range(len(class_names)), class_names)
        if len(class_names) <= 12:
            for i in range(len(class_names)):
                for j in range(len(class_names)):
                    if m[i, j]:
                        ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                                color="black" if frac[i, j] > 0.5 else "white")
    fig.colorbar(image, ax=ax, label="fraction of the class")
    fig.savefig(path)


def plot_autoattack(section: AutoAttackSection, path: Path) -> None:
    """Stacked bars per class: clean errors, images each member fooled first, robust (% of class)."""
    records = section.per_class
    names = [r.class_name for r in records]
    share = lambda k, r: 100 * k / r.n if r.n else 0.0  # noqa: E731
    layers = [("clean error", [share(r.clean_wrong, r) for r in records], "#bbbbbb")]
    layers += [(m, [share(r.broken_first_by[m], r) for r in records], None) for m in section.members]
    layers.append(("robust", [share(r.robust, r) for r in records], "#2ca02c"))
    fig = figure(min(14.0, max(6.0, 0.45 * len(names) + 2)), 4.4)
    ax = fig.add_subplot()
    bottom = [0.0] * len(names)
    for label, values, color in layers:
        ax.bar(range(len(names)), values, bottom=bottom, label=label, color=color, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values)]
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_ylabel("images of the class (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"AutoAttack ({section.label}): the member that fooled each image first")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize="small",
               ncols=min(7, len(layers)))
    fig.savefig(path)


def plot_sweep(sweep: Sweep, path: Path) -> None:
    values = sweep.values
    fig = figure(7.0, 4.2)
    ax = fig.add_subplot()
    for r in sweep.per_class:
        ax.plot(values, _nan(r.robust_acc), marker=".", linewidth=1, label=r.class_name)
    ax.plot(values, [100 * v for v in sweep.overall_robust_acc], color="black", linewidth=2.5,
            label="all")
    if sweep.parameter == "T" and min(values) > 0:
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    ax.set_xlabel(sweep.parameter)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{sweep.parameter} sweep, {sweep.attack}")
    if len(sweep.per_class) <= 20:
        ax.legend(fontsize="x-small", ncols=2, loc="best")
    fig.savefig(path)


# ---- writing ------------------------------------------------------------------------------------

def report_files(report: Report, plots: bool = True) -> dict[str, object]:
    """{file name: text, or a callable(path) that writes the file}: everything write_report writes."""
    report = as_report(report)
    names = report.class_names
    files: dict[str, object] = {
        "report.json": report.to_json(),
        "per_class.csv": per_class_csv(report),
        "confusion_clean.csv": confusion_csv(report.clean.confusion, names),
        "confusion_worst_case.csv": confusion_csv(report.worst_case.confusion, names),
        "report.md": markdown(report),
    }
    for a in report.attacks:
        files[f"confusion_{safe_name(a.label)}.csv"] = confusion_csv(a.confusion, names)
    for key, sweep in report.sweeps.present():
        files[f"sweep_{key}.csv"] = sweep_csv(sweep)
    for section in report.autoattack or []:
        files[f"autoattack_{safe_name(section.label)}.csv"] = autoattack_csv(section)
    if plots:
        files.update(_plot_files(report))
    return files


def _plot_files(report: Report) -> dict[str, object]:
    """{file name: callable(path)} of the report's plots."""
    names = report.class_names
    files: dict[str, object] = {"per_class_robust.png": lambda p: plot_per_class(report, p)}
    for a in report.attacks:
        files[f"confusion_{safe_name(a.label)}.png"] = (
            lambda p, a=a: plot_confusion(a.confusion, names, f"adversarial confusion, {a.label}", p))
    files["confusion_worst_case.png"] = lambda p: plot_confusion(
        report.worst_case.confusion, names, "adversarial confusion, worst case", p)
    for key, sweep in report.sweeps.present():
        files[f"sweep_{key}.png"] = lambda p, sweep=sweep: plot_sweep(sweep, p)
    for section in report.autoattack or []:
        files[f"autoattack_{safe_name(section.label)}.png"] = (
            lambda p, section=section: plot_autoattack(section, p))
    return files


def write_report(report: Report, out_dir: str | Path, plots: bool = True, overwrite: bool = False,
                 outcomes=None, sweep_outcomes: dict | None = None) -> Path:
    """Writes all report files to out_dir (cwr_fast.outputs: a directory holding an earlier
    report has its files replaced only with overwrite=True; anything else in it stays), with the
    per-image outcomes (PerImageOutcomes or RobustBits) as outcomes.npz, one bit per image and
    attack, for paired comparisons, and those of the sweeps ({"temperature": outcomes}) as
    sweep_<name>_outcomes.npz. Returns out_dir."""
    from cwr_fast.classwise.outcomes import ROBUST_FILE, PerImageOutcomes, RobustBits

    def bits(o):
        return RobustBits.from_outcomes(o) if isinstance(o, PerImageOutcomes) else o

    files = report_files(report, plots)
    if outcomes is not None:
        files[ROBUST_FILE] = bits(outcomes).save
    for name, o in (sweep_outcomes or {}).items():
        if o is not None:
            files[sweep_outcomes_file(name)] = bits(o).save
    return write_files(out_dir, REPORT_KIND, files, overwrite).resolve()


def sweep_outcomes_file(sweep: str) -> str:
    return f"sweep_{sweep}_outcomes.npz"
