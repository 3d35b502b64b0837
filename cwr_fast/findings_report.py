"""FINDINGS.md from the output directory of `cwr_fast.reproduce`: reads every run's report,
computes the findings with cwr_fast.findings, and writes FINDINGS.md, findings.json and plots/.

Layout read:  OUT/runs/NAME/{report/report.json, checkpoints/last.pt, config}   (cwr_fast.train)
              OUT/sweeps/NAME/report.json                                       (cwr_fast.evaluate)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np
import torch

from cwr_fast import findings as F
from cwr_fast.classwise.outcomes import ROBUST_FILE, RobustBits
from cwr_fast.classwise.paired import paired_comparison
from cwr_fast.compare_paired import aligned
from cwr_fast.report import pct, plot_confusion, sweep_outcomes_file, table
from cwr_fast.outputs import write_text

BASELINES = ("pgd-at", "trades")
# the published per-class pattern on CIFAR-10 (Tian et al. 2021; Xu et al. 2021): least and most
# robust classes under adversarial training
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PUBLISHED_LEAST, PUBLISHED_MOST = ("cat", "bird", "deer", "dog"), ("automobile", "truck", "ship")
PAPER = "Tian et al., *Analysis and Applications of Class-wise Robustness in Adversarial Training*, KDD 2021"


def _load(path: Path) -> dict:
    from cwr_fast.report import read_report  # sparse confusion matrices (C > 100) made dense
    return read_report(path)


def load_outputs(out: Path, settings: dict) -> tuple[dict, dict]:
    """({run: final report}, {baseline: temperature-sweep report})."""
    reports = {r["name"]: _load(out / "runs" / r["name"] / "report" / "report.json") for r in settings["runs"]}
    sweeps = {name: _load(out / "sweeps" / name / "report.json") for name in BASELINES}
    return reports, sweeps


def collect(out: Path, settings: dict, reports: dict, sweeps: dict) -> dict:
    """Every number of FINDINGS.md, as a JSON-ready dict."""
    steps = settings["attack_steps"]
    pgd, aa = f"pgd-{steps}", "aa"
    methods = {r["name"]: r["method"] for r in settings["runs"]}
    base = {name: reports[name] for name in BASELINES}
    num_classes = base["pgd-at"]["dataset"]["num_classes"]
    result = {"settings": settings, "attacks": {"pgd": pgd, "aa": aa}, "baselines": {}}
    for name, report in base.items():
        state = torch.load(out / "runs" / name / "checkpoints" / "last.pt", map_location="cpu",
                           weights_only=True)["model"]
        norms = F.classifier_weight_norms(state, num_classes)
        labels = [a["label"] for a in report["attacks"]]
        per_attack = {label: F.robust_acc(report, label) for label in labels}
        temperature = F.temperature_effect(sweeps[name], pgd)
        per_attack[f"tpgd (T={temperature['strongest']['value']:g})"] = _strongest_tpgd(sweeps[name])
        result["baselines"][name] = {
            "clean": {"mean": report["clean"]["accuracy"]},
            "disparity": {label: F.disparity(report, label) for label in (pgd, aa)},
            "concentration": F.target_concentration(report, pgd),
            "concentration_aa": F.target_concentration(report, aa),
            "weight_norms": norms,
            "norm_correlation": {label: F.norm_correlation(norms, F.robust_acc(report, label))
                                 for label in (pgd, aa)},
            "attack_agreement": F.rank_agreement(per_attack),
            "gain": F.strongest_gain(report),
            "temperature": temperature,
            "autoattack_variants": F.autoattack_variants(report, aa),
            "autoattack_breakdown": next((x for x in report.get("autoattack", []) if x["label"] == aa), None),
        }
        bits = out / "sweeps" / name / sweep_outcomes_file("temperature")
        if bits.is_file():
            sweep = RobustBits.load(bits)
            result["baselines"][name]["per_class_T"] = F.per_class_temperature(
                sweep.robust, sweep.label, sweep.index, sweeps[name]["sweeps"]["temperature"]["values"],
                report["dataset"]["class_names"])
        if tuple(report["dataset"]["class_names"]) == CIFAR10_CLASSES:
            result["baselines"][name]["published_pattern"] = F.published_pattern(
                F.attack_section(report, aa)["per_class"], PUBLISHED_LEAST, PUBLISHED_MOST)
    result["defense_agreement"] = F.rank_agreement({n: F.robust_acc(r, aa) for n, r in reports.items()})
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
    defenses = [r for r in rows if r["name"] not in BASELINES]
    result["defenses"] = rows
    result["best_defense"] = max(defenses, key=lambda r: (r[aa]["worst"], r[aa]["mean"]))["name"] \
        if defenses else None
    result["seeds"] = seed_statistics(out, settings, methods, aa)
    best = next((r for r in rows if r["name"] == result["best_defense"]), None)
    if best is not None:
        per_seed = result["seeds"].get("paired", {}).get(best["name"]) or [
            {"seed": settings["seed"], "worst_gain": best["paired"]["worst"]["diff"], "p": best["paired"]["worst"]["p"]}]
        result["best_defense_verdict"] = F.defense_verdict(per_seed)
    return result


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
            report = _load(out / "runs" / run / "report" / "report.json")
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


def _strongest_tpgd(sweep_report: dict) -> list[float | None]:
    sweep = sweep_report["sweeps"]["temperature"]
    k = sweep["values"].index(sweep["strongest"]["value"])
    return [r["robust_acc"][k] for r in sweep["per_class"]]


# ---- the document ------------------------------------------------------------------------------

def _variant_gap_sentence(gaps: list[tuple[str, float, float]], s: dict) -> str:
    """What the aa-ta table says, in words (gaps: (run, overall, worst class), fractions)."""
    n = "all test images" if s["test_per_class"] is None else f"{s['test_per_class']} images per class"
    if all(abs(o) < 1e-12 and abs(w) < 1e-12 for _, o, w in gaps):
        return (f"Here the two give the same robust accuracy, overall and on the worst class: on these models "
                f"and {n}, the weaker variant's shortfall is below what the test set resolves. It shows on "
                "harder models and larger test sets; the reference is the number to report.")
    parts = [f"{name}: {_signed(o)} points overall, {_signed(w)} on the worst class"
             for name, o, w in gaps]
    return f"aa-ta − aa on {n}: " + "; ".join(parts) + " (positive: torchattacks' variant overstates robustness)."


def _settings_lines(s: dict) -> list[str]:
    seeds = s.get("seeds", [s["seed"]])
    lines = [f"- Dataset **{s['dataset']}**, model **{s['arch']}**, mode **{s['mode']}**, seed {s['seed']}"
             + (f"; the baselines and the best defense also at seeds {', '.join(map(str, seeds[1:]))}" if len(seeds) > 1 else "")
             + "."]
    if s["mode"] == "cpu":
        lines.append(
            f"- **Reduced budget** (so that the whole study runs in under 60 minutes on a 2-core CPU): "
            f"training on a class-balanced subset of {s['train_per_class']} images per class "
            f"({s['val_per_class']} more per class held out for validation, the defenses' statistics "
            f"and the calibration), {s['epochs']} epochs, PGD-{s['steps']} of step {s['alpha']:g} in training "
            f"(the papers: the whole training set, 40+ steps, many more epochs). Absolute accuracies are "
            f"therefore lower than published ones; the findings are about differences between classes.")
    elif s["mode"] == "tiny":
        lines.append("- **Tiny smoke-test budget: the numbers below mean nothing.**")
    else:
        lines.append("- Full mode: the dataset presets of `cwr_fast.train` and the whole test set.")
    test = "the whole test set" if s["test_per_class"] is None else f"{s['test_per_class']} test images per class"
    if s["mode"] == "cpu":
        test += (" (a budget choice: AutoAttack as the reference runs it, 100-iteration APGD-T and FAB-T over "
                 "9 target classes and 5,000 Square queries on every image still robust, takes most of "
                 "each run's evaluation time, so a more robust model's evaluation costs more)")
    lines.append(f"- Evaluation on {test} (the same images for every model): {s['attacks'].replace(',', ', ')} "
                 f"(aa = AutoAttack as the reference implementation runs it, standard version: APGD-CE, "
                 f"APGD-T, FAB-T and Square, cwr_fast's own members; the baselines also get aa-ta, "
                 f"torchattacks' 10-iteration variant, for comparison), {s['attack_steps']} steps for the "
                 f"iterative attacks; Temperature-PGD sweep over T = "
                 f"{', '.join(f'{t:g}' for t in s['temperatures'])} at the same budget and steps.")
    lines.append("- 95% Wilson intervals are given for per-class accuracies; with "
                 f"{s['test_per_class'] or 'n'} images a class's interval is about "
                 f"±{_ci_half_width(s['test_per_class']):.0f} points at 80% accuracy.")
    return lines


def _ci_half_width(n: int | None) -> float:
    if not n:
        return float("nan")
    from cwr_fast.classwise.stats import wilson_interval
    import numpy as np
    low, high = wilson_interval(np.array([round(0.8 * n)]), np.array([n]))
    return 100 * float(high[0] - low[0]) / 2


def _per_class_table(report: dict, tpgd: list, tpgd_label: str) -> str:
    names = report["dataset"]["class_names"]
    labels = [a["label"] for a in report["attacks"]]
    header = ["class", "n", "clean"] + labels + [tpgd_label, "worst case"]
    rows = []
    for c, name in enumerate(names):
        rec = report["clean"]["per_class"][c]
        row = [name, rec["n"], pct(rec["clean_acc"])]
        row += [pct(F.attack_section(report, label)["per_class"][c]["robust_acc"]) for label in labels]
        row += [pct(tpgd[c]), pct(report["worst_case"]["per_class"][c]["robust_acc"])]
        rows.append(row)
    rows.append(["all", report["dataset"]["num_images"], pct(report["clean"]["accuracy"])]
                + [pct(F.attack_section(report, l)["overall"]["robust_acc"]) for l in labels]
                + ["", pct(report["worst_case"]["overall"]["robust_acc"])])
    return markdown_table(header, rows)


def summary_rows(result: dict) -> list[list[str]]:
    """[finding, this run, reproduced?] for every finding of a study (its findings.json dict)."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    summary = []
    for name in b:
        d, c, n = b[name]["disparity"][pgd], b[name]["concentration"], b[name]["norm_correlation"][pgd]
        t, g, a = b[name]["temperature"], b[name]["gain"], b[name]["attack_agreement"]
        pc = b[name].get("per_class_T")
        # the sweep's T is chosen on the images it is scored on; the held-out test says whether it holds
        held_out, t_verdict = "", _yes(t["reproduced"])
        if pc is not None:
            x = pc["global_T"]
            held_out = (f"; T = {pc['global_value']:g} chosen on half the images, on the other half "
                        f"{_signed(x['diff'])} points, p = {F.num(x['p'], 3)}")
            if t["reproduced"] and not x["reproduced"]:
                t_verdict = "yes, not significant on held-out images"
        summary += [
            [f"1a. robustness differs a lot between classes ({name})",
             f"{pct(d['worst']['robust_acc'])}% (class {d['worst']['class_name']}) vs "
             f"{pct(d['best']['robust_acc'])}% (class {d['best']['class_name']}) under {pgd}, gap "
             f"{100 * d['gap']:.1f} points", _yes(d["reproduced"])],
            [f"1b. adversarial examples concentrate on 1-2 classes ({name})",
             f"top-2 targets take {pct(c['top2_share'])}% of each class's errors (uniform: "
             f"{pct(c['uniform_top2_share'])}%)", _yes(c["reproduced"])],
            [f"1c. robust classes have larger classifier-weight norms ({name})",
             f"Spearman {F.num(n['spearman'])} (p = {F.num(n['p_value'], 3)})", _yes(n["reproduced"])],
            [f"2. per-class robustness ranks agree across attacks ({name})",
             f"mean Spearman {F.num(a['mean'])} (min {F.num(a['min'])})", _yes(a["reproduced"])],
            [f"3. stronger attacks gain on vulnerable classes ({name})",
             "–" if g is None else f"{pct(g['share_from_vulnerable_half'])}% of the {g['extra_fooled']} extra "
             f"images {g['stronger']} fools beyond {g['weaker']} are from the less robust half",
             _yes(g is not None and g["reproduced"])],
            [f"4. a temperature T != 1 makes PGD stronger ({name})",
             f"strongest T = {t['strongest']['value']:g}: {pct(t['strongest']['robust_acc'])}% vs "
             f"{pct(t['at_one'])}% at T = 1{held_out}", t_verdict],
        ]
        if pc is not None:
            x = pc["per_class_T"]
            summary.append([f"4b. a T chosen per class beats PGD on held-out images ({name})",
                            f"{pct(x['robust_acc'])}% vs {pct(x['pgd'])}% ({_signed(x['diff'])} points "
                            f"[{_signed(x['ci_low'])}, {_signed(x['ci_high'])}], p = {F.num(x['p'], 3)})",
                            _yes(x["reproduced"]) + ("" if x["reproduced"] else " (not significant)")])
        pattern = b[name].get("published_pattern")
        if pattern is not None:
            g = pattern["groups"]
            summary.append([f"1d. the published CIFAR-10 pattern ({name}, {aa})",
                            f"published most robust {pct(g['most']['robust_acc'])}% vs least robust "
                            f"{pct(g['least']['robust_acc'])}% (p {_p(pattern['p'])}); least robust "
                            f"here: {', '.join(pattern['least'])}; most: {', '.join(pattern['most'])}",
                            pattern["agreement"]])
    da = result["defense_agreement"]
    summary.append(["2. per-class ranks agree across defenses",
                    f"mean Spearman {F.num(da['mean'])} over {len(da['pairs'])} pairs ({aa})", _yes(da["reproduced"])])
    if result["best_defense"]:
        best = next(r for r in result["defenses"] if r["name"] == result["best_defense"])
        v = result["best_defense_verdict"]
        seeds = (f"; over {v['seeds']} seeds {_signed(v['gain_mean'])} ± {100 * v['gain_std']:.1f}, "
                 f"significant in {v['significant_seeds']} of {v['seeds']}" if v["seeds"] > 1 else
                 f", paired p = {F.num(best['paired']['worst']['p'], 3)}")
        summary.append(["5. class-wise defenses raise the worst class",
                        f"best: {best['name']}, worst-class {aa} {pct(best[aa]['worst'])}% "
                        f"({_signed(best['worst_gain'])} vs {best['baseline']}{seeds}), mean {pct(best[aa]['mean'])}% "
                        f"({_signed(-best['mean_cost'])})", _yes(v["reproduced"]) + ("" if v["reproduced"] else " (not significant)")])
    return summary


