"""FINDINGS.md of a finished `cwr_fast.reproduce` study folder, one function per section: the
numbers come from cwr_fast.study.collect (written beside it as findings.json), the figures from
cwr_fast.study.plots; several datasets' documents are combined into one."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from cwr_fast.outputs import write_text
from cwr_fast.report import pct, table
from cwr_fast.study import findings as F
from cwr_fast.study.collect import collect, load_outputs, strongest_tpgd
from cwr_fast.study.plots import write_plots
from cwr_fast.study.published import BASELINES, PAPER, PUBLISHED_LEAST, PUBLISHED_MOST

RULES_FILE = "cwr_fast/study/findings.py"  # where FINDINGS.md sends a reader for the rules


def write_findings(out: Path, settings: dict) -> Path:
    """FINDINGS.md, findings.json, plots/ and compare/ of one finished study folder."""
    from cwr_fast.compare import load_run, write_comparison

    out = Path(out)
    reports, sweeps = load_outputs(out, settings)
    result = collect(out, settings, reports, sweeps)
    write_plots(out, result, reports)
    runs = [load_run(out / "runs" / r["name"]) for r in settings["runs"]]
    write_comparison(runs, out / "compare", attacks=[result["attacks"]["pgd"], result["attacks"]["aa"]],
                     overwrite=True)
    write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n", out / "findings.json")
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
    results = {p.parent.name: json.loads((p.parent / "findings.json").read_text(encoding="utf-8"))
               for p in paths}
    parts = [f"# Findings: class-wise robustness on {len(paths)} datasets, measured by cwr_fast\n",
             f"One run of `python -m cwr_fast.reproduce` over {', '.join(p.parent.name for p in paths)}: "
             f"total wall time {_minutes(timing['wall'])}{_calls(timing)}. Each dataset's study is in its "
             "own folder (runs, logs, plots, findings.json); its document follows.\n",
             "## Budget\n", markdown_table(["study", "dataset", "model", "training", "test images",
                                             "seeds"], [[name, *_budget_row(r)] for name, r in results.items()]), "",
             "## Summary over the datasets\n",
             markdown_table(["dataset", *SUMMARY_HEADER],
                            [[name, *row] for name, r in results.items() for row in summary_rows(r)]), "",
             _combined_family(results), "", "## Contents\n"]
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


def _combined_family(results: dict) -> str:
    """The family-wise error over every dataset's findings."""
    fam = F.family([(f"{name} {r['finding']}", r["p"], r["reproduced"])
                    for name, result in results.items() for r in result["family"]["rows"]])
    survivors = [r["finding"] for r in fam["rows"] if r["survives_holm"]]
    return (f"Over the {len(results)} datasets, {fam['tests']} findings are tested, each at {F.ALPHA:g}; if all "
            f"were false, at least one would say yes with probability at most {100 * fam['fwer_bound']:.0f}% "
            f"(Bonferroni). {fam['reproduced']} say yes, and {len(survivors)} survive Holm's correction over all "
            f"{fam['tests']} (family-wise error at most {F.ALPHA:g})" + (f": {', '.join(survivors)}." if survivors else "."))


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


def document(result: dict, reports: dict, sweeps: dict) -> str:
    """FINDINGS.md of one study: its findings (`collect`), final reports and sweep reports."""
    summary = summary_rows(result)
    sections = [_opening(result), _summary_section(result, summary),
                _disparity_section(result, reports, sweeps), _concentration_section(result),
                _weight_norm_section(result, reports), _consistency_section(result),
                _gains_section(result, reports), _temperature_section(result),
                _per_class_temperature_section(result), _autoattack_section(result),
                _defenses_section(result), _caveats_section(result, summary)]
    return "\n".join(line for section in sections for line in section)


def _opening(result: dict) -> list[str]:
    s = result["settings"]
    return [
        f"# Findings: class-wise robustness on {s['dataset']}, measured by cwr_fast\n",
        f"Reproduces the findings of {PAPER} with this tool. Generated by `python -m cwr_fast.reproduce "
        f"--dataset {s['dataset']}{' --' + s['mode'] if s['mode'] != 'cpu' else ''}` on "
        f"{_dt.date.today().isoformat()}; total wall time {_minutes(s['seconds']['wall'])}"
        f"{_calls(s['seconds'])} on this machine ({s.get('device', 'cpu')}). **Every number below was measured in that run**; each verdict "
        f"is a statistical test with a stated null hypothesis (`{RULES_FILE}`; how to read them "
        f"below the summary).\n",
        "## Settings\n", *_settings_lines(s), ""]


def _summary_section(result: dict, summary: list[list[str]]) -> list[str]:
    return ["## Summary\n", markdown_table(SUMMARY_HEADER, summary), "", *reading_lines(result), ""]


