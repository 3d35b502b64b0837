"""The figures of FINDINGS.md (OUT/plots/): per-class robust accuracy with its intervals, weight
norm against robustness, the temperature sweep, and the adversarial confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cwr_fast.report import figure, interval_errors, plot_confusion
from cwr_fast.study.findings import attack_section, robust_acc


def write_plots(out: Path, result: dict, reports: dict) -> None:
    """OUT/plots/ of one study from its findings (`collect`) and its final reports."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pgd = result["attacks"]["pgd"]
    base = {n: reports[n] for n in result["baselines"]}
    plot_per_class_models(base, pgd, plots / "per_class_robust.png")
    names = reports["pgd-at"]["dataset"]["class_names"]
    plot_norm_scatter({n: (b["weight_norms"], robust_acc(reports[n], pgd))
                       for n, b in result["baselines"].items()}, names,
                      plots / "weight_norm_vs_robustness.png")
    plot_temperature({n: b["temperature"] for n, b in result["baselines"].items()},
                     plots / "temperature_sweep.png")
    plot_confusion(attack_section(reports["pgd-at"], pgd)["confusion"], names,
                   f"pgd-at: prediction under {pgd}", plots / "confusion_pgd-at.png")


def plot_per_class_models(reports: dict[str, dict], label: str, path: Path) -> None:
    """Per-class robust accuracy under `label`, one bar group per class, one bar per model, each bar
    with its class's 95% Wilson interval."""
    names = next(iter(reports.values()))["dataset"]["class_names"]
    fig = figure(8.0, 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(reports)
    for k, (model, report) in enumerate(reports.items()):
        records = attack_section(report, label)["per_class"]
        values = [math.nan if r["robust_acc"] is None else 100 * r["robust_acc"] for r in records]
        ax.bar([c + (k - (len(reports) - 1) / 2) * width for c in range(len(names))], values,
               width=width, label=model, yerr=interval_errors(records, "robust_acc"),
               error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"robust accuracy under {label} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    ax.set_title("Class-wise robust accuracy (bars: 95% Wilson intervals)")
    fig.savefig(path)


def plot_norm_scatter(points: dict[str, tuple[list[float], list[float | None]]], names: Sequence[str],
                      path: Path) -> None:
    """{model: (weight norms, robust accuracies)} as one scatter per model, points labelled by class."""
    fig = figure(4.2 * len(points), 3.8)
    for k, (model, (norms, robust)) in enumerate(points.items()):
        ax = fig.add_subplot(1, len(points), k + 1)
        ys = [math.nan if v is None else 100 * v for v in robust]
        ax.scatter(norms, ys)
        for c, (x, y) in enumerate(zip(norms, ys)):
            ax.annotate(str(names[c]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=8)
        ax.set_xlabel("norm of the class's classifier weight")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(model)
    fig.savefig(path)


def plot_temperature(effects: dict[str, dict], path: Path) -> None:
    """{model: temperature_effect} as robust accuracy over T, all classes and the worst class."""
    fig = figure(6.5, 4.0)
    ax = fig.add_subplot()
    for model, e in effects.items():
        line = ax.plot(e["values"], [100 * v for v in e["overall"]], marker="o", label=f"{model}: all classes")
        ax.plot(e["values"], [100 * v for v in e["worst_class"]], marker="s", linestyle="--",
                color=line[0].get_color(), label=f"{model}: worst class")
    ax.set_xscale("log")
    values = next(iter(effects.values()))["values"]
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel("temperature T (T = 1 is PGD)")
    ax.set_ylabel("robust accuracy (%)")
    ax.legend(fontsize="small")
    ax.set_title("Temperature-PGD at the same budget and steps")
    fig.savefig(path)
