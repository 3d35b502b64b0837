"""From counts to the class-wise robustness report (a `report_data.Report`): per-class records with
confidence intervals, summaries, worst case over attacks, rank agreement, gain attribution,
sweeps and sanity flags. Pure functions of `ClasswiseCounts`; the report of per-image outcomes
(`report_from_outcomes`) and what their file records (`describe_outcomes`). The typed parts
(`report_data`) carry these fields as attributes (`class` as `class_index`); `Report.to_json()` is
report.json.

Report schema, version 3 (`report.schema == "cwr_fast.classwise_report"`; version 3 adds
`summary.worst_stats` and `methods`, version 2 `autoattack`; report_data reads every version).
Accuracies are fractions in [0, 1]; null where a class has no images. Class indices are ints,
names strings.

    schema, schema_version, created (ISO time), software {cwr_fast, torch, ops_backend}
    config            what was run (dataset, split, model, eps, attacks, batch_size, amp, ...)
    dataset           {name, split, num_classes, class_names, num_images}
    clean             {accuracy, ci_low, ci_high, per_class: [record], summary, confusion}
    attacks: [        one per attack, in the order given
      {label, attack {name, params}, overall {n, robust, robust_acc, clean_acc, ci_low, ci_high},
       per_class: [record], summary, confusion [C][C] (row: true class, column: adversarial
       prediction; misclassified clean images keep their clean prediction), seconds, images_per_s}]
    worst_case        {attacks, overall, per_class, summary, confusion}: robust only if every
                      attack fails (AutoAttack's rule); column = first attack that fools
    rank_agreement    [{a, b, spearman}] for every pair of attacks (per-class robust accuracy)
    gains: [          for each pair weaker -> stronger (by overall robust accuracy)
      {weaker, stronger, extra_fooled, per_class: [{class, class_name, count, share, rate}],
       vulnerable_classes, share_from_vulnerable_half, gain_rate_vulnerable, gain_rate_others,
       spearman_gain_vs_robustness}]
    sweeps            {temperature: sweep | null, eps: sweep | null}, sweep =
                      {parameter, attack, values, labels, overall_robust_acc [per value],
                       per_class: [{class, class_name, robust_acc [per value], strongest}],
                       strongest {value, robust_acc}, rank_agreement}
    flags             [{code, severity, attacks, message}] sanity checks against gradient masking,
                      with the reference AutoAttack's automatic checks (cwr_fast.attacks.checks:
                      randomised_model, softmax_output, dynamic_model, zero_gradients,
                      fewer_target_classes, square_stronger), then those given to build_report
    autoattack: [     one per ensemble attack (aa), members run in order on what is still robust
      {label, members [names], member_seconds {member: seconds} (null if not timed),
       overall {member: images fooled first by it, robust, clean_wrong},
       per_class: [{class, class_name, n, clean_wrong, broken_first_by {member: count}, robust,
                    robust_acc, robust_acc_after [after each member, cumulative],
                    last_needed: the last member that fooled an image of the class (the member
                    its robust accuracy needed), or null}],
       worst_class {class, class_name, robust_acc, last_needed}}]

    methods           {worst_stats: how summary.worst_stats is computed, paired_difference: the
                      paired tests and intervals used against another report (classwise.paired)}, in words

    summary = {mean, std, gap, worst {class, class_name, value}, best {...}, worst_stats
               {estimate, level, ci_low, ci_high (simultaneous interval of the lowest class
               accuracy), bootstrap_ci_low, bootstrap_ci_high, worst_frequency [per class: share
               of bootstrap draws in which it is the worst], draws, seed}} (stats.py)
    record = {class, class_name, n, clean_correct, clean_acc, robust, robust_acc, ci_low, ci_high}
             (the CI is the 95% Wilson interval of robust_acc; for `clean`, of clean_acc)
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cwr_fast.attacks.checks import square_success_flag
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.classwise.paired import PAIRED_METHOD
from cwr_fast.classwise.report_data import (SCHEMA, SCHEMA_VERSION, AttackDescription, AttackSection,
                                            AutoAttackClass, AutoAttackSection, AutoAttackWorstClass,
                                            CleanSection, ClassRecord, ClassValue, Flag, Gain,
                                            GainClass, Methods, Overall, RankAgreement, Report,
                                            ReportDataset, Software, Summary, Sweep, SweepClass,
                                            Sweeps, SweepStrongest, WorstCaseSection, WorstStats)
from cwr_fast.classwise.stats import (WORST_CLASS_METHOD, by_robustness, class_summary, spearman,
                                      wilson_interval, worst_class_statistics)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Report", "attack_sections", "autoattack_sections",
           "build_report", "clean_accuracy_flags", "describe_attack", "describe_outcomes",
           "gain_attribution", "model_flags", "rank_agreement", "report_from_outcomes",
           "sanity_flags", "summary_of", "sweep_section", "worst_case_section"]


def _num(value) -> float | None:
    """JSON-safe float: NaN -> None."""
    value = float(value)
    return None if math.isnan(value) else value


def _records(correct_or_robust: np.ndarray, n: np.ndarray, clean_correct: np.ndarray,
             class_names: Sequence[str], *, robust: bool = True) -> list[ClassRecord]:
    """Per-class records; robust=False (the clean section) leaves the robust fields out."""
    low, high = wilson_interval(correct_or_robust, n)
    records = []
    for c, name in enumerate(class_names):
        has = n[c] > 0
        record = ClassRecord(
            class_index=c, class_name=name, n=int(n[c]), clean_correct=int(clean_correct[c]),
            clean_acc=_num(clean_correct[c] / n[c]) if has else None,
            ci_low=_num(low[c]), ci_high=_num(high[c]))
        if robust:
            record.robust = int(correct_or_robust[c])
            record.robust_acc = _num(correct_or_robust[c] / n[c]) if has else None
        records.append(record)
    return records


def _overall(k: int, n: int, clean_correct: int) -> Overall:
    low, high = wilson_interval(k, n)
    return Overall(n=n, robust=k, robust_acc=_num(k / n) if n else None,
                   clean_acc=_num(clean_correct / n) if n else None,
                   ci_low=_num(low), ci_high=_num(high))


def _acc(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / np.maximum(n, 1), np.nan)


def summary_of(k: np.ndarray, n: np.ndarray, class_names: Sequence[str]) -> Summary:
    """The typed summary of k / n: stats.class_summary (the one per-class summary), with the worst
    class's uncertainty (stats.worst_class_statistics)."""
    numbers = class_summary(_acc(k, n), class_names)
    stats = worst_class_statistics(k, n)
    return Summary(mean=numbers["mean"], std=numbers["std"], gap=numbers["gap"],
                   worst=None if numbers["worst"] is None else ClassValue(
                       class_index=numbers["worst"]["class"], class_name=numbers["worst"]["class_name"],
                       value=numbers["worst"]["value"]),
                   best=None if numbers["best"] is None else ClassValue(
                       class_index=numbers["best"]["class"], class_name=numbers["best"]["class_name"],
                       value=numbers["best"]["value"]),
                   worst_stats=None if stats is None else WorstStats(**stats))