def _disparity_section(result: dict, reports: dict, sweeps: dict) -> list[str]:
    """Finding 1a: the per-class table of each baseline, its worst and best class, and the
    published CIFAR-10 pattern (1d)."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    lines = ["## 1. Class-wise disparity\n"]
    add = lines.append
    for name in b:
        t = b[name]["temperature"]
        add(f"### {name}: per-class clean and robust accuracy (%)\n")
        add(_per_class_table(reports[name], strongest_tpgd(sweeps[name]), f"tpgd T={t['strongest']['value']:g}"))
        add("")
        d = b[name]["disparity"]
        for label in (pgd, aa):
            x = d[label]
            add(f"- Under {label}: worst class {x['worst']['class_name']} at {pct(x['worst']['robust_acc'])}% "
                f"[{pct(x['worst']['ci_low'])}, {pct(x['worst']['ci_high'])}], best class "
                f"{x['best']['class_name']} at {pct(x['best']['robust_acc'])}% [{pct(x['best']['ci_low'])}, "
                f"{pct(x['best']['ci_high'])}]: a gap of {100 * x['gap']:.1f} points. Test of equal "
                f"accuracy in every class (Monte-Carlo chi-square): {_p_eq(x['p'])}. {_verdict_sentence(x['reproduced'])}")
        ws = F.attack_section(reports[name], aa)["summary"].get("worst_stats")
        if ws:
            share = ws["worst_frequency"][d[aa]["worst"]["class"]]
            add(f"- The lowest class accuracy under {aa}, whichever class it is: simultaneous 95% interval "
                f"[{pct(ws['ci_low'])}, {pct(ws['ci_high'])}]; class {d[aa]['worst']['class_name']} is the worst in "
                f"{100 * share:.0f}% of bootstrap draws (method in report.json `methods`).")
        pattern = b[name].get("published_pattern")
        if pattern is not None:
            add(_published_pattern_line(pattern, aa))
        add("")
    add("![per-class robust accuracy](plots/per_class_robust.png)\n")
    return lines


def _published_pattern_line(pattern: dict, aa: str) -> str:
    g = pattern["groups"]
    return (f"- Published CIFAR-10 pattern (least robust {', '.join(PUBLISHED_LEAST)}; most "
            f"{', '.join(PUBLISHED_MOST)}): under {aa} the published most robust classes hold "
            f"{g['most']['robust']} of {g['most']['n']} images ({pct(g['most']['robust_acc'])}%), the "
            f"published least robust {g['least']['robust']} of {g['least']['n']} "
            f"({pct(g['least']['robust_acc'])}%): a gap of {_signed(pattern['gap'])} points, one-sided "
            f"Fisher exact {_p_eq(pattern['p'])}, so this run **{pattern['agreement']}**. Its own "
            f"least robust classes are {', '.join(pattern['least'])} and most robust "
            f"{', '.join(pattern['most'])} (ties included), {pattern['overlap']} of {pattern['of']} "
            f"in the published groups.")


def _concentration_section(result: dict) -> list[str]:
    """Finding 1b: where each class's adversarial examples go."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    lines = ["### Where the adversarial examples go\n",
             "For each class, the wrong predictions under attack (clean errors included) and the share that "
             "lands on the most frequent wrong class. The earlier version of the paper found that they "
             "concentrate on one or two semantically similar classes.\n"]
    add = lines.append
    for name in b:
        c = b[name]["concentration"]
        rows = [[r["class_name"], r["fooled"], "–" if r["target"] is None else f"{r['target_name']} ({pct(r['top1_share'])}%)",
                 "–" if r["second"] is None else r["second_name"], pct(r["top2_share"])] for r in c["per_class"]]
        add(f"**{name}, {pgd}:**\n")
        add(markdown_table(["class", "errors", "most frequent target (share)", "second", "top-2 share (%)"], rows))
        ca = b[name]["concentration_aa"]
        add(f"\nOver all classes, the top target takes {pct(c['top1_share'])}% and the top two "
            f"{pct(c['top2_share'])}% of the {c['fooled']} errors under {pgd} ({pct(ca['top2_share'])}% under "
            f"{aa}). Spread uniformly at random over the other classes, the same per-class error counts "
            f"would give {pct(c['null_top2_share'])}% on average (few errors per class make the top two "
            f"large by chance): Monte-Carlo {_p_eq(c['p'])}. {_verdict_sentence(c['reproduced'])}\n")
    add("![adversarial confusion, pgd-at](plots/confusion_pgd-at.png)\n")
    return lines


