"""The paper's findings, measured: pure functions from class-wise reports (cwr_fast.classwise
report dicts) and per-image outcomes to numbers and verdicts (FINDINGS.md's plots are in
cwr_fast.study.plots, its text in cwr_fast.study.document).

Each finding is a test with a stated null hypothesis; "reproduced" means the test rejects that
null at ALPHA (and, where stated, the effect is at least THRESHOLDS' size). Every test's
behaviour under its null is simulated in tests/study/test_findings_calibration.py: each says
"reproduced" at most 5% of the time when the finding is false.

  1a disparity     H0: every class has the same robust accuracy. Monte-Carlo chi-square test of
                   the class x robust table (labels permuted across images); reproduced when
                   p < ALPHA and the worst-best gap under PGD is >= 10 points.
  1b concentration H0: each class's fooled images go to its C-1 wrong classes uniformly at
                   random. Statistic: the fooled-weighted share of each class's two most frequent
                   wrong predictions, against its Monte-Carlo null for the observed per-class error
                   counts; reproduced when p < ALPHA and the share is >= 50%.
  1c weight norm   H0: class robustness and the norm of the class's classifier row are unrelated.
                   One-sided permutation test of Spearman's rho > 0; reproduced when p < ALPHA.
  1d pattern       (CIFAR-10) the classes published as most robust beat those published as least
                   robust: one-sided Fisher exact test on the two groups' images, p < ALPHA.
  2 consistency    H0: robustness has no class effect, so per-class ranks agree across attacks
                   (or models) only as much as shared images make them. Statistic: mean pairwise
                   Spearman of per-class robust accuracy; null: class labels permuted across
                   images, each image keeping all its outcomes; reproduced when p < ALPHA and the
                   mean is >= 0.7.
  3 gains          H0: the images a stronger attack fools beyond the weakest one are spread over
                   classes independently of how robust each class is. Permutation test of the
                   mean class robustness (under the weaker attack) of the extra fooled images
                   against the images both leave robust; reproduced when p < ALPHA (one-sided: the
                   extra fooling falls on the less robust classes).
  4 temperature    H0: Temperature-PGD at the best T is no stronger than PGD (T = 1). T is chosen
                   on half of the test images; the other half tests it, paired on the same images
                   (randomisation test); reproduced when that held-out difference is negative with
                   p < ALPHA. The in-sample sweep is descriptive only.
  4b per-class T   the same with a T chosen per class on the selection half.
  5 defense        H0: the defense chosen as best does not raise the worst class's robust
                   accuracy over the baseline of its method. With several seeds the defense is
                   chosen at the first seed and tested on the other seeds only (combined paired
                   randomisation test of the worst-class difference, one-sided); with one seed
                   every defense is tested and Holm-corrected over the defenses compared.

With several findings in one study, FINDINGS.md counts the tests, gives Holm-adjusted p-values
over them and bounds the family-wise error (`family`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cwr_fast.classwise import hypothesis as H
from cwr_fast.classwise.paired import combined_worst_test, holm
from cwr_fast.classwise.stats import spearman

ALPHA = 0.05
THRESHOLDS = {"disparity_gap": 0.10, "concentration_top2": 0.5, "consistency": 0.7}
POWER = 0.8          # "the smallest effect this run could detect": detected in 80% of simulated runs
POWER_DRAWS = 200    # simulated runs per effect size (enough to tell 80% from 65% or 95%)


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


def disparity(report: dict, label: str, *, draws: int = 2000) -> dict:
    """Rule 1a: worst and best class under `label`, the gap, and the test of equal class
    accuracies (H.homogeneity_test). The Wilson intervals of the two are shown, not tested: the
    worst and best class are picked from the data, so comparing their own intervals is biased."""
    records = [r for r in attack_section(report, label)["per_class"] if r["robust_acc"] is not None]
    worst = min(records, key=lambda r: r["robust_acc"])
    best = max(records, key=lambda r: r["robust_acc"])
    gap = best["robust_acc"] - worst["robust_acc"]
    test = H.homogeneity_test([r["robust"] for r in records], [r["n"] for r in records], draws=draws)
    return {"attack": label, "worst": worst, "best": best, "gap": gap,
            "p": test["p"], "test": test["method"],
            "reproduced": gap >= THRESHOLDS["disparity_gap"] and test["p"] < ALPHA}


def target_concentration(report: dict, label: str, *, draws: int = 2000) -> dict:
    """Rule 1b. Where each class's misclassified images go under `label` (the report's confusion
    matrix: row = true class, column = prediction on the adversarial input; clean errors keep their
    clean prediction): the most frequent wrong class, the share of the top one and top two, and
    the test against a uniform spread of the same per-class error counts."""
    matrix = np.asarray(attack_section(report, label)["confusion"], dtype=np.int64)
    names = report["dataset"]["class_names"]
    rows, total_fooled, top1_sum = [], 0, 0
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
    test = H.concentration_test(matrix, draws=draws)
    top2 = test["top2_share"]
    return {"attack": label, "per_class": rows, "fooled": total_fooled,
            "top1_share": top1_sum / total_fooled if total_fooled else None, "top2_share": top2,
            "null_top2_share": test["null_mean"], "p": test["p"], "test": test["method"],
            "reproduced": top2 is not None and top2 >= THRESHOLDS["concentration_top2"] and test["p"] < ALPHA}


def norm_correlation(norms: Sequence[float], robust: Sequence[float | None]) -> dict:
    """Rule 1c: Spearman's rho of class robustness and classifier-row norm, one-sided permutation p."""
    r = np.array([math.nan if v is None else v for v in robust], dtype=np.float64)
    n = np.asarray(norms, dtype=np.float64)
    keep = ~np.isnan(r)
    varied = keep.sum() > 2 and n[keep].std() > 0 and r[keep].std() > 0
    pearson = float(np.corrcoef(n[keep], r[keep])[0, 1]) if varied else math.nan
    test = H.spearman_test(n[keep], r[keep])
    rho, p = test["rho"], test["p"]
    return {"spearman": rho, "pearson": pearson, "p_value": p,
            "reproduced": not math.isnan(rho) and rho > 0 and p < ALPHA}