def describe_attack(attack) -> AttackDescription:
    """{name, params} of an Attack object or of a dict (or AttackDescription) already in that form."""
    if isinstance(attack, Mapping):
        return AttackDescription(name=attack.get("name"), params=dict(attack.get("params", {})))
    params = {k: (float(v) if isinstance(v, torch.Tensor) and v.dim() == 0 else v)
              for k, v in attack.params().items()}
    params = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    if getattr(attack, "norm", None) is not None:
        params.setdefault("norm", attack.norm)
    return AttackDescription(name=getattr(attack, "name", type(attack).__name__), params=params)


def attack_sections(counts: ClasswiseCounts, class_names: Sequence[str],
                    attacks: Mapping[str, object] | None = None) -> list[AttackSection]:
    n = counts.n.numpy()
    clean_correct = counts.clean_correct.numpy()
    sections = []
    for k, label in enumerate(counts.attack_names):
        robust = counts.adv_confusion[k].diagonal().numpy()
        seconds = float(counts.seconds[k])
        sections.append(AttackSection(
            label=label,
            attack=describe_attack(attacks[label]) if attacks and label in attacks else None,
            overall=_overall(int(robust.sum()), int(n.sum()), int(clean_correct.sum())),
            per_class=_records(robust, n, clean_correct, class_names),
            summary=summary_of(robust, n, class_names),
            confusion=counts.adv_confusion[k].tolist(),
            seconds=seconds,
            images_per_s=_num(n.sum() / seconds) if seconds > 0 else None))
    return sections