def _weight_norm_section(result: dict, reports: dict) -> list[str]:
    """Finding 1c: robustness against the norm of each class's classifier row."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    names = reports["pgd-at"]["dataset"]["class_names"]
    header, rows = ["class"], [[n] for n in names]
    for name in b:
        header += [f"{name}: weight norm", f"{name}: {pgd} (%)"]
        for k, row in enumerate(rows):
            row += [f"{b[name]['weight_norms'][k]:.3f}", pct(F.robust_acc(reports[name], pgd)[k])]
    lines = ["### Robustness and the norm of each class's classifier weight\n", markdown_table(header, rows), ""]
    for name in b:
        for label in (pgd, aa):
            n = b[name]["norm_correlation"][label]
            lines.append(f"- {name}, {label}: Spearman {_num(n['spearman'])} (one-sided permutation p = "
                         f"{_num(n['p_value'], 3)}), Pearson {_num(n['pearson'])}. {_verdict_sentence(n['reproduced'])}")
    lines.append("\n![weight norm vs robustness](plots/weight_norm_vs_robustness.png)\n")
    return lines


def _consistency_section(result: dict) -> list[str]:
    """Finding 2: the class ranking across attacks, and across training methods and defenses."""
    aa = result["attacks"]["aa"]
    b = result["baselines"]
    lines = ["## 2. Consistency of the class ranking\n",
             "Spearman rank correlation of per-class robust accuracy between attacks (same model, same "
             "images). The attacks share their images, so their per-class accuracies agree partly because an "
             "image one attack breaks is easy for the others too, even with no class effect at all; the test "
             "compares the mean correlation with its value when the class labels are shuffled across images "
             "(each image keeping all its outcomes).\n"]
    for name in b:
        a, ranks = b[name]["attack_agreement"], b[name]["attack_ranks"]
        lines.append(f"**{name}:** " + "; ".join(f"{p['a']} vs {p['b']}: {_num(p['spearman'])}" for p in ranks["pairs"])
                     + f". Over the attacks of the report, mean {_num(a['mean'])}; with the labels shuffled "
                     f"{_num(a['null_mean'])} on average, permutation {_p_eq(a['p'])}. {_verdict_sentence(a['reproduced'])}\n")
    da, dr = result["defense_agreement"], result["defense_ranks"]
    lines.append(f"Between training methods and defenses (per-class {aa} robust accuracy): " + "; ".join(
        f"{p['a']} vs {p['b']}: {_num(p['spearman'])}" for p in dr["pairs"])
        + f". Mean {_num(da['mean'])}; with the labels shuffled {_num(da['null_mean'])}, permutation "
        f"{_p_eq(da['p'])}. {_verdict_sentence(da['reproduced'])} (Defenses are meant to change the ranking at the "
        "bottom, so some disagreement here is expected.)\n")
    return lines


def _gains_section(result: dict, reports: dict) -> list[str]:
    """Finding 3: which classes a stronger attack gains on."""
    names = reports["pgd-at"]["dataset"]["class_names"]
    lines = ["## 3. Stronger attacks gain mainly on the vulnerable classes\n",
             "Among the images the weakest attack leaves robust, which ones does the strongest attack fool? "
             "Each image is scored by its class's robust accuracy under the weakest attack; the test asks "
             "whether the images fooled in addition come from less robust classes than those that stay "
             "robust (permutation test, one-sided). Rates, not counts: the halves are compared by the share "
             "of their robust images that the stronger attack fools.\n"]
    add = lines.append
    for name, b in result["baselines"].items():
        g = b["gain"]
        if g is None:
            add(f"**{name}:** no pair of attacks with different robust accuracy.\n")
            continue
        add(f"**{name}:** {g['stronger']} fools {g['extra']} images that {g['weaker']} leaves robust: "
            f"{pct(g['gain_rate_lower'])}% of the robust images of the less robust half of the classes, "
            f"{pct(g['gain_rate_upper'])}% of the more robust half's; {_p_eq(g['p'])}. "
            f"{_verdict_sentence(g['reproduced'])}\n")
        add(markdown_table(["class"] + [names[r["class"]] for r in g["per_class"]],
                           [["extra fooled"] + [r["extra"] for r in g["per_class"]],
                            ["of robust (%)"] + [pct(r["gain_rate"]) for r in g["per_class"]]]))
        add("")
    return lines


def _temperature_section(result: dict) -> list[str]:
    """Finding 4, descriptive part: the in-sample temperature sweep."""
    pgd = result["attacks"]["pgd"]
    lines = ["## 4. Temperature-PGD against PGD at the same budget\n",
             "The sweep below is measured on all test images and is descriptive: the strongest T is picked "
             "on the images it is scored on, and each T has its own random start, so in-sample the best of "
             "several T beats T = 1 often by chance alone. The verdict comes from the held-out test in the "
             "next subsection.\n"]
    add = lines.append
    for name, b in result["baselines"].items():
        t = b["temperature"]
        rows = [[f"{v:g}", pct(o), pct(w)] for v, o, w in zip(t["values"], t["overall"], t["worst_class"])]
        add(f"**{name}** ({pgd}: {pct(t['pgd'])}% overall):\n")
        add(markdown_table(["T", "robust accuracy (%)", "worst class (%)"], rows))
        per_class = ", ".join(f"{r['class_name']} ({pct(r['robust_acc'])}% at T = {r['T']:g} vs {pct(r['at_one'])}%)"
                              for r in t["stronger_classes"]) or "none"
        add(f"\nStrongest T = {t['strongest']['value']:g} ({pct(t['strongest']['robust_acc'])}% vs "
            f"{pct(t['at_one'])}% at T = 1). Classes for which some T != 1 is stronger than T = 1: "
            f"{per_class}. "
            f"Each T has its own random start: {pgd} itself (T = 1, another start) gives {pct(t['pgd'])}%, so "
            f"differences up to {100 * abs(t['pgd'] - t['at_one']):.1f} points are random-start noise.\n")
    add("![temperature sweep](plots/temperature_sweep.png)\n")
    return lines


def _per_class_temperature_section(result: dict) -> list[str]:
    """Findings 4 and 4b: a global and a per-class T, chosen on half the images, tested on the other."""
    b = result["baselines"]
    lines = []
    add = lines.append
    if any(b[name].get("per_class_T") for name in b):
        add("### A temperature per class\n")
        add("The sweep's per-image outcomes are split in two halves by image index: on the selection half, "
            "each class gets the T that leaves the fewest of its images robust (T = 1 on ties), and one global "
            "T is chosen the same way; the other half measures both against T = 1 (PGD), paired on the same "
            "images (difference of class-mean robust accuracy, randomisation-test p, bootstrap 95% interval). "
            "The global T's held-out test is finding 4's verdict, the per-class T's finding 4b's.\n")
    for name in b:
        pc = b[name].get("per_class_T")
        if pc is None:
            continue
        add(f"**{name}:** T per class: " + ", ".join(f"{c['class_name']} {c['T']:g}" for c in pc["chosen"])
            + f"; global T {pc['global_value']:g} ({pc['selection_images']} selection, {pc['test_images']} test images).\n")
        rows = [[label, pct(x["pgd"]), pct(x["robust_acc"]), f"{_signed(x['diff'])} [{_signed(x['ci_low'])}, {_signed(x['ci_high'])}]",
                 _num(x["p"], 3), f"{pct(x['worst_pgd'])} → {pct(x['worst'])} (p = {_num(x['worst_p'], 3)})"]
                for label, x in (("T per class", pc["per_class_T"]), (f"global T = {pc['global_value']:g}", pc["global_T"]))]
        add(markdown_table(["attack", "PGD (T = 1) (%)", "robust (%)", "difference (points) [95% CI]", "p",
                            "worst class (%)"], rows))
        for finding, label, x in (("4", f"The global T = {pc['global_value']:g}", pc["global_T"]),
                                  ("4b", "A T per class", pc["per_class_T"])):
            add(f"\n{finding}. {label} " + ("beats PGD on the held-out half, significantly. **Reproduced.**"
                                             if x["reproduced"] else f"does not beat PGD significantly on the "
                                             f"held-out half ({_p_eq(x['p'])}): **not reproduced.**"))
        add("")
    return lines


def _autoattack_section(result: dict) -> list[str]:
    """AutoAttack per class and per member, and torchattacks' variant against the reference."""
    aa = result["attacks"]["aa"]
    b = result["baselines"]
    lines = ["## AutoAttack: the reference protocol, per class and per member\n",
             f"`{aa}` reproduces the reference AutoAttack (Croce & Hein, 2020): its members run in order, each "
             "only on the images all earlier ones failed on. Per class, the images each member fooled first "
             "(of the images of the class) and what is left robust:\n"]
    add = lines.append
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
    return lines + _autoattack_variants_lines(result)