def rank_agreement(per_class: dict[str, Sequence[float | None]]) -> dict:
    """Pairwise Spearman of per-class accuracy vectors {name: [C]} and their mean (descriptive;
    `agreement_test` tests it)."""
    names = list(per_class)
    vectors = {k: [math.nan if v is None else v for v in per_class[k]] for k in names}
    pairs = [{"a": a, "b": b, "spearman": spearman(vectors[a], vectors[b])}
             for i, a in enumerate(names) for b in names[i + 1:]]
    values = [p["spearman"] for p in pairs if not math.isnan(p["spearman"])]
    return {"pairs": pairs, "mean": float(np.mean(values)) if values else math.nan,
            "min": min(values) if values else math.nan}


def agreement_test(correct: dict[str, np.ndarray], labels: np.ndarray, num_classes: int, *,
                   permutations: int = 1000) -> dict:
    """Rule 2 on per-image outcomes {attack or model: [N] correct} on the same images: the ranks'
    agreement against the agreement shared images alone give (H.label_permutation_agreement)."""
    names = list(correct)
    test = H.label_permutation_agreement(np.stack([correct[k] for k in names]), labels, num_classes,
                                         permutations=permutations)
    pairs = [{"a": names[x["a"]], "b": names[x["b"]], "spearman": x["spearman"]} for x in test["pairs"]]
    mean = test["mean"]
    return {"pairs": pairs, "mean": mean, "min": test["min"], "p": test["p"],
            "null_mean": test["null_mean"], "test": test["method"],
            "reproduced": not math.isnan(mean) and mean >= THRESHOLDS["consistency"] and test["p"] < ALPHA}


