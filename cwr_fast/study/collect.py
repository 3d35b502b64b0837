"""Every number of FINDINGS.md from a finished study folder of `cwr_fast.reproduce`: reads every
run's report and per-image outcomes and computes the findings with cwr_fast.study.findings (the
dict written as findings.json).

Layout read:  OUT/runs/NAME/{report/report.json, checkpoints/last.pt, config}   (cwr_fast.train)
              OUT/sweeps/NAME/report.json                                       (cwr_fast.evaluate)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cwr_fast.classwise.outcomes import ROBUST_FILE, RobustBits
from cwr_fast.classwise.paired import paired_comparison
from cwr_fast.compare_paired import aligned
from cwr_fast.report import read_report, sweep_outcomes_file
from cwr_fast.study import findings as F
from cwr_fast.study.published import BASELINES, CIFAR10_CLASSES, PUBLISHED_LEAST, PUBLISHED_MOST


def load_outputs(out: Path, settings: dict) -> tuple[dict, dict]:
    """({run: final report}, {baseline: temperature-sweep report})."""
    reports = {r["name"]: read_report(out / "runs" / r["name"] / "report" / "report.json")
               for r in settings["runs"]}
    sweeps = {name: read_report(out / "sweeps" / name / "report.json") for name in BASELINES}
    return reports, sweeps


def collect(out: Path, settings: dict, reports: dict, sweeps: dict) -> dict:
    """Every number of FINDINGS.md, as a JSON-ready dict."""
    steps = settings["attack_steps"]
    pgd, aa = f"pgd-{steps}", "aa"
    methods = {r["name"]: r["method"] for r in settings["runs"]}
    num_classes = reports["pgd-at"]["dataset"]["num_classes"]
    result = {"settings": settings, "attacks": {"pgd": pgd, "aa": aa}, "baselines": {},
              "alpha": F.ALPHA, "power": {"weight_norm": F.weight_norm_power(num_classes)}}
    for name in BASELINES:
        result["baselines"][name] = baseline_findings(out, name, reports[name], sweeps[name], pgd, aa)
    result["defense_ranks"] = F.rank_agreement({n: F.robust_acc(r, aa) for n, r in reports.items()})
    correct, y = _outcomes(out, list(reports), [aa])
    result["defense_agreement"] = F.agreement_test({n: c[aa] for n, c in correct.items()}, y, num_classes)
    rows = defense_rows(out, reports, methods, pgd, aa)
    defenses = [r for r in rows if r["name"] not in BASELINES]
    result["defenses"] = rows
    result["best_defense"] = max(defenses, key=lambda r: (r[aa]["worst"], r[aa]["mean"]))["name"] \
        if defenses else None
    result["seeds"] = seed_statistics(out, settings, methods, aa)
    if result["best_defense"] is not None:
        by_name = {r["name"]: r for r in rows}
        best = by_name[result["best_defense"]]
        held_out = _held_out_pairs(out, settings, best, aa, num_classes)
        result["best_defense_verdict"] = F.defense_verdict(
            best["name"], {r["name"]: r["paired"] for r in defenses}, held_out)
        worst_class_n = min(r["n"] for r in F.attack_section(reports[best["name"]], aa)["per_class"] if r["n"])
        result["power"]["defense"] = F.paired_difference_power(
            "defense", worst_class_n, by_name[best["baseline"]][aa]["worst"], seeds=max(len(held_out), 1))
    result["family"] = F.family(family_tests(result))
    return result


def baseline_findings(out: Path, name: str, report: dict, sweep_report: dict, pgd: str, aa: str) -> dict:
    """Findings 1-4 (and the CIFAR-10 pattern) on one baseline: its report, its weights, its
    per-image outcomes and its temperature sweep."""
    num_classes = report["dataset"]["num_classes"]
    state = torch.load(out / "runs" / name / "checkpoints" / "last.pt", map_location="cpu",
                       weights_only=True)["model"]
    norms = F.classifier_weight_norms(state, num_classes)
    labels = [a["label"] for a in report["attacks"]]
    correct, y = _outcomes(out, [name], labels)
    correct = correct[name]
    per_attack = {label: F.robust_acc(report, label) for label in labels}
    temperature = F.temperature_effect(sweep_report, pgd)
    per_attack[f"tpgd (T={temperature['strongest']['value']:g})"] = strongest_tpgd(sweep_report)
    concentration = F.target_concentration(report, pgd)
    gain = F.gain_test(report, correct, y)
    n_min = min(r["n"] for r in F.attack_section(report, pgd)["per_class"] if r["n"])
    overall_pgd = F.attack_section(report, pgd)["overall"]["robust_acc"]
    entry = {
        "clean": {"mean": report["clean"]["accuracy"]},
        "disparity": {label: F.disparity(report, label) for label in (pgd, aa)},
        "concentration": concentration,
        "concentration_aa": F.target_concentration(report, aa),
        "weight_norms": norms,
        "norm_correlation": {label: F.norm_correlation(norms, F.robust_acc(report, label))
                             for label in (pgd, aa)},
        "attack_ranks": F.rank_agreement(per_attack),
        "attack_agreement": F.agreement_test(correct, y, num_classes),
        "gain": gain,
        "temperature": temperature,
        "autoattack_variants": F.autoattack_variants(report, aa),
        "autoattack_breakdown": next((x for x in report.get("autoattack", []) if x["label"] == aa), None),
        "power": {"disparity": F.disparity_power(report, pgd),
                  "concentration": F.concentration_power(concentration),
                  "consistency": F.agreement_power(n_min, len(labels), overall_pgd, num_classes)},
    }
    if gain is not None:
        entry["power"]["gains"] = F.gain_power(gain, n_min)
    bits = out / "sweeps" / name / sweep_outcomes_file("temperature")
    if bits.is_file():
        sweep = RobustBits.load(bits)
        entry["per_class_T"] = F.per_class_temperature(
            sweep.robust, sweep.label, sweep.index, sweep_report["sweeps"]["temperature"]["values"],
            report["dataset"]["class_names"])
        test_n = entry["per_class_T"]["test_images"] // num_classes
        entry["power"]["temperature"] = F.paired_difference_power("temperature", test_n, overall_pgd)
    if tuple(report["dataset"]["class_names"]) == CIFAR10_CLASSES:
        entry["published_pattern"] = F.published_pattern(
            F.attack_section(report, aa)["per_class"], PUBLISHED_LEAST, PUBLISHED_MOST)
    return entry


def defense_rows(out: Path, reports: dict, methods: dict, pgd: str, aa: str) -> list[dict]:
    """One row per run: clean, mean/worst/best class under `pgd` and `aa`, and each defense's
    difference from the baseline of its method (paired on the same images under `aa`)."""
    rows = []
    for name, report in reports.items():
        baseline = "pgd-at" if methods[name] == "pgd-at" else "trades"
        row = {"name": name, "method": methods[name], "baseline": baseline,
               "clean": report["clean"]["accuracy"]}
        for label in (pgd, aa):
            row[label] = F.class_record_summary(report, label)
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        b = by_name[row["baseline"]]
        row["worst_gain"] = row[aa]["worst"] - b[aa]["worst"]
        row["mean_cost"] = b[aa]["mean"] - row[aa]["mean"]
        if row["name"] != row["baseline"]:
            row["paired"] = paired_against(out, row["baseline"], row["name"], aa)
    return rows


def _outcomes(out: Path, runs: list[str], labels: list[str]) -> tuple[dict, np.ndarray]:
    """({run: {label: [N] correct}}, labels [N]) of runs attacked on the same images, in one
    image order (that of the image indices)."""
    first = _bits(out, runs[0])
    correct = {}
    for run in runs:
        bits = _bits(out, run)
        _, order = aligned(first, bits, [runs[0], run])
        correct[run] = {label: bits.correct(label)[order] for label in labels}
    return correct, first.label[np.argsort(first.index, kind="stable")]


def _held_out_pairs(out: Path, settings: dict, best: dict, label: str, num_classes: int) -> list[tuple]:
    """(baseline correct, defense correct, labels, num_classes) of the best defense at every seed
    but the first, on which it was chosen."""
    seed_runs = settings.get("seed_runs", {})
    if best["name"] not in seed_runs or best["baseline"] not in seed_runs:
        return []
    pairs = []
    for base, run in list(zip(seed_runs[best["baseline"]], seed_runs[best["name"]]))[1:]:
        correct, y = _outcomes(out, [base, run], [label])
        pairs.append((correct[base][label], correct[run][label], y, num_classes))
    return pairs


def family_tests(result: dict) -> list[tuple[str, float, bool]]:
    """[(finding, p, reproduced)] of every verdict of one study (its findings.json dict)."""
    pgd = result["attacks"]["pgd"]
    tests = []
    for name, b in result["baselines"].items():
        tests += [(f"1a ({name})", b["disparity"][pgd]["p"], b["disparity"][pgd]["reproduced"]),
                  (f"1b ({name})", b["concentration"]["p"], b["concentration"]["reproduced"]),
                  (f"1c ({name})", b["norm_correlation"][pgd]["p_value"], b["norm_correlation"][pgd]["reproduced"]),
                  (f"2 ({name})", b["attack_agreement"]["p"], b["attack_agreement"]["reproduced"])]
        if b["gain"] is not None:
            tests.append((f"3 ({name})", b["gain"]["p"], b["gain"]["reproduced"]))
        if b.get("per_class_T") is not None:
            pc = b["per_class_T"]
            tests += [(f"4 ({name})", pc["global_T"]["p"], pc["global_T"]["reproduced"]),
                      (f"4b ({name})", pc["per_class_T"]["p"], pc["per_class_T"]["reproduced"])]
        if b.get("published_pattern") is not None:
            tests.append((f"1d ({name})", b["published_pattern"]["p"], b["published_pattern"]["reproduced"]))
    tests.append(("2 (defenses)", result["defense_agreement"]["p"], result["defense_agreement"]["reproduced"]))
    if result.get("best_defense_verdict"):
        v = result["best_defense_verdict"]
        tests.append(("5", v["p"], v["reproduced"]))
    return tests


def _bits(out: Path, run: str) -> RobustBits:
    return RobustBits.load(out / "runs" / run / "report" / ROBUST_FILE)


def paired_against(out: Path, baseline: str, run: str, label: str) -> dict:
    """`run` against `baseline` on the same test images under `label` (cwr_fast.classwise.paired)."""
    a, b = _bits(out, baseline), _bits(out, run)
    order_a, order_b = aligned(a, b, [baseline, run])
    names = json.loads((out / "runs" / run / "report" / "report.json").read_text())["dataset"]["class_names"]
    return paired_comparison(a.correct(label)[order_a], b.correct(label)[order_b], a.label[order_a], names)


def seed_statistics(out: Path, settings: dict, methods: dict, label: str) -> dict:
    """For each run trained with several seeds: clean, mean and worst-class `label` accuracy per
    seed and their mean and std; for each seeded defense, its paired test against the baseline of
    the same seed, per seed."""
    result = {"seeds": settings.get("seeds", [settings["seed"]]), "runs": {}, "paired": {}}
    for name, runs in settings.get("seed_runs", {}).items():
        per_seed = []
        for seed, run in zip(result["seeds"], runs):
            report = read_report(out / "runs" / run / "report" / "report.json")
            summary = F.class_record_summary(report, label)
            per_seed.append({"seed": seed, "run": run, "clean": report["clean"]["accuracy"],
                             "mean": summary["mean"], "worst": summary["worst"]})
        result["runs"][name] = {"per_seed": per_seed, **{
            f"{key}_{stat}": float(fn([r[key] for r in per_seed]))
            for key in ("clean", "mean", "worst") for stat, fn in (("mean", np.mean), ("std", np.std))}}
    for name, runs in settings.get("seed_runs", {}).items():
        baseline = "pgd-at" if methods.get(name) == "pgd-at" else "trades"
        if name in BASELINES or baseline not in settings["seed_runs"]:
            continue
        result["paired"][name] = []
        for seed, run, base in zip(result["seeds"], runs, settings["seed_runs"][baseline]):
            cmp = paired_against(out, base, run, label)
            result["paired"][name].append({"seed": seed, "worst_gain": cmp["worst"]["diff"],
                                           "p": cmp["worst"]["p"], "mean_gain": cmp["mean"]["diff"],
                                           "mean_p": cmp["mean"]["p"]})
    return result


def strongest_tpgd(sweep_report: dict) -> list[float | None]:
    """Per-class robust accuracy at the sweep's strongest temperature."""
    sweep = sweep_report["sweeps"]["temperature"]
    k = sweep["values"].index(sweep["strongest"]["value"])
    return [r["robust_acc"][k] for r in sweep["per_class"]]