def _autoattack_variants_lines(result: dict) -> list[str]:
    aa = result["attacks"]["aa"]
    rows, gaps = [], []
    for name, b in result["baselines"].items():
        v = b["autoattack_variants"]
        if v is None:
            continue
        gaps.append((name, v["overall_gap"], v["worst_gap"]))
        rows.append([name, pct(v["aa"]["overall"]), pct(v["aa_ta"]["overall"]), _signed(v["overall_gap"]),
                     f"{pct(v['aa']['worst'])} ({v['aa']['worst_class']})",
                     f"{pct(v['aa_ta']['worst'])} ({v['aa_ta']['worst_class']})", _signed(v["worst_gap"]),
                     ", ".join(v["classes_overstated"]) or "none"])
    if not rows:
        return []
    return ["torchattacks' `AutoAttack` (3.5.1) builds its members with their own defaults, 10 iterations "
            "instead of 100 and APGD-T over all other classes, which makes it weaker than the reference in "
            "general. Measured in this run on the same images (`aa-ta`):\n",
            markdown_table(["run", f"{aa} overall (%)", "aa-ta overall (%)", "aa-ta − aa",
                            f"{aa} worst class (%)", "aa-ta worst class (%)", "aa-ta − aa (worst)",
                            "classes aa-ta overstates"], rows),
            "\n" + _variant_gap_sentence(gaps, result["settings"]) + "\n"]