def gain_test(report: dict, correct: dict[str, np.ndarray], labels: np.ndarray) -> dict | None:
    """Rule 3 for the weakest -> strongest attack of the report (by overall robust accuracy), on
    its per-image outcomes {attack: [N] correct} (H.vulnerable_gain_test). None when every attack
    leaves the same number robust."""
    overall = {a["label"]: a["overall"]["robust_acc"] for a in report["attacks"] if a["label"] in correct}
    weakest, strongest = max(overall, key=overall.get), min(overall, key=overall.get)
    if overall[weakest] == overall[strongest]:
        return None
    num_classes = report["dataset"]["num_classes"]
    test = H.vulnerable_gain_test(correct[weakest], correct[strongest], labels, num_classes)
    return {**test, "weaker": weakest, "stronger": strongest,
            "reproduced": test["extra"] > 0 and test["p"] < ALPHA}


def temperature_effect(report: dict, pgd_label: str) -> dict | None:
    """Temperature-PGD sweep against PGD at the same steps and budget, on all swept images
    (descriptive; rule 4 is per_class_temperature's held-out test)."""
    sweep = report["sweeps"].get("temperature")
    if not sweep:
        return None
    values, overall = sweep["values"], sweep["overall_robust_acc"]
    at_one = overall[values.index(1.0)] if 1.0 in values else None
    worst_class = [min(v for v in (r["robust_acc"][k] for r in sweep["per_class"]) if v is not None)
                   for k in range(len(values))]
    strongest = sweep["strongest"]
    pgd = attack_section(report, pgd_label)["overall"]["robust_acc"]
    # descriptive: T is picked on the images it is scored on (per_class_temperature tests it held out)
    lower_in_sample = (at_one is not None and strongest["value"] != 1.0
                       and strongest["robust_acc"] < at_one)
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
            "pgd": pgd, "strongest": strongest, "lower_in_sample": lower_in_sample,
            "stronger_classes": stronger_classes}


def per_class_temperature(correct, labels, index, values: Sequence[float],
                          class_names: Sequence[str], *, draws: int = 10000) -> dict | None:
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
    comparisons = {"per_class_T": paired_comparison(pgd, per_class_t, y, class_names, draws=draws),
                   "global_T": paired_comparison(pgd, correct[k_global, test], y, class_names, draws=draws)}
    out = {"values": values, "chosen": chosen, "global_value": values[k_global],
           "selection_images": int(len(select)), "test_images": int(len(test))}
    for key, cmp in comparisons.items():
        mean = cmp["mean"]
        out[key] = {"pgd": mean["a"], "robust_acc": mean["b"], "diff": mean["diff"],
                    "ci_low": mean["ci_low"], "ci_high": mean["ci_high"], "p": mean["p"],
                    "worst_pgd": cmp["worst"]["a"], "worst": cmp["worst"]["b"], "worst_p": cmp["worst"]["p"],
                    "reproduced": mean["diff"] < 0 and mean["p"] < ALPHA}
    out["reproduced"] = out["per_class_T"]["reproduced"]
    return out


def defense_verdict(best: str, first_seed: dict[str, dict], held_out: Sequence[tuple], *,
                    draws: int = 10000) -> dict:
    """Rule 5. first_seed: {defense: paired_comparison against its baseline at the first seed};
    best: the defense chosen on them (highest worst-class accuracy). held_out: per further seed,
    (baseline correct, defense correct, labels, num_classes) of the chosen defense on the same
    images. With held-out seeds the verdict is theirs alone (the seed the choice was made on does
    not count); without, every defense's first-seed p is Holm-corrected over the defenses."""
    names = list(first_seed)
    p_first = [first_seed[n]["worst"]["p"] for n in names]
    holm_first = dict(zip(names, holm(p_first))) if names else {}
    out = {"best": best, "compared": len(names), "holm_first_seed": holm_first}
    if held_out:
        test = combined_worst_test(list(held_out), draws=draws)
        out.update(kind="held-out seeds", seeds=test["seeds"], diffs=test["diffs"],
                   gain_mean=test["mean_diff"], p=test["p"], test=test["method"],
                   reproduced=test["mean_diff"] > 0 and test["p"] < ALPHA)
    else:
        gain = first_seed[best]["worst"]["diff"]
        out.update(kind="first seed, Holm over the defenses", seeds=1, diffs=[gain], gain_mean=gain,
                   p=holm_first[best], test="paired randomisation test of the worst-class difference, "
                   f"Holm-corrected over the {len(names)} defenses compared",
                   reproduced=gain > 0 and holm_first[best] < ALPHA)
    out["wording"] = "significant" if out["reproduced"] else "not significant"
    return out