def rank_agreement(counts: ClasswiseCounts) -> list[RankAgreement]:
    """Spearman correlation of per-class robust accuracies for every pair of attacks."""
    acc = {a: counts.robust_accuracy(a).numpy() for a in counts.attack_names}
    return [RankAgreement(a=a, b=b, spearman=_num(spearman(acc[a], acc[b])))
            for a, b in itertools.combinations(counts.attack_names, 2)]


def gain_attribution(counts: ClasswiseCounts, class_names: Sequence[str]) -> list[Gain]:
    """For each pair weaker -> stronger attack (strictly lower overall robust accuracy): the images
    the weaker attack leaves robust but the stronger one fools, by class, as counts and as rates
    (of the images the weaker attack leaves robust in the class). `vulnerable_classes` are the
    lower half of the classes by robust accuracy under the weaker attack (floor(C/2) classes; ties
    at the boundary go by class index, so a median of 0% still gives a half); the paper finds the
    stronger attack gains more there: gain_rate_vulnerable above gain_rate_others, and
    spearman_gain_vs_robustness < 0 says the same with ranks. Descriptive: the findings' rule 3
    tests it on per-image outcomes (cwr_fast.classwise.hypothesis.vulnerable_gain_test)."""
    robust_total = {a: int(counts.robust(a).sum()) for a in counts.attack_names}
    return [_gain(counts, i, j, class_names)
            for i, j in itertools.permutations(range(len(counts.attack_names)), 2)
            if robust_total[counts.attack_names[i]] > robust_total[counts.attack_names[j]]]