def _defenses_section(result: dict) -> list[str]:
    """Finding 5: every run's table, the paired tests, the seeds and the best defense's verdict."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    rows = [[r["name"], r["method"], pct(r["clean"]), pct(r[pgd]["mean"]), pct(r[pgd]["worst"]), pct(r[aa]["mean"]),
             pct(r[aa]["worst"]), pct(r[aa]["best"]),
             "" if r["name"] == r["baseline"] else _signed(r["worst_gain"]),
             "" if r["name"] == r["baseline"] else _signed(-r["mean_cost"])] for r in result["defenses"]]
    lines = ["## 5. Class-wise defenses against the baselines\n",
             "Mean over classes, worst class and best class robust accuracy (%) on the same test images; "
             "each defense is compared with the baseline of its training method. The full comparison with "
             "95% intervals is in [compare/compare.md](compare/compare.md) (`python -m cwr_fast.compare`).\n",
             markdown_table(["run", "method", "clean", f"{pgd} mean", f"{pgd} worst", f"{aa} mean", f"{aa} worst",
                             f"{aa} best", "Δ worst vs baseline", "Δ mean vs baseline"], rows),
             "\n![defenses](compare/compare.png)\n"]
    lines += _paired_lines(result) + _seed_lines(result) + _best_defense_lines(result)
    lines.append("Defenses: `cwr` is our formulation of the paper's training change (per-class loss weight and "
                 "budget from the validation robust accuracy, re-estimated every epoch); `+calibration` adds the "
                 "paper's inference-time change as we formulate it (per-class logit scale and bias fitted on the "
                 "held-out adversarial validation split, part of the model, so the attacks above attack it); "
                 "FRL (Xu et al., ICML 2021), CFA (Wei et al., CVPR 2023) and WAT (Li and Liu, AAAI 2023) follow "
                 "their papers (see `cwr_fast/defenses/`).\n")
    return lines


def _paired_lines(result: dict) -> list[str]:
    """Each defense against its baseline, paired on the same test images."""
    aa = result["attacks"]["aa"]
    verdict_of_best = result.get("best_defense_verdict")
    rows = [[r["name"], r["baseline"],
             f"{_signed(r['paired']['worst']['diff'])} [{_signed(r['paired']['worst']['ci_low'])}, "
             f"{_signed(r['paired']['worst']['ci_high'])}]", _num(r["paired"]["worst"]["p"], 3),
             _num(verdict_of_best["holm_first_seed"].get(r["name"]), 3) if verdict_of_best else "–",
             f"{_signed(r['paired']['mean']['diff'])} [{_signed(r['paired']['mean']['ci_low'])}, "
             f"{_signed(r['paired']['mean']['ci_high'])}]", _num(r["paired"]["mean"]["p"], 3),
             ", ".join(f"{c['class_name']} {_signed(c['diff'])}" for c in r["paired"]["per_class"] if c["significant"]) or "none"]
            for r in result["defenses"] if "paired" in r]
    if not rows:
        return []
    return [f"Paired on the same test images ({aa}; `python -m cwr_fast.compare BASELINE RUN --paired`): the "
            "worst-class difference with a simultaneous 95% interval (it holds whichever class is worst; "
            "method in compare/ and report.json `methods`), the class-mean difference with a paired-bootstrap "
            "95% interval, randomisation-test p-values (Holm-corrected over the defenses in the last column "
            "but one), and the classes whose difference is significant after Holm's correction (exact McNemar):\n",
            markdown_table(["run", "against", "Δ worst (points) [95% CI]", "p", "p (Holm)", "Δ mean [95% CI]", "p",
                            "classes significantly changed"], rows),
            ""]


def _seed_lines(result: dict) -> list[str]:
    """The runs trained at several seeds: mean ± std, and each seeded defense per seed."""
    aa = result["attacks"]["aa"]
    sd = result["seeds"]
    if not sd["runs"]:
        return []
    rows = [[name, len(r["per_seed"]), f"{pct(r['clean_mean'])} ± {100 * r['clean_std']:.1f}",
             f"{pct(r['mean_mean'])} ± {100 * r['mean_std']:.1f}", f"{pct(r['worst_mean'])} ± {100 * r['worst_std']:.1f}",
             ", ".join(pct(x["worst"]) for x in r["per_seed"])] for name, r in sd["runs"].items()]
    lines = [f"**Seeds** ({', '.join(map(str, sd['seeds']))}; the baselines and the best defense at the first seed), "
             f"{aa} robust accuracy (%), mean ± std over seeds:\n",
             markdown_table(["run", "seeds", "clean", f"{aa} mean", f"{aa} worst class", "worst class per seed"], rows)]
    for name, per_seed in sd["paired"].items():
        lines.append(f"\n{name} against its baseline of the same seed: worst class "
                     + "; ".join(f"seed {x['seed']}: {_signed(x['worst_gain'])} (p = {_num(x['p'], 3)})"
                                 for x in per_seed) + ".")
    return lines + [""]


def _best_defense_lines(result: dict) -> list[str]:
    """Finding 5's verdict on the defense chosen at the first seed."""
    if not result["best_defense"]:
        return []
    aa = result["attacks"]["aa"]
    best = next(r for r in result["defenses"] if r["name"] == result["best_defense"])
    v = result["best_defense_verdict"]
    if v["kind"] == "held-out seeds":
        rule = (f"it was chosen on the first seed, so the verdict comes from the {v['seeds']} other "
                f"seed{'s' if v['seeds'] > 1 else ''} only: "
                f"worst-class differences {', '.join(_signed(x) for x in v['diffs'])} points, combined "
                f"one-sided randomisation {_p_eq(v['p'])}")
    else:
        rule = (f"with one seed, every defense's paired worst-class test is Holm-corrected over the "
                f"{v['compared']} defenses compared: {best['name']}'s {_p_eq(v['p'])}")
    return [f"The highest worst-class {aa} robust accuracy at the first seed is **{best['name']}**: "
            f"{pct(best[aa]['worst'])}%, {_signed(best['worst_gain'])} points against {best['baseline']}, mean "
            f"{aa} robust accuracy {_signed(-best['mean_cost'])} points. Test (`{RULES_FILE}`, rule 5): "
            f"{rule}, so **{v['wording']}**.\n"]


