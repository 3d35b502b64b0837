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

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from cwr_fast.classwise.analysis import describe_outcomes, report_from_outcomes
from cwr_fast.classwise.engine import EvaluationInputError, EvaluationInputTypeError
from cwr_fast.classwise.outcomes import PerImageOutcomes
from cwr_fast.classwise.pipeline import API_EPS, DEFAULT_ATTACKS, EvalSettings, Evaluation
from cwr_fast.classwise.report_data import ClassRecord, Report, as_report
from cwr_fast.report import REPORT_KIND, format_summary, markdown, write_report
from cwr_fast.runtime import model_device

__all__ = ["ClasswiseReport", "evaluate_model"]


class ClasswiseReport:
    """The result of evaluate_model: `report` is the typed report (classwise.report_data.Report),
    `data` the same as the plain dict of report.json's schema."""

    kind = REPORT_KIND

    def __init__(self, data: Report | dict, outcomes: PerImageOutcomes | None = None):
        self.report = as_report(data)
        self.data = self.report.as_dict()
        self.outcomes = outcomes  # per image (classwise.outcomes): what each attack did to it

    @classmethod
    def from_outcomes(cls, path: str | Path) -> "ClasswiseReport":
        """The report of the per-image outcomes saved by `evaluate --save-adv` or outcomes.save."""
        outcomes = PerImageOutcomes.load(path)
        return cls(report_from_outcomes(outcomes), outcomes)

    @property
    def class_names(self) -> list[str]:
        return self.report.class_names

    def _records(self, attack: str | None) -> list[ClassRecord]:
        """The typed per-class records of one attack, or of the worst case (KeyError naming the
        attacks there are)."""
        return self.report.worst_case.per_class if attack is None else self.report.attack(attack).per_class

    def per_class(self, attack: str | None = None) -> list[dict]:
        """Per-class records (n, clean and robust accuracy, 95% interval) of one attack, or of the
        worst case over all attacks (default), as plain dicts of report.json's keys."""
        return [r.as_dict() for r in self._records(attack)]

    def robust_accuracy(self, attack: str | None = None) -> list[float | None]:
        return [r.robust_acc for r in self._records(attack)]

    def summary(self) -> str:
        return format_summary(self.report)

    def markdown(self) -> str:
        return markdown(self.report)

    def save(self, out_dir: str | Path, plots: bool = True, overwrite: bool = False) -> Path:
        """Writes the report files into out_dir, as `python -m cwr_fast.evaluate --out` does
        (with outcomes.npz, for `compare --paired`, when the per-image outcomes are known)."""
        return write_report(self.report, out_dir, plots=plots, overwrite=overwrite,
                            outcomes=self.outcomes)

    def __repr__(self) -> str:
        return (f"ClasswiseReport({self.report.dataset.num_images} images, "
                f"{len(self.class_names)} classes, worst case {self.report.worst_case.overall.robust_acc})")


def _check_batch(batch, i: int) -> tuple[Tensor, Tensor]:
    """One batch of `data` as (images, labels), or a TypeError/ValueError naming what is wrong."""
    if isinstance(batch, dict):
        raise EvaluationInputTypeError(
            f"data: batch {i} is a dict (keys {list(batch)[:4]}); evaluate_model needs "
            "(images, labels) batches: map it, e.g. ((b['image'], b['label']) for b in loader)")
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2
            and isinstance(batch[0], Tensor) and isinstance(batch[1], Tensor)):
        raise EvaluationInputTypeError(
            f"data: batch {i} is a {type(batch).__name__}, not (images, labels) tensors")
    x, y = batch[0], batch[1]
    if x.dim() < 2:
        raise EvaluationInputError(
            f"data: images must be a tensor [N, C, H, W], got shape {list(x.shape)}")
    if y.dim() != 1:
        hint = " (use labels.squeeze(1))" if y.dim() == 2 and y.shape[1] == 1 else ""
        raise EvaluationInputError(
            f"data: labels must be a tensor [N] of class indices, got shape {list(y.shape)}{hint}")
    if x.shape[0] != y.shape[0]:
        raise EvaluationInputError(f"data: {x.shape[0]} images but {y.shape[0]} labels")
    if y.is_complex() or y.dtype == torch.bool:
        raise EvaluationInputTypeError(f"data: labels must be integer class indices, got {y.dtype}")
    if y.is_floating_point() and y.numel() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        bad = y[~(torch.isfinite(y) & (y == y.round()))][0].item()
        raise EvaluationInputError(f"data: labels must be whole class indices, got {bad!r} "
                                   "(a fractional float label would be truncated to another class)")
    return x, y


class _CheckedBatches:
    """The batches of `data`, each checked (_check_batch) as it is yielded; a loader's attributes
    (info, order, dataset, num_samples) stay visible to the engine. ValueError when no batch
    holds an image."""

    def __init__(self, batches):
        self._batches = batches

    def __iter__(self):
        images = 0
        for i, batch in enumerate(self._batches):
            x, y = _check_batch(batch, i)
            images += y.shape[0]
            yield x, y
        if images == 0:
            raise EvaluationInputError("data holds no images")

    def __getattr__(self, name):
        if name.startswith("__") or name == "_batches":
            raise AttributeError(name)
        return getattr(self._batches, name)