def document(result: dict, reports: dict, sweeps: dict) -> str:
    s = result["settings"]
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    L: list[str] = []
    add = L.append
    add(f"# Findings: class-wise robustness on {s['dataset']}, measured by cwr_fast\n")
    add(f"Reproduces the findings of {PAPER} with this tool. Generated by `python -m cwr_fast.reproduce "
        f"--dataset {s['dataset']}{' --' + s['mode'] if s['mode'] != 'cpu' else ''}` on "
        f"{_dt.date.today().isoformat()}; total wall time {_minutes(s['seconds']['wall'])}"
        f"{_calls(s['seconds'])} on this machine ({s.get('device', 'cpu')}). **Every number below was measured in that run**; the verdicts "
        f"follow fixed rules stated in `cwr_fast/findings.py`.\n")
    add("## Settings\n")
    L += _settings_lines(s)
    add("")

    # summary
    add("## Summary\n")
    summary = summary_rows(result)
    add(markdown_table(["finding", "this run", "reproduced?"], summary))
    add("")

    # 1. disparity
    add("## 1. Class-wise disparity\n")
    for name in b:
        t = b[name]["temperature"]
        add(f"### {name}: per-class clean and robust accuracy (%)\n")
        add(_per_class_table(reports[name], _strongest_tpgd(sweeps[name]), f"tpgd T={t['strongest']['value']:g}"))
        add("")
        d = b[name]["disparity"]
        for label in (pgd, aa):
            x = d[label]
            add(f"- Under {label}: worst class {x['worst']['class_name']} at {pct(x['worst']['robust_acc'])}% "
                f"[{pct(x['worst']['ci_low'])}, {pct(x['worst']['ci_high'])}], best class "
                f"{x['best']['class_name']} at {pct(x['best']['robust_acc'])}% [{pct(x['best']['ci_low'])}, "
                f"{pct(x['best']['ci_high'])}]: a gap of {100 * x['gap']:.1f} points; the intervals "
                f"{'do not overlap' if x['ci_disjoint'] else 'overlap'}. {F.verdict(x['reproduced'])}")
        ws = F.attack_section(reports[name], aa)["summary"].get("worst_stats")
        if ws:
            share = ws["worst_frequency"][d[aa]["worst"]["class"]]
            add(f"- The lowest class accuracy under {aa}, whichever class it is: simultaneous 95% interval "
                f"[{pct(ws['ci_low'])}, {pct(ws['ci_high'])}]; class {d[aa]['worst']['class_name']} is the worst in "
                f"{100 * share:.0f}% of bootstrap draws (method in report.json `methods`).")
        pattern = b[name].get("published_pattern")
        if pattern is not None:
            g = pattern["groups"]
            add(f"- Published CIFAR-10 pattern (least robust {', '.join(PUBLISHED_LEAST)}; most "
                f"{', '.join(PUBLISHED_MOST)}): under {aa} the published most robust classes hold "
                f"{g['most']['robust']} of {g['most']['n']} images ({pct(g['most']['robust_acc'])}%), the "
                f"published least robust {g['least']['robust']} of {g['least']['n']} "
                f"({pct(g['least']['robust_acc'])}%): a gap of {_signed(pattern['gap'])} points, one-sided "
                f"Fisher exact p {_p(pattern['p'])}, so this run **{pattern['agreement']}**. Its own "
                f"least robust classes are {', '.join(pattern['least'])} and most robust "
                f"{', '.join(pattern['most'])} (ties included), {pattern['overlap']} of {pattern['of']} "
                f"in the published groups.")
        add("")
    add("![per-class robust accuracy](plots/per_class_robust.png)\n")

    add("### Where the adversarial examples go\n")
    add("For each class, the wrong predictions under attack (clean errors included) and the share that "
        "lands on the most frequent wrong class. The earlier version of the paper found that they "
        "concentrate on one or two semantically similar classes.\n")
    for name in b:
        c = b[name]["concentration"]
        rows = [[r["class_name"], r["fooled"], "–" if r["target"] is None else f"{r['target_name']} ({pct(r['top1_share'])}%)",
                 "–" if r["second"] is None else r["second_name"], pct(r["top2_share"])] for r in c["per_class"]]
        add(f"**{name}, {pgd}:**\n")
        add(markdown_table(["class", "errors", "most frequent target (share)", "second", "top-2 share (%)"], rows))
        ca = b[name]["concentration_aa"]
        add(f"\nOver all classes, the top target takes {pct(c['top1_share'])}% and the top two "
            f"{pct(c['top2_share'])}% of the {c['fooled']} errors under {pgd} ({pct(ca['top2_share'])}% under "
            f"{aa}); spread uniformly over the other classes it would be {pct(c['uniform_top2_share'])}%. "
            f"{F.verdict(c['reproduced'])}\n")
    add("![adversarial confusion, pgd-at](plots/confusion_pgd-at.png)\n")

    add("### Robustness and the norm of each class's classifier weight\n")
    names = reports["pgd-at"]["dataset"]["class_names"]
    header, rows = ["class"], [[n] for n in names]
    for name in b:
        header += [f"{name}: weight norm", f"{name}: {pgd} (%)"]
        for k, row in enumerate(rows):
            row += [f"{b[name]['weight_norms'][k]:.3f}", pct(F.robust_acc(reports[name], pgd)[k])]
    add(markdown_table(header, rows))
    add("")
    for name in b:
        for label in (pgd, aa):
            n = b[name]["norm_correlation"][label]
            add(f"- {name}, {label}: Spearman {F.num(n['spearman'])} (one-sided permutation p = "
                f"{F.num(n['p_value'], 3)}), Pearson {F.num(n['pearson'])}. {F.verdict(n['reproduced'])}")
    add("\n![weight norm vs robustness](plots/weight_norm_vs_robustness.png)\n")

    # 2. consistency
    add("## 2. Consistency of the class ranking\n")
    add("Spearman rank correlation of per-class robust accuracy between attacks (same model):\n")
    for name in b:
        a = b[name]["attack_agreement"]
        add(f"**{name}:** " + "; ".join(f"{p['a']} vs {p['b']}: {F.num(p['spearman'])}" for p in a["pairs"])
            + f". Mean {F.num(a['mean'])}. {F.verdict(a['reproduced'])}\n")
    da = result["defense_agreement"]
    add(f"Between training methods and defenses (per-class {aa} robust accuracy): " + "; ".join(
        f"{p['a']} vs {p['b']}: {F.num(p['spearman'])}" for p in da["pairs"])
        + f". Mean {F.num(da['mean'])}. {F.verdict(da['reproduced'])} (Defenses are meant to change the "
        "ranking at the bottom, so some disagreement here is expected.)\n")

    # 3. gains
    add("## 3. Stronger attacks gain mainly on the vulnerable classes\n")
    for name in b:
        g = b[name]["gain"]
        if g is None:
            add(f"**{name}:** no pair of attacks with different robust accuracy.\n")
            continue
        add(f"**{name}:** {g['stronger']} fools {g['extra_fooled']} images that {g['weaker']} leaves robust. "
            f"{pct(g['share_from_vulnerable_half'])}% of them come from the classes below the median "
            f"robustness under {g['weaker']} ({', '.join(names[c] for c in g['vulnerable_classes'])}); "
            f"Spearman(gain rate, robustness) = {F.num(g['spearman_gain_vs_robustness'])}. "
            f"{F.verdict(g['reproduced'])}\n")
        add(markdown_table(["class"] + [r["class_name"] for r in g["per_class"]],
                    [["extra fooled"] + [r["count"] for r in g["per_class"]]]))
        add("")

    # 4. temperature
    add("## 4. Temperature-PGD against PGD at the same budget\n")
    for name in b:
        t = b[name]["temperature"]
        rows = [[f"{v:g}", pct(o), pct(w)] for v, o, w in zip(t["values"], t["overall"], t["worst_class"])]
        add(f"**{name}** ({pgd}: {pct(t['pgd'])}% overall):\n")
        add(markdown_table(["T", "robust accuracy (%)", "worst class (%)"], rows))
        per_class = ", ".join(f"{r['class_name']} ({pct(r['robust_acc'])}% at T = {r['T']:g} vs {pct(r['at_one'])}%)"
                              for r in t["stronger_classes"]) or "none"
        add(f"\nStrongest T = {t['strongest']['value']:g} ({pct(t['strongest']['robust_acc'])}% vs "
            f"{pct(t['at_one'])}% at T = 1). Classes for which some T != 1 is stronger than T = 1: "
            f"{per_class}. {F.verdict(t['reproduced'])} "
            f"Each T has its own random start: {pgd} itself (T = 1, another start) gives {pct(t['pgd'])}%, so "
            f"differences up to {100 * abs(t['pgd'] - t['at_one']):.1f} points are random-start noise.\n")
    add("![temperature sweep](plots/temperature_sweep.png)\n")
    if any(b[name].get("per_class_T") for name in b):
        add("### A temperature per class\n")
        add("The sweep's per-image outcomes are split in two halves by image index: on the selection half, "
            "each class gets the T that leaves the fewest of its images robust (T = 1 on ties), and one global "
            "T is chosen the same way; the other half measures both against T = 1 (PGD), paired on the same "
            "images (difference of class-mean robust accuracy, randomisation-test p, bootstrap 95% interval).\n")
    for name in b:
        pc = b[name].get("per_class_T")
        if pc is None:
            continue
        add(f"**{name}:** T per class: " + ", ".join(f"{c['class_name']} {c['T']:g}" for c in pc["chosen"])
            + f"; global T {pc['global_value']:g} ({pc['selection_images']} selection, {pc['test_images']} test images).\n")
        rows = [[label, pct(x["pgd"]), pct(x["robust_acc"]), f"{_signed(x['diff'])} [{_signed(x['ci_low'])}, {_signed(x['ci_high'])}]",
                 F.num(x["p"], 3), f"{pct(x['worst_pgd'])} → {pct(x['worst'])} (p = {F.num(x['worst_p'], 3)})"]
                for label, x in (("T per class", pc["per_class_T"]), (f"global T = {pc['global_value']:g}", pc["global_T"]))]
        add(markdown_table(["attack", "PGD (T = 1) (%)", "robust (%)", "difference (points) [95% CI]", "p",
                            "worst class (%)"], rows))
        x = pc["per_class_T"]
        add("\n" + ("A per-class T beats PGD on the held-out half, significantly. **Reproduced.**" if x["reproduced"] else
                    f"A per-class T does not beat PGD significantly on the held-out half (p = {F.num(x['p'], 3)}): "
                    "**not significant.**") + "\n")

    # AutoAttack
    add("## AutoAttack: the reference protocol, per class and per member\n")
    add(f"`{aa}` reproduces the reference AutoAttack (Croce & Hein, 2020): its members run in order, each "
        "only on the images all earlier ones failed on. Per class, the images each member fooled first "
        "(of the images of the class) and what is left robust:\n")
    for name in b:
        br = b[name]["autoattack_breakdown"]
        if br is None:
            continue
        members = br["members"]
        rows = [[r["class_name"], r["n"], r["clean_wrong"]] + [r["broken_first_by"][m] for m in members]
                + [pct(r["robust_acc"]), r["last_needed"] or "–"] for r in br["per_class"]]
        add(f"**{name}:**\n")
        add(markdown_table(["class", "n", "clean wrong"] + members + ["robust (%)", "last member needed"], rows))
        o = br["overall"]
        add("\nFooled first by " + ", ".join(f"{m}: {o[m]}" for m in members) + f"; {o['robust']} robust.\n")
    rows, gaps = [], []
    for name in b:
        v = b[name]["autoattack_variants"]
        if v is None:
            continue
        gaps.append((name, v["overall_gap"], v["worst_gap"]))
        rows.append([name, pct(v["aa"]["overall"]), pct(v["aa_ta"]["overall"]), _signed(v["overall_gap"]),
                     f"{pct(v['aa']['worst'])} ({v['aa']['worst_class']})",
                     f"{pct(v['aa_ta']['worst'])} ({v['aa_ta']['worst_class']})", _signed(v["worst_gap"]),
                     ", ".join(v["classes_overstated"]) or "none"])
    if rows:
        add("torchattacks' `AutoAttack` (3.5.1) builds its members with their own defaults, 10 iterations "
            "instead of 100 and APGD-T over all other classes, which makes it weaker than the reference in "
            "general. Measured in this run on the same images (`aa-ta`):\n")
        add(markdown_table(["run", f"{aa} overall (%)", "aa-ta overall (%)", "aa-ta − aa",
                            f"{aa} worst class (%)", "aa-ta worst class (%)", "aa-ta − aa (worst)",
                            "classes aa-ta overstates"], rows))
        add("\n" + _variant_gap_sentence(gaps, s) + "\n")

    # 5. defenses
    add("## 5. Class-wise defenses against the baselines\n")
    add("Mean over classes, worst class and best class robust accuracy (%) on the same test images; "
        "each defense is compared with the baseline of its training method. The full comparison with "
        "95% intervals is in [compare/compare.md](compare/compare.md) (`python -m cwr_fast.compare`).\n")
    rows = [[r["name"], r["method"], pct(r["clean"]), pct(r[pgd]["mean"]), pct(r[pgd]["worst"]), pct(r[aa]["mean"]),
             pct(r[aa]["worst"]), pct(r[aa]["best"]),
             "" if r["name"] == r["baseline"] else _signed(r["worst_gain"]),
             "" if r["name"] == r["baseline"] else _signed(-r["mean_cost"])] for r in result["defenses"]]
    add(markdown_table(["run", "method", "clean", f"{pgd} mean", f"{pgd} worst", f"{aa} mean", f"{aa} worst",
                 f"{aa} best", "Δ worst vs baseline", "Δ mean vs baseline"], rows))
    add("\n![defenses](compare/compare.png)\n")
    paired_rows = [[r["name"], r["baseline"],
                    f"{_signed(r['paired']['worst']['diff'])} [{_signed(r['paired']['worst']['ci_low'])}, "
                    f"{_signed(r['paired']['worst']['ci_high'])}]", F.num(r["paired"]["worst"]["p"], 3),
                    f"{_signed(r['paired']['mean']['diff'])} [{_signed(r['paired']['mean']['ci_low'])}, "
                    f"{_signed(r['paired']['mean']['ci_high'])}]", F.num(r["paired"]["mean"]["p"], 3),
                    ", ".join(f"{c['class_name']} {_signed(c['diff'])}" for c in r["paired"]["per_class"] if c["significant"]) or "none"]
                   for r in result["defenses"] if "paired" in r]
    if paired_rows:
        add(f"Paired on the same test images ({aa}; `python -m cwr_fast.compare BASELINE RUN --paired`): the "
            "worst-class and class-mean differences with paired-bootstrap 95% intervals and randomisation-test "
            "p-values, and the classes whose difference is significant after Holm's correction (exact McNemar):\n")
        add(markdown_table(["run", "against", "Δ worst (points) [95% CI]", "p", "Δ mean [95% CI]", "p",
                            "classes significantly changed"], paired_rows))
        add("")
    sd = result["seeds"]
    if sd["runs"]:
        add(f"**Seeds** ({', '.join(map(str, sd['seeds']))}; the baselines and the best defense at the first seed), "
            f"{aa} robust accuracy (%), mean ± std over seeds:\n")
        rows = [[name, len(r["per_seed"]), f"{pct(r['clean_mean'])} ± {100 * r['clean_std']:.1f}",
                 f"{pct(r['mean_mean'])} ± {100 * r['mean_std']:.1f}", f"{pct(r['worst_mean'])} ± {100 * r['worst_std']:.1f}",
                 ", ".join(pct(x["worst"]) for x in r["per_seed"])] for name, r in sd["runs"].items()]
        add(markdown_table(["run", "seeds", "clean", f"{aa} mean", f"{aa} worst class", "worst class per seed"], rows))
        for name, per_seed in sd["paired"].items():
            add(f"\n{name} against its baseline of the same seed: worst class "
                + "; ".join(f"seed {x['seed']}: {_signed(x['worst_gain'])} (p = {F.num(x['p'], 3)})" for x in per_seed) + ".")
        add("")
    if result["best_defense"]:
        best = next(r for r in result["defenses"] if r["name"] == result["best_defense"])
        v = result["best_defense_verdict"]
        add(f"The highest worst-class {aa} robust accuracy is **{best['name']}**: {pct(best[aa]['worst'])}%, "
            f"{_signed(best['worst_gain'])} points against {best['baseline']}, mean {aa} robust accuracy "
            f"{_signed(-best['mean_cost'])} points. Rule (`cwr_fast/findings.py`): "
            f"the gain is positive at every seed and significant (paired p < 0.05) at half of them or more: "
            f"here {v['significant_seeds']} of {v['seeds']} seeds significant, so **{v['wording']}**.\n")
    add("Defenses: `cwr` is our formulation of the paper's training change (per-class loss weight and "
        "budget from the validation robust accuracy, re-estimated every epoch); `+calibration` adds the "
        "paper's inference-time change as we formulate it (per-class logit scale and bias fitted on the "
        "held-out adversarial validation split, part of the model, so the attacks above attack it); "
        "FRL (Xu et al., ICML 2021), CFA (Wei et al., CVPR 2023) and WAT (Li and Liu, AAAI 2023) follow "
        "their papers (see `cwr_fast/defenses/`).\n")

    # caveats
    add("## Where the data disagrees or is inconclusive\n")
    notes = []
    for finding, measured, outcome in summary:
        if outcome not in ("yes", "agrees"):
            kind = "Inconclusive" if outcome.startswith(("yes,", "same direction")) else "Not reproduced"
            notes.append(f"- {kind}: {finding} — {measured}.")
    for r in result["defenses"]:
        if r["name"] != r["baseline"] and r["mean_cost"] >= 0.05:
            notes.append(f"- {r['name']} costs {100 * r['mean_cost']:.1f} points of mean {aa} robust accuracy "
                         f"against {r['baseline']} (worst class {_signed(r['worst_gain'])}).")
    floor = [r["name"] for r in result["defenses"] if r["name"] in BASELINES and r[aa]["worst"] == 0]
    if floor:
        notes.append(f"- The worst class of {' and '.join(floor)} is at 0% under {aa}: a defense's worst-class "
                     "gain is then measured at the floor, where only a defense that lifts that class off zero "
                     "registers; a stronger model (more data, epochs and capacity, a GPU) is needed to "
                     "compare defenses on the worst class here.")
    if s["mode"] == "cpu":
        notes.append("- The reduced budget (subset, short PGD, few epochs) and "
                     f"{s['test_per_class']} test images per class limit the precision: differences of a "
                     "few points between defenses are within the per-class intervals.")
    add("\n".join(notes) if notes else "- Every finding above reproduced in this run.")
    add("")
    return "\n".join(L)