def _caveats_section(result: dict, summary: list[list[str]]) -> list[str]:
    """What did not reproduce or is inconclusive, and the limits of the budget."""
    s, aa = result["settings"], result["attacks"]["aa"]
    notes = []
    for finding, measured, p, power, outcome in summary:
        if outcome not in ("yes", "agrees"):
            underpowered = "underpowered" in power
            kind = ("Inconclusive (the run could not have seen the reference effect)" if underpowered else
                    "Inconclusive" if outcome.startswith(("no (significant", "same direction")) else "Not reproduced")
            notes.append(f"- {kind}: {finding} — {measured}" + ("" if p == "–" else f" (p {p})") + ".")
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
        test = "the whole test split" if s["test_per_class"] is None else f"{s['test_per_class']} test images per class"
        notes.append(f"- The reduced training budget (subset, short PGD, few epochs) and {test} limit the "
                     "precision: differences of a few points between defenses are within the per-class intervals.")
    return ["## Where the data disagrees or is inconclusive\n",
            "\n".join(notes) if notes else "- Every finding above reproduced in this run.", ""]


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
            f"- **Reduced training budget** (so that the whole study, two datasets and three seeds, runs in "
            f"under 90 minutes on a 2-core CPU; the test images are not cut): "
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
    if s["mode"] == "cpu" and s["test_per_class"] is not None:
        test += (" (enough for a class's 95% interval of about ±10 points at 70% accuracy; AutoAttack as "
                 "the reference runs it, 100-iteration APGD-T and FAB-T over 9 target classes and 5,000 "
                 "Square queries on every image still robust, takes most of each run's evaluation time)")
    lines.append(f"- Evaluation on {test} (the same images for every model): {s['attacks'].replace(',', ', ')} "
                 f"(aa = AutoAttack as the reference implementation runs it, standard version: APGD-CE, "
                 f"APGD-T, FAB-T and Square, cwr_fast's own members; the baselines also get aa-ta, "
                 f"torchattacks' 10-iteration variant, for comparison), {s['attack_steps']} steps for the "
                 f"iterative attacks; Temperature-PGD sweep over T = "
                 f"{', '.join(f'{t:g}' for t in s['temperatures'])} at the same budget and steps.")
    if s.get("val_attack"):
        lines.append(f"- Each training's per-epoch check, by which the class-wise defenses steer: "
                     f"`{s['val_attack']}` (instead of PGD); the numbers above come from the final attacks.")
    n = s["test_per_class"]
    lines.append("- 95% Wilson intervals are given for per-class accuracies (and drawn on every per-class bar "
                 + (f"plot); with {n} images a class's interval is about ±{_ci_half_width(n):.0f} points at 80% "
                    "accuracy." if n else "plot)."))
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