def _batches(data, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = _check_batch(data, 0)
        if x.shape[0] == 0:
            raise EvaluationInputError("data holds no images")
        return _CheckedBatches([(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if isinstance(data, Tensor):
        raise EvaluationInputTypeError(
            "data must be (images, labels) or an iterable of such batches, not one tensor")
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise EvaluationInputTypeError(
            f"data must be (images, labels) tensors or an iterable of such batches, "
            f"not a {type(data).__name__}")
    return _CheckedBatches(list(data) if iter(data) is data else data)  # a one-shot iterator: keep it


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise EvaluationInputTypeError(
            f"model must be a torch.nn.Module, not a {type(model).__name__}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise EvaluationInputError(
            "model has tensors on the meta device (no weights): materialise it first, "
            "e.g. model.to_empty(device='cpu') and load_state_dict")


def _probe(model: nn.Module, batches) -> int:
    """The number of classes the model predicts: its logits for the first image, in eval mode,
    without gradients or random draws, every module's mode restored (a model in train mode keeps
    its BatchNorm statistics). TypeError/ValueError when it returns no floating-point logits."""
    first = next(iter(batches), None)
    if first is None:
        raise EvaluationInputError("data holds no images")
    x = first[0][:1]
    if x.shape[0] == 0:
        raise EvaluationInputError("data: its first batch holds no images")
    device = model_device(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            logits = model(x.to(device))
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(logits, Tensor):
        raise EvaluationInputTypeError(
            f"model must return logits, a tensor [N, num_classes]; it returned a "
            f"{type(logits).__name__}")
    if not logits.is_floating_point():
        raise EvaluationInputTypeError(
            f"model must return floating-point logits; it returned {logits.dtype} "
            "(argmax indices or integers cannot be attacked: return the scores)")
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise EvaluationInputError(
            f"model must return logits [N, num_classes]; it returned shape {list(logits.shape)}")
    return int(logits.shape[1])


def _attack_text(attacks) -> str:
    if isinstance(attacks, str):
        return attacks
    if isinstance(attacks, (list, tuple)) and all(isinstance(a, str) for a in attacks):
        return ",".join(attacks)
    kind = type(attacks).__name__ if not isinstance(attacks, (list, tuple)) else \
        f"{type(attacks).__name__} of {', '.join(sorted({type(a).__name__ for a in attacks}))}"
    raise EvaluationInputTypeError(
        f"attacks must be a spec string such as 'pgd-20,aa' (or a list of such strings), "
        f"not a {kind}; to run Attack objects use cwr_fast.classwise.evaluate_classwise")


def evaluate_model(model: nn.Module, data, attacks: str = DEFAULT_ATTACKS, eps: float = API_EPS,
                   *, eps_l2: float | None = None, class_names=None, batch_size: int = 256,
                   track: str = "any", amp: str | None = None, seed: int = 0,
                   keep_adv: bool = False, progress: bool = False) -> ClasswiseReport:
    """Class-wise robustness of `model` on `data` under `attacks` (the spec language of
    `--attacks`, e.g. "pgd-20,tpgd-20:T=2,aa") at Linf budget eps (pixel units); see the module
    docstring. class_names: default the loader's, else "0", "1", ...; amp: None, "bf16" or
    "fp16" autocast of the model; keep_adv: keep the adversarial images in report.outcomes."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationInputError(f"batch_size must be a positive int, got {batch_size!r}")
    settings = EvalSettings(attacks=_attack_text(attacks), eps=eps, eps_l2=eps_l2, track=track,
                            amp=amp, seed=seed, batch_size=batch_size, progress=progress,
                            keep_adv=keep_adv)
    Evaluation(settings, num_classes=2)  # the attack specs, before the model or the data is touched
    _check_model(model)
    batches = _batches(data, batch_size)
    info = getattr(batches, "info", None)  # a cwr_fast loader knows its dataset
    # a cwr_fast loader knows its classes, and is not iterated twice (its epoch would move on)
    predicted = _probe(model, batches) if info is None else None
    num_classes = len(class_names) if class_names is not None else \
        info.num_classes if info is not None else predicted
    if predicted is not None and predicted != num_classes:
        given = "class_names" if class_names is not None else "the loader's dataset"
        raise EvaluationInputError(f"model returns {predicted} logits per image but {given} has "
                                   f"{num_classes} classes")
    if class_names is None:
        class_names = list(info.class_names) if info is not None else [str(c) for c in range(num_classes)]
    evaluation = Evaluation(settings, num_classes=num_classes)
    config = {"source": "cwr_fast.evaluate_model", "attacks": evaluation.labels, "eps": eps,
              "eps_l2": eps_l2, "track": track, "amp": amp or "off", "seed": seed}
    dataset = {"name": info.name} if info is not None else {}
    result = evaluation.run(model, batches, class_names, config=config, dataset=dataset)
    return ClasswiseReport(result.report, describe_outcomes(result.outcomes, result.report, result.attacks))
