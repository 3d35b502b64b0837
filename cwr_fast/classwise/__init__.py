"""Class-wise robustness evaluation: the engine (counts, all-reducible) and the analysis (report).

    attacks = build_attacks("fgsm,pgd-20,cw-30", model, eps=0.3, track="any")
    counts = evaluate_classwise(model, loader, num_classes=10, attacks=attacks)
    counts.robust_accuracy("pgd-20")                     # [C] per-class robust accuracy
    report = build_report(counts, class_names, attacks=attacks)
    cwr_fast.report.write_report(report, "out/")
"""

from cwr_fast.classwise.analysis import (SCHEMA, SCHEMA_VERSION, attack_sections, build_report,
                                         gain_attribution, rank_agreement, sanity_flags,
                                         sweep_section, worst_case_section)
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.classwise.stats import class_summary, rankdata, spearman, wilson_interval

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ClasswiseCounts", "attack_sections", "build_report",
           "class_summary", "evaluate_classwise", "gain_attribution", "rank_agreement", "rankdata",
           "sanity_flags", "spearman", "sweep_section", "wilson_interval", "worst_case_section"]