def family(tests: Sequence[tuple[str, float, bool]]) -> dict:
    """The findings of one study as a family: [(finding, p, reproduced)] -> Holm-adjusted p-values,
    how many verdicts survive them, and the Bonferroni bound on the chance that at least one
    "reproduced" of the family is false when every finding is false."""
    valid = [(name, p, ok) for name, p, ok in tests if p is not None and not math.isnan(p)]
    adjusted = holm([p for _, p, _ in valid]) if valid else []
    rows = [{"finding": name, "p": p, "p_holm": q, "reproduced": ok, "survives_holm": ok and q < ALPHA}
            for (name, p, ok), q in zip(valid, adjusted)]
    return {"tests": len(rows), "rows": rows, "reproduced": sum(r["reproduced"] for r in rows),
            "survive_holm": sum(r["survives_holm"] for r in rows),
            "fwer_bound": min(1.0, ALPHA * len(rows))}


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
    agreement = ("agrees" if p < ALPHA else
                 "same direction, not significant" if gap > 0 else "disagrees")
    shared = len(set(own_least) & set(least)) + len(set(own_most) & set(most))
    return {"least": own_least, "most": own_most, "groups": groups, "gap": gap, "p": p,
            "overlap": shared, "of": len(least) + len(most), "agreement": agreement,
            "reproduced": agreement == "agrees"}


# ---- power: the smallest effect a run of this size detects in 80% of simulated runs ------------

# The effect each finding's claim implies, in the units of its power simulation. The paper states
# its findings in words ("remarkable discrepancies", "only ... to some specific semantic-similar
# classes", "positively correlated"); these sizes are ours, stated so that "the run had the
# power to see it" has a meaning.
REFERENCE_EFFECTS = {
    "disparity": (0.20, "one class 20 points below the others"),
    "concentration": (0.5, "half of each class's errors on one wrong class"),
    "weight_norm": (0.7, "a correlation of 0.7 between robustness and weight norm"),
    "consistency": (0.4, "class accuracies spread over 40 points, the same under every attack"),
    "gains": (0.2, "the stronger attack fools 20 points more of the robust images of the less robust half"),
    "temperature": (0.02, "2 points lower robust accuracy than PGD"),
    "defense": (0.10, "10 points higher worst-class robust accuracy"),
}
EFFECT_GRIDS = {
    "disparity": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6),
    "concentration": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
    "weight_norm": (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "consistency": (0.1, 0.2, 0.3, 0.4, 0.6, 0.8),
    "gains": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6),
    "temperature": (0.005, 0.01, 0.02, 0.03, 0.05, 0.08),
    "defense": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4),
}


def smallest_detectable(finding: str, simulate, decide, *, draws: int = POWER_DRAWS) -> dict:
    """{effect, power_at_reference, reference, had_power}: the smallest effect of EFFECT_GRIDS
    detected in >= POWER of `draws` simulated runs (simulate(rng, effect) -> data, decide(data) ->
    bool, at this run's sizes), and the detection rate of the reference effect."""
    def rate(effect):
        return H.detection_rate(lambda rng: simulate(rng, effect), decide, draws=draws, seed=0)

    reference, words = REFERENCE_EFFECTS[finding]
    at_reference = rate(reference)
    return {"effect": H.minimum_detectable_effect(rate, EFFECT_GRIDS[finding]), "reference": reference,
            "reference_words": words, "power_at_reference": at_reference,
            "had_power": at_reference >= POWER}


