"""The report.json of synthetic counts, as the cwr_fast on the path writes it: how the files beside
this script were made (tests/evaluation/test_report_data.py), from the code of each version:

    git archive <commit> cwr_fast | tar -x -C OLD
    PYTHONPATH=OLD python make_reports.py CLASSES AA | gzip -n > NAME.json.gz

CLASSES: the number of classes; AA: 1 to add an AutoAttack breakdown (schema version 2 on).
Only what every version has is used: ClasswiseCounts, build_report, sweep_section."""

import json
import sys

import torch


def counts_for(classes: int, attacks, members=None, seed: int = 0, per_class: int = 12):
    """Synthetic counts: a class without images, clean errors, each attack fooling more."""
    from cwr_fast.classwise.counts import ClasswiseCounts

    g = torch.Generator().manual_seed(seed)
    c = classes
    counts = ClasswiseCounts(list(attacks), c, **({"members": members} if members else {}))
    clean = torch.zeros(c, c, dtype=torch.int64)
    correct = torch.randint(per_class // 2, per_class + 1, (c,), generator=g)
    clean[range(c), range(c)] = correct
    clean[range(c), [(j + 1) % c for j in range(c)]] = per_class - correct
    clean[min(1, c - 1)] = 0
    counts.clean_confusion = clean
    adv = []
    for i in range(len(attacks)):
        m = clean.clone()
        moved = (m.diagonal().double() * (0.3 + 0.25 * i)).long()
        m[range(c), range(c)] -= moved
        m[range(c), [(j + 2) % c for j in range(c)]] += moved
        adv.append(m)
    counts.adv_confusion = torch.stack(adv)
    robust = counts.adv_confusion.diagonal(dim1=1, dim2=2)
    counts.gain = (robust[:, None, :] - robust[None, :, :]).clamp_min(0)
    counts.worst_confusion = adv[-1].clone()
    counts.seconds = torch.arange(1, len(attacks) + 1, dtype=torch.float64)
    counts.clean_seconds = 0.25
    for label, names in (members or {}).items():
        broken = torch.zeros(len(names), c, dtype=torch.int64)
        broken[0] = counts.clean_confusion.diagonal() - robust[list(attacks).index(label)]
        counts.member_broken[label] = broken
    return counts


def build(classes: int, autoattack: bool, build_report, sweep_section):
    """The report of the synthetic counts (build_report and sweep_section of the code on the path)."""
    attacks = {"fgsm": {"name": "fgsm", "params": {"eps": 0.3}},
               "pgd-10": {"name": "pgd", "params": {"eps": 0.3, "steps": 10, "alpha": 0.1}}}
    members = None
    if autoattack:
        attacks["aa"] = {"name": "aa", "params": {"eps": 0.3}}
        members = {"aa": ["apgd-ce", "apgd-t", "fab-t", "square"]}
    names = [f"class {i}" for i in range(classes)]
    counts = counts_for(classes, attacks, members)
    t_sweep = sweep_section(counts_for(classes, ["T=1", "T=2"], seed=2), "T", [1.0, 2.0], "tpgd-10", names)
    e_sweep = sweep_section(counts_for(classes, ["eps=0.1", "eps=0.3"], seed=3), "eps", [0.1, 0.3],
                            "pgd-10", names)
    return build_report(counts, names, attacks=attacks, config={"dataset": "synthetic", "eps": 0.3},
                        dataset={"name": "synthetic", "split": "test"}, temperature_sweep=t_sweep,
                        eps_sweep=e_sweep)


if __name__ == "__main__":
    from cwr_fast import report as writer
    from cwr_fast.classwise.analysis import build_report, sweep_section

    report = build(int(sys.argv[1]), sys.argv[2] == "1", build_report, sweep_section)
    if hasattr(writer, "report_json"):
        text = writer.report_json(report)
    else:  # before sparse confusion matrices: report.json was json.dumps of the dict
        text = json.dumps(report, indent=1, default=writer._json_default, allow_nan=False) + "\n"
    sys.stdout.write(text)