SUMMARY_HEADER = ["finding", "this run", "p", "smallest effect detectable (80% power); power at the reference effect",
                  "reproduced?"]
# how each finding's effect size reads (findings.REFERENCE_EFFECTS, EFFECT_GRIDS)
EFFECT_UNITS = {"disparity": "points below the other classes", "concentration": "of the errors on one class",
                "weight_norm": "correlation", "consistency": "points of spread between classes",
                "gains": "points more extra fooling in the less robust half", "temperature": "points",
                "defense": "points on the worst class"}


def _effect(finding: str, value) -> str:
    if value is None:
        return "none on the grid"
    shown = f"{value:.2f}" if finding == "weight_norm" else f"{100 * value:.0f}%" if finding == "concentration" \
        else f"{100 * value:.1f}"
    return f"{shown} {EFFECT_UNITS[finding]}"


def power_text(finding: str, power: dict | None) -> str:
    """'>= X; Y% at the reference (words)' for the summary table."""
    if power is None:
        return "–"
    return (f"{_effect(finding, power['effect'])}; {100 * power['power_at_reference']:.0f}% at "
            f"{power['reference_words']}" + ("" if power["had_power"] else " (**underpowered**)"))


def _summary_verdict(ok: bool, p: float | None) -> str:
    if ok:
        return "yes"
    return "no" if p is None or math.isnan(p) or p >= F.ALPHA else "no (significant, effect below the rule's size)"


def summary_rows(result: dict) -> list[list[str]]:
    """SUMMARY_HEADER rows for every finding of a study (its findings.json dict)."""
    pgd, aa = result["attacks"]["pgd"], result["attacks"]["aa"]
    b = result["baselines"]
    summary = []
    for name in b:
        d, c, n = b[name]["disparity"][pgd], b[name]["concentration"], b[name]["norm_correlation"][pgd]
        t, g, a = b[name]["temperature"], b[name]["gain"], b[name]["attack_agreement"]
        pw, pc = b[name]["power"], b[name].get("per_class_T")
        summary += [
            [f"1a. robustness differs a lot between classes ({name})",
             f"{pct(d['worst']['robust_acc'])}% (class {d['worst']['class_name']}) vs "
             f"{pct(d['best']['robust_acc'])}% (class {d['best']['class_name']}) under {pgd}, gap "
             f"{100 * d['gap']:.1f} points", _p(d["p"]), power_text("disparity", pw["disparity"]),
             _summary_verdict(d["reproduced"], d["p"])],
            [f"1b. adversarial examples concentrate on 1-2 classes ({name})",
             f"top-2 targets take {pct(c['top2_share'])}% of each class's errors (by chance, for these "
             f"error counts: {pct(c['null_top2_share'])}%)", _p(c["p"]),
             power_text("concentration", pw["concentration"]), _summary_verdict(c["reproduced"], c["p"])],
            [f"1c. robust classes have larger classifier-weight norms ({name})",
             f"Spearman {_num(n['spearman'])}", _p(n["p_value"]),
             power_text("weight_norm", result["power"]["weight_norm"]), _summary_verdict(n["reproduced"], n["p_value"])],
            [f"2. per-class robustness ranks agree across attacks ({name})",
             f"mean Spearman {_num(a['mean'])} (min {_num(a['min'])}; shared images alone: "
             f"{_num(a['null_mean'])})", _p(a["p"]), power_text("consistency", pw["consistency"]),
             _summary_verdict(a["reproduced"], a["p"])],
            [f"3. stronger attacks gain on vulnerable classes ({name})",
             "–" if g is None else f"{g['stronger']} fools {g['extra']} images {g['weaker']} leaves robust: "
             f"{pct(g['gain_rate_lower'])}% of the less robust half's robust images against "
             f"{pct(g['gain_rate_upper'])}% of the more robust half's",
             "–" if g is None else _p(g["p"]), power_text("gains", pw.get("gains")),
             _summary_verdict(g is not None and g["reproduced"], None if g is None else g["p"])],
        ]
        if pc is not None:
            x = pc["global_T"]
            summary.append([f"4. a temperature T != 1 makes PGD stronger ({name})",
                            f"T = {pc['global_value']:g} chosen on half the images; on the other half "
                            f"{pct(x['robust_acc'])}% vs {pct(x['pgd'])}% at T = 1 ({_signed(x['diff'])} points "
                            f"[{_signed(x['ci_low'])}, {_signed(x['ci_high'])}]); in-sample strongest T = "
                            f"{t['strongest']['value']:g}", _p(x["p"]), power_text("temperature", pw.get("temperature")),
                            _summary_verdict(x["reproduced"], x["p"])])
            x = pc["per_class_T"]
            summary.append([f"4b. a T chosen per class beats PGD on held-out images ({name})",
                            f"{pct(x['robust_acc'])}% vs {pct(x['pgd'])}% ({_signed(x['diff'])} points "
                            f"[{_signed(x['ci_low'])}, {_signed(x['ci_high'])}])", _p(x["p"]),
                            power_text("temperature", pw.get("temperature")), _summary_verdict(x["reproduced"], x["p"])])
        else:
            summary.append([f"4. a temperature T != 1 makes PGD stronger ({name})",
                            "the sweep's per-image outcomes are missing: not tested", "–", "–", "not tested"])
        pattern = b[name].get("published_pattern")
        if pattern is not None:
            g = pattern["groups"]
            summary.append([f"1d. the published CIFAR-10 pattern ({name}, {aa})",
                            f"published most robust {pct(g['most']['robust_acc'])}% vs least robust "
                            f"{pct(g['least']['robust_acc'])}%; least robust here: {', '.join(pattern['least'])}; "
                            f"most: {', '.join(pattern['most'])}", _p(pattern["p"]), "–", pattern["agreement"]])
    da = result["defense_agreement"]
    summary.append(["2. per-class ranks agree across defenses",
                    f"mean Spearman {_num(da['mean'])} over {len(da['pairs'])} pairs ({aa}; shared images alone: "
                    f"{_num(da['null_mean'])})", _p(da["p"]), "–", _summary_verdict(da["reproduced"], da["p"])])
    if result["best_defense"]:
        best = next(r for r in result["defenses"] if r["name"] == result["best_defense"])
        v = result["best_defense_verdict"]
        where = (f"on the held-out seed{'s' if v['seeds'] > 1 else ''} {', '.join(_signed(x) for x in v['diffs'])} points"
                 if v["kind"] == "held-out seeds" else f"Holm-corrected over {v['compared']} defenses")
        summary.append(["5. class-wise defenses raise the worst class",
                        f"best at the first seed: {best['name']}, worst-class {aa} {pct(best[aa]['worst'])}% "
                        f"({_signed(best['worst_gain'])} vs {best['baseline']}); {where}",
                        _p(v["p"]), power_text("defense", result["power"].get("defense")),
                        _summary_verdict(v["reproduced"], v["p"])])
    return summary