def markdown_table(header, rows) -> str:
    return "\n".join(table(header, rows))


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"= {value:.3f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _calls(seconds: dict) -> str:
    calls = seconds.get("calls", 1)
    return f" over {calls} calls (it was interrupted and resumed)" if calls > 1 else ""


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def write_plots(out: Path, result: dict, reports: dict) -> None:
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    pgd = result["attacks"]["pgd"]
    base = {n: reports[n] for n in result["baselines"]}
    F.plot_per_class_models(base, pgd, plots / "per_class_robust.png")
    names = reports["pgd-at"]["dataset"]["class_names"]
    F.plot_norm_scatter({n: (b["weight_norms"], F.robust_acc(reports[n], pgd))
                         for n, b in result["baselines"].items()}, names,
                        plots / "weight_norm_vs_robustness.png")
    F.plot_temperature({n: b["temperature"] for n, b in result["baselines"].items()},
                       plots / "temperature_sweep.png")
    plot_confusion(F.attack_section(reports["pgd-at"], pgd)["confusion"], names,
                   f"pgd-at: prediction under {pgd}", plots / "confusion_pgd-at.png")


def write_findings(out: Path, settings: dict) -> Path:
    from cwr_fast.compare import load_run, write_comparison

    out = Path(out)
    reports, sweeps = load_outputs(out, settings)
    result = collect(out, settings, reports, sweeps)
    write_plots(out, result, reports)
    runs = [load_run(out / "runs" / r["name"]) for r in settings["runs"]]
    write_comparison(runs, out / "compare", attacks=[result["attacks"]["pgd"], result["attacks"]["aa"]],
                     overwrite=True)
    write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n",
                      out / "findings.json")
    path = out / "FINDINGS.md"
    write_text(document(result, reports, sweeps), path)
    return path