def disparity_power(report: dict, label: str) -> dict:
    records = [r for r in attack_section(report, label)["per_class"] if r["n"]]
    n = np.array([r["n"] for r in records])
    rate = sum(r["robust"] for r in records) / n.sum()
    rate = min(max(rate, 0.3), 0.9)  # a gap below an all-robust or all-fooled pool is not measurable
    return smallest_detectable(
        "disparity", lambda rng, gap: H.simulate_disparity(rng, n, rate, gap),
        lambda robust: _disparity_decision(robust, n))


def _disparity_decision(robust, n) -> bool:
    acc = robust / n
    return acc.max() - acc.min() >= THRESHOLDS["disparity_gap"] and \
        H.homogeneity_test(robust, n, draws=200)["p"] < ALPHA


def concentration_power(concentration: dict) -> dict:
    fooled = np.array([r["fooled"] for r in concentration["per_class"]])

    def decide(matrix):
        t = H.concentration_test(matrix, draws=200)
        return t["top2_share"] is not None and t["top2_share"] >= THRESHOLDS["concentration_top2"] and t["p"] < ALPHA
    return smallest_detectable("concentration", lambda rng, q: H.simulate_concentration(rng, fooled, q), decide)


def weight_norm_power(num_classes: int) -> dict:
    def decide(data):
        t = H.spearman_test(*data, permutations=500)
        return t["rho"] > 0 and t["p"] < ALPHA
    return smallest_detectable("weight_norm", lambda rng, rho: H.simulate_correlation(rng, num_classes, rho), decide)


def agreement_power(n_per_class: int, attacks: int, rate: float, num_classes: int) -> dict:
    rate = min(max(rate, 0.3), 0.7)

    def decide(data):
        t = H.label_permutation_agreement(*data, num_classes, permutations=100)
        return t["mean"] >= THRESHOLDS["consistency"] and t["p"] < ALPHA
    return smallest_detectable("consistency", lambda rng, spread: H.simulate_agreement(
        rng, n_per_class, spread, attacks=attacks, rate=rate, num_classes=num_classes), decide, draws=100)


def gain_power(gain: dict, n_per_class: int) -> dict:
    weak = np.array([0.0 if r["weak_robust_acc"] is None else r["weak_robust_acc"] for r in gain["per_class"]])
    base = min(max(gain["extra"] / max(gain.get("weak_robust", 1), 1), 0.05), 0.5)

    def simulate(rng, diff):
        return H.simulate_gain(rng, n_per_class, weak, min(base + diff, 1.0), base)

    def decide(data):
        t = H.vulnerable_gain_test(*data, len(weak), permutations=200)
        return t["p"] < ALPHA
    return smallest_detectable("gains", simulate, decide)


def paired_difference_power(finding: str, n_per_class: int, rate: float, *, num_classes: int = 10,
                            seeds: int = 1) -> dict:
    """Power of the paired tests of rules 4 and 5 at n_per_class images per class.
    "temperature": B fools `effect` more of all images than A (class-mean difference, one
    randomisation test); "defense": B raises A's worst class (at `rate`, the others 30 points
    higher) by `effect`, combined over `seeds` held-out seeds."""
    from cwr_fast.classwise.paired import paired_comparison

    rate = min(max(rate, 0.2), 0.8)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    if finding == "temperature":
        def simulate(rng, effect):
            a = rng.random(len(labels)) < rate
            return a, a & (rng.random(len(labels)) >= effect / rate)

        def decide(data):
            mean = paired_comparison(*data, labels, [str(c) for c in range(num_classes)], draws=200)["mean"]
            return mean["diff"] < 0 and mean["p"] < ALPHA
    else:
        rates = np.where(labels == 0, rate, min(rate + 0.3, 1.0))

        def simulate(rng, effect):
            pairs = []
            for _ in range(seeds):
                a = rng.random(len(labels)) < rates
                lift = (labels == 0) & ~a & (rng.random(len(labels)) < effect / max(1 - rate, 1e-9))
                pairs.append((a, a | lift, labels, num_classes))
            return pairs

        def decide(pairs):
            test = combined_worst_test(pairs, draws=200)
            return test["mean_diff"] > 0 and test["p"] < ALPHA
    return smallest_detectable(finding, simulate, decide)


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
