"""One call: the class-wise robustness of a model, from Python.

    report = cwr_fast.evaluate_model(model, (x, y), attacks="pgd-20,aa", eps=8/255)
    print(report.summary())            # the one-screen table of python -m cwr_fast.evaluate
    report.robust_accuracy("pgd-20")   # per class
    report.save("reports/my-model")    # report.json, CSVs, report.md, plots (atomically)
    report.outcomes.save("adv.npz")    # per image: predictions, the step/member that broke it
    ClasswiseReport.from_outcomes("adv.npz")   # the report again, from a saved outcomes file

`model` takes images in [0, 1] (normalisation inside it: see models.NormalizedModel); `data` is a
pair of tensors (images [N, C, H, W] in [0, 1], int64 labels [N]) or any iterable of such batches
(a DataLoader, a cwr_fast loader). The evaluation is the CLI's: every attack on every clean-correct
image, class-wise counts, the worst case over attacks, intervals and sanity flags.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from cwr_fast.attacks.spec import build_attacks, parse_attacks
from cwr_fast.classwise.analysis import build_report
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.classwise.outcomes import PerImageOutcomes
from cwr_fast.report import REPORT_KIND, format_summary, markdown, write_report
from cwr_fast.runtime import model_device

__all__ = ["ClasswiseReport", "evaluate_model"]


class ClasswiseReport:
    """The result of evaluate_model: `data` is the report dict (the schema of report.json)."""

    kind = REPORT_KIND

    def __init__(self, data: dict, outcomes: PerImageOutcomes | None = None):
        self.data = data
        self.outcomes = outcomes  # per image (classwise.outcomes): what each attack did to it

    @classmethod
    def from_outcomes(cls, path: str | Path) -> "ClasswiseReport":
        """The report of the per-image outcomes saved by `evaluate --save-adv` or outcomes.save."""
        outcomes = PerImageOutcomes.load(path)
        return cls(outcomes.report(), outcomes)

    @property
    def class_names(self) -> list[str]:
        return self.data["dataset"]["class_names"]

    def per_class(self, attack: str | None = None) -> list[dict]:
        """Per-class records (n, clean and robust accuracy, 95% interval) of one attack, or of the
        worst case over all attacks (default)."""
        if attack is None:
            return self.data["worst_case"]["per_class"]
        for section in self.data["attacks"]:
            if section["label"] == attack:
                return section["per_class"]
        raise KeyError(f"no attack {attack!r}; the report has {[a['label'] for a in self.data['attacks']]}")

    def robust_accuracy(self, attack: str | None = None) -> list[float | None]:
        return [r["robust_acc"] for r in self.per_class(attack)]

    def summary(self) -> str:
        return format_summary(self.data)

    def markdown(self) -> str:
        return markdown(self.data)

    def save(self, out_dir: str | Path, plots: bool = True, overwrite: bool = False) -> Path:
        """Writes the report files into out_dir, as `python -m cwr_fast.evaluate --out` does
        (with outcomes.npz, for `compare --paired`, when the per-image outcomes are known)."""
        return write_report(self.data, out_dir, plots=plots, overwrite=overwrite, outcomes=self.outcomes)

    def __repr__(self) -> str:
        worst = self.data["worst_case"]
        return (f"ClasswiseReport({self.data['dataset']['num_images']} images, "
                f"{len(self.class_names)} classes, worst case {worst.get('accuracy')})")


def _batches(data, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if isinstance(data, Tensor):
        raise TypeError("data must be (images, labels) or an iterable of such batches, not one tensor")
    return list(data) if iter(data) is data else data  # a one-shot iterator: keep its first batch


def _num_classes(model: nn.Module, batches, class_names, info) -> int:
    if class_names is not None:
        return len(class_names)
    if info is not None:
        return info.num_classes
    x, _ = next(iter(batches))
    with torch.no_grad():
        return int(model(x[:1].to(model_device(model))).shape[1])


def evaluate_model(model: nn.Module, data, attacks: str = "fgsm,pgd-20,cw-30", eps: float = 8 / 255,
                   *, eps_l2: float | None = None, class_names=None, batch_size: int = 256,
                   track: str = "any", amp: str | None = None, seed: int = 0,
                   keep_adv: bool = False, progress: bool = False) -> ClasswiseReport:
    """Class-wise robustness of `model` on `data` under `attacks` (the spec language of
    `--attacks`, e.g. "pgd-20,tpgd-20:T=2,aa") at Linf budget eps (pixel units); see the module
    docstring. class_names: default the loader's, else "0", "1", ...; amp: None, "bf16" or
    "fp16" autocast of the model; keep_adv: keep the adversarial images in report.outcomes."""
    specs = parse_attacks(attacks)
    batches = _batches(data, batch_size)
    info = getattr(batches, "info", None)  # a cwr_fast loader knows its dataset
    num_classes = _num_classes(model, batches, class_names, info)
    if class_names is None:
        class_names = list(info.class_names) if info is not None else [str(c) for c in range(num_classes)]
    built = build_attacks(specs, model, eps=eps, eps_l2=eps_l2, track=track, amp=amp,
                          num_classes=num_classes)
    started = time.perf_counter()
    counts = evaluate_classwise(model, batches, num_classes, built, amp=amp, seed=seed,
                                progress=progress, per_image=True, keep_adv=keep_adv)
    config = {"source": "cwr_fast.evaluate_model", "attacks": list(built), "eps": eps,
              "eps_l2": eps_l2, "track": track, "amp": amp or "off", "seed": seed,
              "seconds": round(time.perf_counter() - started, 3)}
    dataset = {"name": info.name} if info is not None else {}
    report = build_report(counts, class_names, attacks=built, config=config, dataset=dataset)
    return ClasswiseReport(report, counts.outcomes.describe(report, built))