def _gain(counts: ClasswiseCounts, i: int, j: int, class_names: Sequence[str]) -> Gain:
    """What attack j gains over attack i (gain_attribution)."""
    n = counts.n.numpy()
    gain = counts.gain[i, j].numpy()
    total = int(gain.sum())
    weak_robust = counts.robust(counts.attack_names[i]).numpy()
    weak_acc = _acc(weak_robust, n)
    ordered = by_robustness(weak_acc)
    vulnerable = sorted(int(c) for c in ordered[:len(ordered) // 2])
    others = sorted(int(c) for c in ordered[len(ordered) // 2:])
    rate = _acc(gain, weak_robust)

    def pooled(classes):
        robust = int(weak_robust[classes].sum())
        return _num(gain[classes].sum() / robust) if robust else None
    return Gain(
        weaker=counts.attack_names[i], stronger=counts.attack_names[j], extra_fooled=total,
        per_class=[GainClass(class_index=c, class_name=class_names[c], count=int(gain[c]),
                             share=_num(gain[c] / total) if total else None, rate=_num(rate[c]))
                   for c in range(len(class_names))],
        vulnerable_classes=vulnerable,
        share_from_vulnerable_half=_num(gain[vulnerable].sum() / total) if total else None,
        gain_rate_vulnerable=pooled(vulnerable), gain_rate_others=pooled(others),
        spearman_gain_vs_robustness=_num(spearman(rate, weak_acc)))


def worst_case_section(counts: ClasswiseCounts, class_names: Sequence[str]) -> WorstCaseSection:
    n = counts.n.numpy()
    robust = counts.worst_robust.numpy()
    return WorstCaseSection(
        attacks=list(counts.attack_names),
        overall=_overall(int(robust.sum()), int(n.sum()), int(counts.clean_correct.sum())),
        per_class=_records(robust, n, counts.clean_correct.numpy(), class_names),
        summary=summary_of(robust, n, class_names),
        confusion=counts.worst_confusion.tolist())


def autoattack_sections(counts: ClasswiseCounts, class_names: Sequence[str]) -> list[AutoAttackSection]:
    """The per-class, per-member breakdown of every ensemble attack (schema above)."""
    n = counts.n.numpy()
    clean_correct = counts.clean_correct.numpy()
    sections = []
    for label, names in counts.members.items():
        broken = counts.member_broken[label].numpy()                    # [M, C]
        robust = counts.robust(label).numpy()
        per_class = [_autoattack_class(c, name, names, broken[:, c], n[c], clean_correct[c], robust[c])
                     for c, name in enumerate(class_names)]
        valid = [r for r in per_class if r.robust_acc is not None]
        worst = min(valid, key=lambda r: r.robust_acc) if valid else None
        sections.append(AutoAttackSection(
            label=label, members=list(names),
            member_seconds=counts.meta.get("member_seconds", {}).get(label),
            overall={**{m: int(k) for m, k in zip(names, broken.sum(axis=1))},
                     "robust": int(robust.sum()), "clean_wrong": int((n - clean_correct).sum())},
            per_class=per_class,
            worst_class=None if worst is None else AutoAttackWorstClass(
                class_index=worst.class_index, class_name=worst.class_name,
                robust_acc=worst.robust_acc, last_needed=worst.last_needed)))
    return sections


def _autoattack_class(c: int, name: str, members: Sequence[str], fooled: np.ndarray, n: int,
                      clean_correct: int, robust: int) -> AutoAttackClass:
    """One class of an ensemble's breakdown: fooled[m] images member m fooled first."""
    needed = [m for m in range(len(members)) if fooled[m] > 0]
    after = clean_correct - np.cumsum(fooled)
    return AutoAttackClass(
        class_index=c, class_name=name, n=int(n), clean_wrong=int(n - clean_correct),
        broken_first_by={m: int(k) for m, k in zip(members, fooled)},
        robust=int(robust), robust_acc=_num(robust / n) if n else None,
        robust_acc_after=[_num(a / n) if n else None for a in after],
        last_needed=members[needed[-1]] if needed else None)


def sweep_section(counts: ClasswiseCounts, parameter: str, values: Sequence[float], attack: str,
                  class_names: Sequence[str]) -> Sweep:
    """Per-class robust accuracy for each value of a swept parameter (attack k used values[k]).
    'strongest' is the value with the lowest overall robust accuracy (first one on ties)."""
    if len(values) != len(counts.attack_names):
        raise ValueError("one sweep value per evaluated attack expected")
    n = counts.n.numpy()
    total = max(int(n.sum()), 1)
    per_value = np.stack([counts.adv_confusion[k].diagonal().numpy() for k in range(len(values))])
    overall = per_value.sum(axis=1) / total
    per_class = []
    for c, name in enumerate(class_names):
        accs = _acc(per_value[:, c], np.full(len(values), n[c]))
        strongest = None if n[c] == 0 else float(values[int(np.argmin(per_value[:, c]))])
        per_class.append(SweepClass(class_index=c, class_name=name, n=int(n[c]),
                                    robust_acc=[_num(a) for a in accs], strongest=strongest))
    best = int(np.argmin(overall))
    return Sweep(parameter=parameter, attack=attack, values=[float(v) for v in values],
                 labels=list(counts.attack_names),
                 overall_robust_acc=[float(v) for v in overall], per_class=per_class,
                 strongest=SweepStrongest(value=float(values[best]), robust_acc=float(overall[best])),
                 rank_agreement=rank_agreement(counts))


def _rises(values: Sequence[float], robust: Sequence[int]) -> list[tuple[int, int]]:
    """Index pairs (i, j), values[i] < values[j], where robust[j] > robust[i] (consecutive in order)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return [(i, j) for i, j in zip(order, order[1:]) if values[i] < values[j] and robust[j] > robust[i]]


def sanity_flags(counts: ClasswiseCounts, attacks: Mapping[str, object] | None = None,
                 eps_sweep: Sweep | Mapping | None = None) -> list[Flag]:
    """Checks of the model (finite weights and logits, more than one predicted class) and against
    gradient masking: robust accuracy must not exceed clean accuracy, must not rise with eps or
    steps (attacks otherwise alike), and PGD must not be weaker than FGSM at the same eps."""
    flags = model_flags(counts)
    for k, label in enumerate(counts.attack_names):
        above = (counts.adv_confusion[k].diagonal() > counts.clean_correct).nonzero().flatten().tolist()
        if above:
            flags.append(Flag(code="robust_above_clean", severity="error", attacks=[label],
                              message=f"{label}: robust accuracy exceeds clean accuracy for classes {above}"))
    described = {label: describe_attack(a) for label, a in (attacks or {}).items()}
    robust = {label: int(counts.robust(label).sum()) for label in counts.attack_names}
    percent = {label: 100.0 * k / max(counts.total, 1) for label, k in robust.items()}
    flags += _fgsm_flags(described, robust, percent)
    for varied in ("steps", "eps"):
        flags += _rising_flags(described, robust, percent, varied)
    flags += fast_mode_flags(counts, described)
    for label, names in counts.members.items():  # the reference's check, after every member ran
        fooled = counts.member_broken[label].sum(dim=1).tolist()
        flag = square_success_flag(counts.total, int(counts.clean_correct.sum()), list(zip(names, fooled)))
        if flag is not None:
            flags.append(Flag.from_json({**flag, "attacks": [label],
                                         "message": f"{label}: {flag['message']}"}))
    if eps_sweep is not None:
        flags += _eps_sweep_flags(eps_sweep if isinstance(eps_sweep, Sweep) else Sweep.from_json(eps_sweep))
    return flags


FAST_MODES = ("malt",)  # attacks (or AutoAttack versions) that stand in for aa at a fraction of its time


def fast_mode_flags(counts: ClasswiseCounts, described: dict[str, AttackDescription]) -> list[Flag]:
    """Where a fast stand-in for AutoAttack (MALT, aa:version=malt) ran beside AutoAttack standard
    at the same eps and norm: how many of the images aa fooled it missed, per class (severity
    info when none, else warning)."""
    def key(d: AttackDescription):
        return d.params.get("eps"), d.params.get("norm")

    standard = [lab for lab, d in described.items() if d.name == "aa" and d.params.get("version") == "standard"]
    fast = [lab for lab, d in described.items()
            if d.name in FAST_MODES or (d.name == "aa" and d.params.get("version") in FAST_MODES)]
    flags = []
    for f, a in itertools.product(fast, standard):
        if key(described[f]) != key(described[a]):
            continue
        i, j = counts.index(f), counts.index(a)
        missed = counts.gain[i, j]  # [C] robust to the fast mode, fooled by aa
        fooled_by_aa = int((counts.clean_correct - counts.robust(a)).sum())
        by_class = ", ".join(f"class {c}: {int(k)}" for c, k in enumerate(missed.tolist()) if k)
        flags.append(Flag(
            code="fast_mode_agreement", severity="warning" if int(missed.sum()) else "info",
            attacks=[f, a],
            message=f"{f} missed {int(missed.sum())} of the {fooled_by_aa} images {a} fooled"
                    + (f" ({by_class}); keep {a} for the headline numbers" if by_class else "")
                    + f", and fooled {int(counts.gain[j, i].sum())} that {a} did not"))
    return flags


def _fgsm_flags(described: dict[str, AttackDescription], robust: dict[str, int],
                percent: dict[str, float]) -> list[Flag]:
    """PGD weaker than FGSM at the same eps (untargeted, temperature 1)."""
    fgsm = [lab for lab, d in described.items() if d.name == "fgsm" and not d.params.get("target")]
    pgd = [lab for lab, d in described.items() if d.name in ("pgd", "tpgd")
           and d.params.get("temperature", 1.0) == 1.0 and not d.params.get("target")]
    return [Flag(code="pgd_weaker_than_fgsm", severity="warning", attacks=[f, p],
                 message=f"{p} ({percent[p]:.2f}%) is weaker than {f} ({percent[f]:.2f}%) at the "
                         "same eps: a sign of gradient masking")
            for f, p in itertools.product(fgsm, pgd)
            if _same(described[f].params.get("eps"), described[p].params.get("eps"))
            and robust[p] > robust[f]]


def _rising_flags(described: dict[str, AttackDescription], robust: dict[str, int],
                  percent: dict[str, float], varied: str) -> list[Flag]:
    """Robust accuracy rising with `varied` (steps or eps) among attacks otherwise alike."""
    groups: dict[tuple, list[str]] = {}
    for label, d in described.items():
        if d.name in ("aa", "fgsm") and varied == "steps":
            continue
        if isinstance(d.params.get("eps"), list):
            continue
        key = (d.name,) + tuple(sorted((k, repr(v)) for k, v in d.params.items()
                                       if k not in (varied, "alpha")))
        groups.setdefault(key, []).append(label)
    flags = []
    for labels in groups.values():
        values = [described[lab].params.get(varied) for lab in labels]
        if len(labels) < 2 or any(v is None for v in values):
            continue
        for i, j in _rises(values, [robust[lab] for lab in labels]):
            a, b = labels[i], labels[j]
            flags.append(Flag(code=f"robust_rises_with_{varied}", severity="warning", attacks=[a, b],
                              message=f"robust accuracy rises from {percent[a]:.2f}% ({a}) to "
                                      f"{percent[b]:.2f}% ({b}) with more {varied}"))
    return flags


def _eps_sweep_flags(sweep: Sweep) -> list[Flag]:
    values, overall = sweep.values, sweep.overall_robust_acc
    return [Flag(code="robust_rises_with_eps", severity="warning",
                 attacks=[sweep.labels[i], sweep.labels[j]],
                 message=f"eps sweep: robust accuracy rises from {100 * overall[i]:.2f}% "
                         f"at eps={values[i]:g} to {100 * overall[j]:.2f}% at eps={values[j]:g}")
            for i, j in _rises(values, overall)]


def model_flags(counts: ClasswiseCounts) -> list[Flag]:
    """A model with NaN/inf weights or logits, or one that predicts a single class for every image,
    gives meaningless (often perfect-looking) class-wise numbers: flagged as errors. Then the
    automatic checks the attacks ran on the model (counts.meta["check_flags"], AutoAttack's)."""
    flags = []
    bad_weights = counts.meta.get("nonfinite_weights") or []
    if bad_weights:
        shown = ", ".join(bad_weights[:3]) + (", ..." if len(bad_weights) > 3 else "")
        flags.append(Flag(code="nonfinite_weights", severity="error", attacks=[],
                          message=f"the model has NaN or infinite values in {len(bad_weights)} tensors "
                                  f"({shown}): every number below is meaningless"))
    bad_logits = counts.meta.get("nonfinite_logits", 0)
    if bad_logits:
        flags.append(Flag(code="nonfinite_logits", severity="error", attacks=[],
                          message=f"the model gave NaN or infinite logits on {bad_logits} of "
                                  f"{counts.total} clean images"))
    predicted = counts.clean_confusion.sum(dim=0)
    if counts.num_classes > 1 and counts.total > counts.num_classes and int((predicted > 0).sum()) == 1:
        only = int(predicted.argmax())
        flags.append(Flag(code="single_class_predictions", severity="error", attacks=[],
                          message=f"the model predicts class {only} for every one of the "
                                  f"{counts.total} clean images"))
    for label, found in counts.meta.get("check_flags", {}).items():
        flags += [Flag.from_json({**flag, "attacks": [label], "message": f"{label}: {flag['message']}"})
                  for flag in found]
    return flags


def clean_accuracy_flags(counts: ClasswiseCounts, expected: float | None = None,
                         expected_from: str = "the checkpoint") -> list[Flag]:
    """Weights that load but do not fit the model as it is evaluated (another input normalisation,
    class order or architecture variant) give a low clean accuracy and meaningless robustness:
    a warning when the clean accuracy is below what the checkpoint recorded (outside the 95%
    Wilson interval and at least 5 points lower), or near chance (at most 1.5 / classes).
    Pass them to build_report(..., flags=)."""
    correct, total, c = int(counts.clean_correct.sum()), counts.total, counts.num_classes
    if total == 0:
        return []
    acc = correct / total
    low, high = (float(v[0]) for v in wilson_interval(np.array([correct]), np.array([total])))
    hint = ("the weights may not fit the model as evaluated: check --normalize (TRADES and MART "
            "train on raw [0, 1] inputs: --normalize none), the architecture and the class order")
    if expected is not None and expected - acc >= 0.05 and not low <= expected <= high:
        return [Flag(code="clean_accuracy_below_recorded", severity="warning", attacks=[],
                     message=f"clean accuracy {100 * acc:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}) "
                             f"is far below the {100 * expected:.1f}% that {expected_from} records: {hint}")]
    if c > 1 and acc <= 1.5 / c:
        return [Flag(code="clean_accuracy_near_chance", severity="warning", attacks=[],
                     message=f"clean accuracy {100 * acc:.1f}% is near chance ({100 / c:.1f}% for "
                             f"{c} classes): {hint}")]
    return []


def _same(a, b) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12


def _sweep(sweep: Sweep | Mapping | None) -> Sweep | None:
    return sweep if sweep is None or isinstance(sweep, Sweep) else Sweep.from_json(sweep)


def build_report(counts: ClasswiseCounts, class_names: Sequence[str], *,
                 attacks: Mapping[str, object] | None = None, config: Mapping | None = None,
                 dataset: Mapping | None = None, temperature_sweep: Sweep | None = None,
                 eps_sweep: Sweep | None = None, flags: Sequence[Flag | Mapping] = ()) -> Report:
    """The full report (schema above). attacks: {label: Attack or {name, params}} describes each
    attack (needed for the eps/steps/FGSM sanity checks). Sweeps: outputs of `sweep_section`.
    flags: more flags (e.g. clean_accuracy_flags), listed after the report's own sanity checks."""
    from cwr_fast import __version__, ops

    if len(class_names) != counts.num_classes:
        raise ValueError(f"{len(class_names)} class names for {counts.num_classes} classes")
    class_names = [str(name) for name in class_names]
    temperature_sweep, eps_sweep = _sweep(temperature_sweep), _sweep(eps_sweep)
    return Report(
        schema=SCHEMA,
        schema_version=SCHEMA_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        software=Software(cwr_fast=__version__, torch=torch.__version__, ops_backend=ops.backend()),
        config=dict(config or {}),
        dataset=ReportDataset.from_json({**dict(dataset or {}), "num_classes": counts.num_classes,
                                         "class_names": class_names, "num_images": counts.total}),
        clean=clean_section(counts, class_names),
        attacks=attack_sections(counts, class_names, attacks),
        worst_case=worst_case_section(counts, class_names),
        rank_agreement=rank_agreement(counts),
        gains=gain_attribution(counts, class_names),
        sweeps=Sweeps(temperature=temperature_sweep, eps=eps_sweep),
        flags=sanity_flags(counts, attacks, eps_sweep)
        + [f if isinstance(f, Flag) else Flag.from_json(f) for f in flags],
        autoattack=autoattack_sections(counts, class_names),
        # paired_difference: how `compare --paired` and FINDINGS.md compare this report with another
        methods=Methods(worst_stats=WORST_CLASS_METHOD, paired_difference=PAIRED_METHOD))


def clean_section(counts: ClasswiseCounts, class_names: Sequence[str]) -> CleanSection:
    """Accuracy without attack: its records have no robust fields ('robust' would mislead)."""
    n = counts.n.numpy()
    clean_correct = counts.clean_correct.numpy()
    overall = _overall(int(clean_correct.sum()), int(n.sum()), int(clean_correct.sum()))
    return CleanSection(accuracy=overall.robust_acc, ci_low=overall.ci_low, ci_high=overall.ci_high,
                        per_class=_records(clean_correct, n, clean_correct, class_names, robust=False),
                        summary=summary_of(clean_correct, n, class_names),
                        confusion=counts.clean_confusion.tolist(), seconds=counts.clean_seconds)


# ---- per-image outcomes and the report -------------------------------------------------------------

def describe_outcomes(outcomes, report: Report | Mapping, attacks: Mapping[str, object]):
    """Records in outcomes.meta what their file needs to rebuild `report` (its class names,
    dataset, config and attacks {label: Attack or description}); returns the outcomes."""
    report = report if isinstance(report, Report) else Report.from_json(report)
    outcomes.meta = {"class_names": report.dataset.class_names, "dataset": report.dataset.as_dict(),
                     "config": report.config,
                     "attacks": {label: describe_attack(atk).as_dict() for label, atk in attacks.items()}}
    return outcomes


def report_from_outcomes(outcomes) -> Report:
    """The class-wise report that per-image outcomes (classwise.outcomes.PerImageOutcomes) amount
    to: that of the evaluation that saved them, without timings."""
    class_names = outcomes.meta.get("class_names") or [str(c) for c in range(outcomes.num_classes)]
    return build_report(outcomes.counts(), class_names, attacks=outcomes.meta.get("attacks"),
                        config=outcomes.meta.get("config"), dataset=outcomes.meta.get("dataset"))
