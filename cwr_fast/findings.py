"""The paper's findings, measured: pure functions from class-wise reports (cwr_fast.classwise
report dicts) to numbers and verdicts, and the FINDINGS.md writer used by `cwr_fast.reproduce`.

Each finding has a stated, mechanical rule (THRESHOLDS), so the verdict in FINDINGS.md is what
the numbers of that run say, not an opinion:

  disparity       worst-best class gap under PGD >= 10 points and their 95% Wilson CIs disjoint
  concentration   fooled images of a class land mostly on 1-2 classes: the fooled-weighted mean
                  share of each class's two most frequent adversarial predictions >= 50%
                  (with 9 wrong classes, a uniform spread would give 22%)
  weight norm     Spearman(per-class robust accuracy, norm of the class's classifier row) > 0,
                  with a permutation p-value
  consistency     mean pairwise Spearman of per-class robust accuracy across attacks >= 0.7
  gains           the extra images the strongest attack fools beyond the weakest come mostly
                  (> 50%) from the classes below the median robustness
  temperature     some T != 1 of Temperature-PGD lowers robust accuracy by >= 1 point below
                  T = 1 (= PGD) at the same steps and budget (a smaller difference is a handful of
                  images, within the noise of the random start)
  per-class T     a T chosen per class on half of the test images (the selection half) lowers the
                  robust accuracy of the other half below T = 1, significantly (paired
                  randomisation test, p < 0.05); likewise for one global T chosen on that half
  defense         a class-wise defense raises the worst class's robust accuracy against the
                  baseline of its method: the gain is positive for every seed and the paired test
                  on the same images (randomisation test of the worst-class difference) has
                  p < 0.05 for at least half of the seeds; otherwise "not significant"
  pattern         the classes published as the most robust have a higher pooled robust accuracy
                  than those published as the least robust, significantly (one-sided Fisher exact
                  test on the images of the two groups, p < 0.05); a gap in the published direction
                  with p >= 0.05 is "same direction, not significant", any other gap "disagrees"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cwr_fast.classwise.stats import spearman
from cwr_fast.report import figure

THRESHOLDS = {"disparity_gap": 0.10, "concentration_top2": 0.5, "consistency": 0.7,
              "gain_share": 0.5, "temperature_gain": 0.01, "significance": 0.05}


# ---- numbers ----------------------------------------------------------------------------------

def classifier_weight_norms(state: dict, num_classes: int) -> list[float]:
    """L2 norm of each class's row of the final linear layer: the last 2-D `*.weight` of the
    state dict with num_classes rows (fc2.weight of the small CNN, linear.weight of the ResNets)."""
    rows = [v for k, v in state.items()
            if k.endswith("weight") and v.dim() == 2 and v.shape[0] == num_classes]
    if not rows:
        raise ValueError(f"the weights have no 2-D layer with {num_classes} outputs")
    return [float(v) for v in rows[-1].float().norm(dim=1)]


def attack_section(report: dict, label: str) -> dict:
    for a in report["attacks"]:
        if a["label"] == label:
            return a
    raise KeyError(f"attack {label!r} not in the report (has {[a['label'] for a in report['attacks']]})")


def robust_acc(report: dict, label: str) -> list[float | None]:
    return [r["robust_acc"] for r in attack_section(report, label)["per_class"]]


def disparity(report: dict, label: str) -> dict:
    """Worst and best class under `label`, the gap, and whether their Wilson CIs are disjoint."""
    records = [r for r in attack_section(report, label)["per_class"] if r["robust_acc"] is not None]
    worst = min(records, key=lambda r: r["robust_acc"])
    best = max(records, key=lambda r: r["robust_acc"])
    gap = best["robust_acc"] - worst["robust_acc"]
    disjoint = worst["ci_high"] < best["ci_low"]
    return {"attack": label, "worst": worst, "best": best, "gap": gap, "ci_disjoint": disjoint,
            "reproduced": gap >= THRESHOLDS["disparity_gap"] and disjoint}


def target_concentration(report: dict, label: str) -> dict:
    """Where each class's misclassified images go under `label` (the report's confusion matrix:
    row = true class, column = prediction on the adversarial input; clean errors keep their clean
    prediction): the most frequent wrong class and the share of the top one and top two."""
    matrix = np.asarray(attack_section(report, label)["confusion"], dtype=np.int64)
    names = report["dataset"]["class_names"]
    rows, total_fooled, top1_sum, top2_sum = [], 0, 0, 0
    for c in range(len(matrix)):
        wrong = matrix[c].copy()
        wrong[c] = 0
        fooled = int(wrong.sum())
        order = np.argsort(-wrong, kind="stable")
        top1, top2 = int(wrong[order[0]]), int(wrong[order[:2]].sum())
        rows.append({"class": c, "class_name": names[c], "fooled": fooled,
                     "target": int(order[0]) if fooled else None,
                     "target_name": names[order[0]] if fooled else None,
                     "second": int(order[1]) if wrong[order[1]] else None,
                     "second_name": names[order[1]] if wrong[order[1]] else None,
                     "top1_share": top1 / fooled if fooled else None,
                     "top2_share": top2 / fooled if fooled else None})
        total_fooled += fooled
        top1_sum += top1
        top2_sum += top2
    top1 = top1_sum / total_fooled if total_fooled else None
    top2 = top2_sum / total_fooled if total_fooled else None
    return {"attack": label, "per_class": rows, "fooled": total_fooled, "top1_share": top1,
            "top2_share": top2, "uniform_top2_share": 2 / max(len(matrix) - 1, 1),
            "reproduced": top2 is not None and top2 >= THRESHOLDS["concentration_top2"]}


def permutation_p_value(a: Sequence[float], b: Sequence[float], permutations: int = 20000,
                        seed: int = 0) -> float:
    """One-sided p-value of Spearman(a, b) > 0 under random permutations of b."""
    observed = spearman(a, b)
    if math.isnan(observed):
        return math.nan
    rng = np.random.default_rng(seed)
    b = np.asarray(b, dtype=np.float64)
    hits = sum(spearman(a, rng.permutation(b)) >= observed - 1e-12 for _ in range(permutations))
    return (hits + 1) / (permutations + 1)


def norm_correlation(norms: Sequence[float], robust: Sequence[float | None]) -> dict:
    r = np.array([math.nan if v is None else v for v in robust], dtype=np.float64)
    n = np.asarray(norms, dtype=np.float64)
    keep = ~np.isnan(r)
    rho = spearman(n, r)
    varied = keep.sum() > 2 and n[keep].std() > 0 and r[keep].std() > 0
    pearson = float(np.corrcoef(n[keep], r[keep])[0, 1]) if varied else math.nan
    p = permutation_p_value(n[keep], r[keep])
    return {"spearman": rho, "pearson": pearson, "p_value": p,
            "reproduced": not math.isnan(rho) and rho > 0}


def rank_agreement(per_class: dict[str, Sequence[float | None]]) -> dict:
    """Pairwise Spearman of per-class accuracy vectors {name: [C]} and their mean."""
    names = list(per_class)
    vectors = {k: [math.nan if v is None else v for v in per_class[k]] for k in names}
    pairs = [{"a": a, "b": b, "spearman": spearman(vectors[a], vectors[b])}
             for i, a in enumerate(names) for b in names[i + 1:]]
    values = [p["spearman"] for p in pairs if not math.isnan(p["spearman"])]
    mean = float(np.mean(values)) if values else math.nan
    return {"pairs": pairs, "mean": mean, "min": min(values) if values else math.nan,
            "reproduced": not math.isnan(mean) and mean >= THRESHOLDS["consistency"]}


def strongest_gain(report: dict) -> dict | None:
    """The gain attribution of the weakest -> strongest attack pair (by overall robust accuracy)."""
    if not report.get("gains"):
        return None
    overall = {a["label"]: a["overall"]["robust_acc"] for a in report["attacks"]}
    weakest, strongest = max(overall, key=overall.get), min(overall, key=overall.get)
    for g in report["gains"]:
        if g["weaker"] == weakest and g["stronger"] == strongest:
            share = g["share_from_vulnerable_half"]
            return {**g, "reproduced": share is not None and share > THRESHOLDS["gain_share"]}
    return None


def temperature_effect(report: dict, pgd_label: str) -> dict | None:
    """Temperature-PGD sweep against PGD at the same steps and budget."""
    sweep = report["sweeps"].get("temperature")
    if not sweep:
        return None
    values, overall = sweep["values"], sweep["overall_robust_acc"]
    at_one = overall[values.index(1.0)] if 1.0 in values else None
    worst_class = [min(v for v in (r["robust_acc"][k] for r in sweep["per_class"]) if v is not None)
                   for k in range(len(values))]
    strongest = sweep["strongest"]
    pgd = attack_section(report, pgd_label)["overall"]["robust_acc"]
    lowers = (at_one is not None and strongest["value"] != 1.0
              and at_one - strongest["robust_acc"] >= THRESHOLDS["temperature_gain"] - 1e-12)
    stronger_classes = []  # classes for which some T != 1 fools strictly more than T = 1
    if 1.0 in values:
        one = values.index(1.0)
        for r in sweep["per_class"]:
            accs = r["robust_acc"]
            others = [(accs[k], values[k]) for k in range(len(values)) if k != one and accs[k] is not None]
            if accs[one] is not None and others and min(others)[0] < accs[one]:
                acc, value = min(others)
                stronger_classes.append({"class": r["class"], "class_name": r["class_name"], "T": value,
                                         "robust_acc": acc, "at_one": accs[one]})
    return {"values": values, "overall": overall, "worst_class": worst_class, "at_one": at_one,
            "pgd": pgd, "strongest": strongest, "reproduced": lowers,
            "stronger_classes": stronger_classes}


def per_class_temperature(correct, labels, index, values: Sequence[float],
                          class_names: Sequence[str]) -> dict | None:
    """Does choosing Temperature-PGD's T per class beat PGD (T = 1)? correct [K, N]: image n is
    still classified correctly after the sweep's attack k (temperature values[k]), labels [N],
    index [N] the images' dataset indices. The images at even positions in index order are the
    selection half: per class (and globally) the T that leaves the fewest of them robust is
    chosen (T = 1 on ties); the other half measures it against T = 1 with the paired tests of
    cwr_fast.classwise.paired. None without T = 1 in the sweep."""
    from cwr_fast.classwise.paired import paired_comparison

    values = [float(v) for v in values]
    if 1.0 not in values:
        return None
    correct, labels = np.asarray(correct, dtype=bool), np.asarray(labels)
    order = np.argsort(np.asarray(index), kind="stable")
    select, test = order[0::2], order[1::2]
    one = values.index(1.0)

    def pick(robust_counts: np.ndarray) -> int:
        return one if robust_counts[one] == robust_counts.min() else int(np.argmin(robust_counts))

    chosen = []
    for c, name in enumerate(class_names):
        mine = select[labels[select] == c]
        k = pick(correct[:, mine].sum(axis=1)) if len(mine) else one
        chosen.append({"class": c, "class_name": name, "T": values[k], "k": k,
                       "selection_robust_acc": [float(v) for v in correct[:, mine].mean(axis=1)] if len(mine) else None})
    k_global = pick(correct[:, select].sum(axis=1))
    y = labels[test]
    pgd = correct[one, test]
    per_class_t = correct[np.array([chosen[c]["k"] for c in y], dtype=np.int64), test]
    comparisons = {"per_class_T": paired_comparison(pgd, per_class_t, y, class_names),
                   "global_T": paired_comparison(pgd, correct[k_global, test], y, class_names)}
    out = {"values": values, "chosen": chosen, "global_value": values[k_global],
           "selection_images": int(len(select)), "test_images": int(len(test))}
    for key, cmp in comparisons.items():
        mean = cmp["mean"]
        out[key] = {"pgd": mean["a"], "robust_acc": mean["b"], "diff": mean["diff"],
                    "ci_low": mean["ci_low"], "ci_high": mean["ci_high"], "p": mean["p"],
                    "worst_pgd": cmp["worst"]["a"], "worst": cmp["worst"]["b"], "worst_p": cmp["worst"]["p"],
                    "reproduced": mean["diff"] < 0 and mean["p"] < THRESHOLDS["significance"]}
    out["reproduced"] = out["per_class_T"]["reproduced"]
    return out


def defense_verdict(seeds: Sequence[dict]) -> dict:
    """The defense rule (module docstring) over seeds: each {seed, worst_gain, p} of a defense
    against its baseline of the same seed, on the same images (the paired test's worst class)."""
    gains = [s["worst_gain"] for s in seeds]
    significant = sum(s["p"] < THRESHOLDS["significance"] for s in seeds)
    reproduced = bool(seeds) and all(g > 0 for g in gains) and 2 * significant >= len(seeds)
    return {"seeds": len(seeds), "gain_mean": float(np.mean(gains)) if gains else math.nan,
            "gain_std": float(np.std(gains)) if gains else math.nan,
            "significant_seeds": significant, "reproduced": reproduced,
            "wording": "significant" if reproduced else "not significant"}


def published_pattern(per_class: Sequence[dict], least: Sequence[str], most: Sequence[str]) -> dict:
    """The pattern rule (module docstring) on a report's per-class records ({class_name, n,
    robust}) against published groups of least and most robust class names. Also this run's own
    len(least) least and len(most) most robust classes; a class tied with the last one in is in
    too, so the lists can be longer than the published ones."""
    from scipy.stats import fisher_exact

    records = {r["class_name"]: r for r in per_class if r["n"]}
    missing = sorted((set(least) | set(most)) - set(records))
    if missing:
        raise ValueError(f"no test images of the published classes {missing}")
    acc = {name: r["robust"] / r["n"] for name, r in records.items()}
    ascending = sorted(acc.values())
    own_least = [c for c in sorted(acc, key=acc.get) if acc[c] <= ascending[len(least) - 1]]
    own_most = [c for c in sorted(acc, key=acc.get, reverse=True) if acc[c] >= ascending[-len(most)]]
    groups = {}
    for key, names in (("least", least), ("most", most)):
        robust, n = sum(records[c]["robust"] for c in names), sum(records[c]["n"] for c in names)
        groups[key] = {"classes": list(names), "robust": robust, "n": n, "robust_acc": robust / n}
    table = [[groups["most"]["robust"], groups["most"]["n"] - groups["most"]["robust"]],
             [groups["least"]["robust"], groups["least"]["n"] - groups["least"]["robust"]]]
    p = float(fisher_exact(table, alternative="greater").pvalue)
    gap = groups["most"]["robust_acc"] - groups["least"]["robust_acc"]
    agreement = ("agrees" if p < THRESHOLDS["significance"] else
                 "same direction, not significant" if gap > 0 else "disagrees")
    shared = len(set(own_least) & set(least)) + len(set(own_most) & set(most))
    return {"least": own_least, "most": own_most, "groups": groups, "gap": gap, "p": p,
            "overlap": shared, "of": len(least) + len(most), "agreement": agreement,
            "reproduced": agreement == "agrees"}


def class_record_summary(report: dict, label: str) -> dict:
    """{mean, worst, best} robust accuracy over classes under `label` ('worst case' for all)."""
    section = report["worst_case"] if label == "worst case" else attack_section(report, label)
    values = [r["robust_acc"] for r in section["per_class"] if r["robust_acc"] is not None]
    return {"mean": float(np.mean(values)), "worst": min(values), "best": max(values)}


def autoattack_variants(report: dict, faithful: str = "aa", torchattacks: str = "aa-ta") -> dict | None:
    """How far torchattacks' AutoAttack (10 iterations) is from the reference protocol on one model:
    overall and worst-class robust accuracy under each, and the differences (positive: the
    torchattacks variant overstates robustness). None when the report lacks one of them."""
    labels = {a["label"] for a in report["attacks"]}
    if faithful not in labels or torchattacks not in labels:
        return None
    out = {}
    for key, label in (("aa", faithful), ("aa_ta", torchattacks)):
        section = attack_section(report, label)
        worst = min((r for r in section["per_class"] if r["robust_acc"] is not None), key=lambda r: r["robust_acc"])
        out[key] = {"overall": section["overall"]["robust_acc"], "worst": worst["robust_acc"],
                    "worst_class": worst["class_name"]}
    aa_acc, ta_acc = robust_acc(report, faithful), robust_acc(report, torchattacks)
    out["overall_gap"] = out["aa_ta"]["overall"] - out["aa"]["overall"]
    out["worst_gap"] = out["aa_ta"]["worst"] - out["aa"]["worst"]
    out["classes_overstated"] = [r["class_name"] for r, a, t in zip(attack_section(report, faithful)["per_class"],
                                                                    aa_acc, ta_acc)
                                 if a is not None and t is not None and t > a]
    return out


# ---- writing --------------------------------------------------------------------------------

def num(value, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "**Reproduced.**" if ok else "**Not reproduced in this run.**"


def plot_per_class_models(reports: dict[str, dict], label: str, path: Path) -> None:
    """Per-class robust accuracy under `label`, one bar group per class, one bar per model."""
    names = next(iter(reports.values()))["dataset"]["class_names"]
    fig = figure(8.0, 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(reports)
    for k, (model, report) in enumerate(reports.items()):
        values = [math.nan if v is None else 100 * v for v in robust_acc(report, label)]
        ax.bar([c + (k - (len(reports) - 1) / 2) * width for c in range(len(names))], values,
               width=width, label=model)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"robust accuracy under {label} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    ax.set_title("Class-wise robust accuracy")
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