def _num(value, digits: int = 2) -> str:
    """A number to `digits` decimals; "–" for None or NaN."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _verdict_sentence(ok: bool) -> str:
    """The verdict that closes a finding's paragraph."""
    return "**Reproduced.**" if ok else "**Not reproduced in this run.**"


def markdown_table(header, rows) -> str:
    return "\n".join(table(header, rows))


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def reading_lines(result: dict) -> list[str]:
    """How to read the summary: what a verdict claims, and the family of tests."""
    fam = result["family"]
    survivors = [r["finding"] for r in fam["rows"] if r["survives_holm"]]
    return [
        "How to read it. Each finding is a test of a stated null hypothesis (no class effect, a uniform "
        "spread of errors, no correlation, no temperature effect, no defense effect; the list is in "
        f"`{RULES_FILE}`). **yes** means the test rejects it at p < "
        f"{F.ALPHA:g} and the effect has the size the rule names; when the finding is false, each rule "
        "says yes at most 5% of the time (simulated in `tests/study/test_findings_calibration.py`). **no** means "
        "this run gives no such evidence, which proves the finding false only where the run had the power "
        "to see it: the power column gives the smallest effect that a run of this size detects in 80% of "
        "simulated runs, and how often it would detect the reference effect named there "
        "(`findings.REFERENCE_EFFECTS`; the paper states its findings in words, so these sizes are ours). "
        "**underpowered** marks a finding this run could not have decided.",
        "",
        f"This study tests {fam['tests']} findings, each at {F.ALPHA:g}: if all of them were false, the "
        f"chance that at least one says yes is at most {100 * fam['fwer_bound']:.0f}% (Bonferroni). "
        f"{fam['reproduced']} say yes; {len(survivors)} of them survive Holm's correction over the "
        f"{fam['tests']} (family-wise error at most {F.ALPHA:g})"
        + (f": {', '.join(survivors)}." if survivors else "."),
    ]


def _p_eq(value: float | None) -> str:
    """'p < 0.001' or 'p = 0.123', for prose."""
    text = _p(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _calls(seconds: dict) -> str:
    calls = seconds.get("calls", 1)
    return f" over {calls} calls (it was interrupted and resumed)" if calls > 1 else ""


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