def _json_safe(value):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_combined_findings(out: Path, paths: list[Path], timing: dict) -> Path:
    """OUT/FINDINGS.md of a study over several datasets: each dataset's FINDINGS.md (in its own
    folder OUT/<dataset>/, with its plots) one heading level down, its links made relative to OUT."""
    out = Path(out)
    results = {p.parent.name: _load(p.parent / "findings.json") for p in paths}
    parts = [f"# Findings: class-wise robustness on {len(paths)} datasets, measured by cwr_fast\n",
             f"One run of `python -m cwr_fast.reproduce` over {', '.join(p.parent.name for p in paths)}: "
             f"total wall time {_minutes(timing['wall'])}{_calls(timing)}. Each dataset's study is in its "
             "own folder (runs, logs, plots, findings.json); its document follows.\n",
             "## Budget\n", markdown_table(["study", "dataset", "model", "training", "test images",
                                             "seeds"], [[name, *_budget_row(r)] for name, r in results.items()]), "",
             "## Summary over the datasets\n",
             markdown_table(["dataset", "finding", "this run", "reproduced?"],
                            [[name, *row] for name, r in results.items() for row in summary_rows(r)]), "",
             "## Contents\n"]
    parts += [f"- [{p.parent.name}](#{_anchor(p)})" for p in paths]
    parts.append("")
    for path in paths:
        folder = path.parent.relative_to(out).as_posix()
        text = path.read_text(encoding="utf-8")
        text = text.replace("](plots/", f"]({folder}/plots/").replace("](compare/", f"]({folder}/compare/")
        parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
        parts.append("")
    target = out / "FINDINGS.md"
    write_text("\n".join(parts) + "\n", target)
    return target


def _budget_row(result: dict) -> list[str]:
    s = result["settings"]
    per_class = "all" if s["train_per_class"] is None else f"{s['train_per_class']} per class"
    epochs = "preset" if s["epochs"] is None else f"{s['epochs']} epochs"
    steps = "preset PGD" if s["steps"] is None else f"PGD-{s['steps']}"
    test = "all" if s["test_per_class"] is None else f"{s['test_per_class']} per class"
    seeded = ", ".join(s.get("seed_runs") or [])
    seeds = ", ".join(map(str, s.get("seeds", [s["seed"]])))
    return [s["dataset"], s["arch"], f"{per_class}, {epochs}, {steps}", test,
            f"{seeds} ({seeded})" if seeded else seeds]


def _anchor(path: Path) -> str:
    """GitHub's anchor of a dataset document's first heading."""
    import re

    first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").lower()
    return re.sub(r"[^a-z0-9 _-]", "", first).replace(" ", "-")
