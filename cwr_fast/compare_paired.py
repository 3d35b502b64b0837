"""`python -m cwr_fast.compare A B --paired`: is B really more robust than A, class by class?

Both runs must have been evaluated on the same images; their per-image outcomes (outcomes.npz in
every report directory, or the file of `evaluate --save-adv`) are matched by image index, and
for clean accuracy, each attack both ran and the worst case (when both ran the same attacks) the
paired statistics of cwr_fast.classwise.paired are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cwr_fast.classwise.outcomes import CLEAN, ROBUST_FILE, WORST_CASE, RobustBits
from cwr_fast.classwise.paired import paired_comparison
from cwr_fast.errors import UsageError
from cwr_fast.report import pct, table


class PairedError(UsageError):
    """The two runs cannot be compared image by image (exit status 2; a ValueError too)."""


def outcomes_path(run: dict) -> Path:
    """Where a run's per-image outcomes are (a run of cwr_fast.compare.load_run: {name,
    report_path, report (a Report), ...})."""
    path = Path(run["report_path"])
    return path if path.suffix == ".npz" else path.parent / ROBUST_FILE


def load_outcomes(run: dict) -> RobustBits:
    path = outcomes_path(run)
    if not path.is_file():
        raise PairedError(f"{run['name']} has no per-image outcomes ({path} is missing): reports "
                          "written before cwr_fast 0.1 lack them; evaluate the model again")
    try:
        return RobustBits.load(path)
    except ValueError as err:  # damaged, truncated or foreign: one line naming the file
        raise PairedError(str(err)) from None


def aligned(a: RobustBits, b: RobustBits, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(order of A's images, order of B's) so that both list the same images in the same order."""
    if len(a.index) != len(b.index) or not np.array_equal(np.sort(a.index), np.sort(b.index)):
        shared = len(np.intersect1d(a.index, b.index))
        raise PairedError(f"--paired needs both runs evaluated on the same images: {names[0]} has "
                          f"{len(a.index)}, {names[1]} {len(b.index)}, {shared} in common "
                          "(same dataset, split, --limit and data order)")
    order_a, order_b = np.argsort(a.index, kind="stable"), np.argsort(b.index, kind="stable")
    if len(np.unique(a.index)) != len(a.index):
        raise PairedError(f"{names[0]}'s outcomes list an image index twice")
    if not np.array_equal(a.label[order_a], b.label[order_b]):
        raise PairedError("the two runs give the same images different labels")
    return order_a, order_b


def paired_sections(runs: Sequence[dict], attacks: Sequence[str] | None = None,
                    draws: int = 10000, seed: int = 0) -> dict:
    """{a, b, accuracies compared, note, sections [{accuracy, ...paired_comparison}]}."""
    if len(runs) != 2:
        raise PairedError(f"--paired compares exactly two runs, got {len(runs)}")
    names = [r["name"] for r in runs]
    a, b = (load_outcomes(r) for r in runs)
    order_a, order_b = aligned(a, b, names)
    shared = [label for label in a.attack_names if label in b.attack_names]
    if attacks is not None:
        missing = [label for label in attacks if label not in shared]
        if missing:
            raise PairedError(f"--paired: {', '.join(missing)} not run on both ({names[0]}: "
                              f"{', '.join(a.attack_names)}; {names[1]}: {', '.join(b.attack_names)})")
        shared = list(attacks)
    accuracies = [CLEAN] + shared
    note = None
    if a.attack_names == b.attack_names:
        accuracies.append(WORST_CASE)
    else:
        note = "the worst case is left out: the two runs ran different attacks"
    class_names = runs[0]["report"].class_names
    labels = a.label[order_a]
    sections = [{"accuracy": acc, **paired_comparison(a.correct(acc)[order_a], b.correct(acc)[order_b],
                                                       labels, class_names, draws=draws, seed=seed)}
                for acc in accuracies]
    return {"a": names[0], "b": names[1], "accuracies": accuracies, "note": note, "sections": sections}


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _diff(d: dict) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]" + (
        " *" if d["significant"] else "")


def paired_markdown(paired: dict) -> str:
    a, b = paired["a"], paired["b"]
    lines = [f"## Paired: {b} − {a}, on the same images", ""]
    if paired["note"]:
        lines += [f"Note: {paired['note']}.", ""]
    for s in paired["sections"]:
        level = round(100 * s["level"])
        rows = [[r["class_name"], str(r["n"]), pct(r["acc_a"]), pct(r["acc_b"]), _diff(r),
                 f"{r['only_a']} / {r['only_b']}", _p(r["p"]), _p(r["p_holm"])] for r in s["per_class"]]
        m, w = s["mean"], s["worst"]
        rows.append(["mean over classes", str(s["n"]), pct(m["a"]), pct(m["b"]), _diff(m), "", _p(m["p"]), ""])
        rows.append([f"worst class ({w['class_a']} / {w['class_b']})", "", pct(w["a"]), pct(w["b"]),
                     _diff(w), "", _p(w["p"]), ""])
        lines += [f"### {s['accuracy']}", ""]
        lines += table(["class", "n", f"{a} (%)", f"{b} (%)", f"{b} − {a} (points) [{level}% CI]",
                        f"only {a} / only {b} right", "p", "Holm p"], rows)
        significant = [r["class_name"] for r in s["per_class"] if r["significant"]]
        lines += ["", f"Significant at {100 - level}% (Holm over classes): "
                      + (", ".join(significant) if significant else "no class")
                      + f"; mean {'significant' if m['significant'] else 'not significant'} (p {_p(m['p'])}), "
                      f"worst class {'significant' if w['significant'] else 'not significant'} (p {_p(w['p'])}).", ""]
    lines += [f"Method: {paired['sections'][0]['method']}; {paired['sections'][0]['draws']} draws, "
              f"seed {paired['sections'][0]['seed']}. * = significant.", ""]
    return "\n".join(lines)
