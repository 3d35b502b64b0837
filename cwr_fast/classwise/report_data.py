"""The class-wise robustness report as typed data, and its report.json form.

`classwise.analysis.build_report` returns a `Report`; `cwr_fast.report` writes its files from the
attributes. `Report.to_json()` is the text of report.json; `Report.from_json(dict)` reads every
version of it (the field list is in analysis.py's docstring):

    report = Report.from_json(json.loads(text))
    report.attacks[0].summary.worst.class_name, report.worst_case.overall.robust_acc
    report.to_json() == text                     # byte for byte, for any version

Versions. A report.json says its version in `schema_version` (1: no `autoattack`, no
`summary.worst_stats`, no `methods`; 2 adds `autoattack`; 3 the other two). Two later changes kept
version 3, and the files tell them apart by their content, so today's bytes stay as they are: a
confusion matrix above SPARSE_CONFUSION_ABOVE classes is stored sparse (an object, not a list;
older files have the list, `Report.confusion_storage` remembers which), and the gains gained
`gain_rate_vulnerable` / `gain_rate_others` (absent before). Older versions lack fields rather than
spell them differently, so one set of classes reads them all: a field the file does not have is
ABSENT (written back as absent), a key the classes do not know is kept in `extra`, and the order of
the keys as read is kept, so a report read from any version is written back unchanged.

Compatibility surface (remove when no caller needs it): every part is also a read-only Mapping of
its JSON keys (`report["attacks"][0]["summary"]["worst"]`), giving the plain JSON-ready values of
`as_dict()` with dense confusion matrices, the in-memory form the report had when it was a dict.
`Report.as_dict()` is that dict (what `api.ClasswiseReport.data` holds). A report is not changed by
key after it is built: extra flags go to `build_report(..., flags=...)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cwr_fast.errors import UsageError

SCHEMA = "cwr_fast.classwise_report"
SCHEMA_VERSION = 3
SPARSE_CONFUSION_ABOVE = 100  # classes; a dense C x C matrix per attack is 28 MB of JSON at C = 1,000


class ReportFormatError(UsageError):
    """A report.json (or a dict read from one) that is not a class-wise report: names the part."""


class _Absent:
    """The value of a field that the report read had no key for (an older version)."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


# ---- how a field is read from and written to JSON -------------------------------------------------

class _Plain:
    """A JSON value kept as it is (numbers, strings, lists of them, free-form objects); written as
    a copy, so that what as_dict() gives can be changed without changing the report."""

    def read(self, value, where: str):
        return value

    def write(self, value):
        return _copy(value)


def _copy(value):
    """A copy of the lists and objects of a JSON value (the numbers and strings are immutable)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        nested = any(isinstance(item, (dict, list)) for item in value)
        return [_copy(item) for item in value] if nested else list(value)
    return value


class _Record:
    """A nested part (a JsonRecord subclass), or null."""

    def __init__(self, cls):
        self.cls = cls

    def read(self, value, where: str):
        return None if value is None else self.cls.from_json(value, where)

    def write(self, value):
        return None if value is None else value.as_dict()


class _Records:
    """A list of parts of one class."""

    def __init__(self, cls):
        self.cls = cls

    def read(self, value, where: str):
        if not isinstance(value, list):
            raise ReportFormatError(f"'{where}' is not a list")
        return [self.cls.from_json(item, f"{where}[{i}]") for i, item in enumerate(value)]

    def write(self, value):
        return [item.as_dict() for item in value]


class _Confusion:
    """A confusion matrix: dense in memory; in the file dense, or sparse (see encode_confusion)."""

    def read(self, value, where: str):
        return decode_confusion(value, where) if isinstance(value, dict) else value

    def write(self, value):
        return value.tolist() if hasattr(value, "tolist") else [list(row) for row in value]


PLAIN, CONFUSION = _Plain(), _Confusion()


def json_key(name: str, kind=PLAIN, default=ABSENT):
    """A field stored under JSON key `name` (None: the field's own name)."""
    return field(default=default, metadata={"key": name, "kind": kind})


def plain(default=ABSENT):
    return field(default=default, metadata={"kind": PLAIN})


def nested(cls, default=ABSENT):
    return field(default=default, metadata={"kind": _Record(cls)})


def nested_list(cls, default=ABSENT):
    return field(default=default, metadata={"kind": _Records(cls)})


@functools.lru_cache(maxsize=None)
def _spec(cls) -> tuple[tuple[str, str, object], ...]:
    """(attribute, JSON key, kind) of each stored field of a JsonRecord class, in JSON order."""
    return tuple((f.name, f.metadata.get("key") or f.name, f.metadata["kind"])
                 for f in dataclasses.fields(cls) if "kind" in f.metadata)


# ---- the base of every part ---------------------------------------------------------------------

class JsonRecord(Mapping):
    """A dataclass stored as one JSON object: `from_json` / `as_dict`, with unknown keys (`extra`)
    and the key order as read (`key_order`) kept, so that what was read is written back unchanged.
    As a Mapping it is read-only and gives the values of `as_dict()` (the compatibility surface)."""

    __hash__ = None  # type: ignore[assignment]
    extra: dict
    key_order: tuple | None

    @classmethod
    def from_json(cls, data, where: str = "report"):
        if not isinstance(data, Mapping):
            raise ReportFormatError(f"'{where}' is not an object")
        known = {key: (name, kind) for name, key, kind in _spec(cls)}
        values, extra = {}, {}
        for key, value in data.items():
            if key in known:
                name, kind = known[key]
                values[name] = kind.read(value, f"{where}.{key}")
            else:
                extra[key] = value
        record = cls(**values)
        record.extra, record.key_order = extra, tuple(data)
        return record

    def as_dict(self) -> dict:
        """The JSON-ready dict (confusion matrices dense), keys in the order they were read or,
        for a report built here, in the order of the fields."""
        out = {key: kind.write(getattr(self, name)) for name, key, kind in _spec(type(self))
               if getattr(self, name) is not ABSENT}
        out.update((key, _copy(value)) for key, value in self.extra.items())
        if not self.key_order:
            return out
        ordered = {key: out[key] for key in self.key_order if key in out}
        ordered.update((key, value) for key, value in out.items() if key not in ordered)
        return ordered

    def replaced(self, **changes):
        """A copy with the given fields replaced (dataclasses.replace), its unknown keys and key
        order kept: a part changed without going through its JSON keys."""
        copy = dataclasses.replace(self, **changes)
        copy.extra, copy.key_order = self.extra, self.key_order
        return copy

    def _view(self) -> dict:
        return self.as_dict()

    # the compatibility surface: read access by JSON key
    def __getitem__(self, key: str):
        return self._view()[key]

    def __iter__(self):
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def __eq__(self, other) -> bool:
        if isinstance(other, JsonRecord):
            return type(self) is type(other) and self._view() == other._view()
        if isinstance(other, Mapping):
            return self._view() == dict(other)
        return NotImplemented


def _record(cls):
    """A JsonRecord dataclass: fields as declared, plus `extra` and `key_order` (not in __init__)."""
    cls = dataclass(eq=False)(cls)
    cls.extra = MappingProxyType({})  # replaced per instance by from_json
    cls.key_order = None
    return cls


# ---- the parts ------------------------------------------------------------------------------------

@_record
class ClassRecord(JsonRecord):
    """One class of a section: images, clean and robust counts and accuracies, the 95% Wilson
    interval of robust_acc (for the clean section, of clean_acc; it has no robust fields)."""
    class_index: int = json_key("class")
    class_name: str = plain()
    n: int = plain()
    clean_correct: int = plain()
    clean_acc: float | None = plain()
    robust: int = plain()
    robust_acc: float | None = plain()
    ci_low: float | None = plain()
    ci_high: float | None = plain()


@_record
class Overall(JsonRecord):
    """A section over all images: robust count and accuracy, clean accuracy, Wilson interval."""
    n: int = plain()
    robust: int = plain()
    robust_acc: float | None = plain()
    clean_acc: float | None = plain()
    ci_low: float | None = plain()
    ci_high: float | None = plain()


@_record
class ClassValue(JsonRecord):
    """The worst or the best class of a summary and its accuracy."""
    class_index: int = json_key("class")
    class_name: str = plain()
    value: float = plain()


@_record
class WorstStats(JsonRecord):
    """The uncertainty of the lowest class accuracy (stats.worst_class_statistics)."""
    estimate: float = plain()
    level: float = plain()
    ci_low: float = plain()
    ci_high: float = plain()
    bootstrap_ci_low: float = plain()
    bootstrap_ci_high: float = plain()
    worst_frequency: list = plain()
    draws: int = plain()
    seed: int = plain()


@_record
class Summary(JsonRecord):
    """Mean, spread, worst and best class of per-class accuracies (stats.class_summary), with the
    worst class's simultaneous interval (version 3 on)."""
    mean: float | None = plain()
    std: float | None = plain()
    gap: float | None = plain()
    worst: ClassValue | None = nested(ClassValue)
    best: ClassValue | None = nested(ClassValue)
    worst_stats: WorstStats | None = nested(WorstStats)


@_record
class AttackDescription(JsonRecord):
    """An attack's name and parameters (analysis.describe_attack)."""
    name: str | None = plain()
    params: dict = plain()


@_record
class CleanSection(JsonRecord):
    """Accuracy without attack: overall with its interval, per class, summary, confusion."""
    accuracy: float | None = plain()
    ci_low: float | None = plain()
    ci_high: float | None = plain()
    per_class: list[ClassRecord] = nested_list(ClassRecord)
    summary: Summary = nested(Summary)
    confusion: list = json_key(None, CONFUSION)
    seconds: float = plain()


@_record
class AttackSection(JsonRecord):
    """One attack: what it was, overall and per class, summary, adversarial confusion, time."""
    label: str = plain()
    attack: AttackDescription | None = nested(AttackDescription)
    overall: Overall = nested(Overall)
    per_class: list[ClassRecord] = nested_list(ClassRecord)
    summary: Summary = nested(Summary)
    confusion: list = json_key(None, CONFUSION)
    seconds: float = plain()
    images_per_s: float | None = plain()


@_record
class WorstCaseSection(JsonRecord):
    """Robust only if every attack fails: overall, per class, summary, confusion."""
    attacks: list[str] = plain()
    overall: Overall = nested(Overall)
    per_class: list[ClassRecord] = nested_list(ClassRecord)
    summary: Summary = nested(Summary)
    confusion: list = json_key(None, CONFUSION)


@_record
class RankAgreement(JsonRecord):
    """Spearman correlation of two attacks' per-class robust accuracies."""
    a: str = plain()
    b: str = plain()
    spearman: float | None = plain()


@_record
class GainClass(JsonRecord):
    class_index: int = json_key("class")
    class_name: str = plain()
    count: int = plain()
    share: float | None = plain()
    rate: float | None = plain()


@_record
class Gain(JsonRecord):
    """The images a stronger attack fools that a weaker one left robust (analysis.gain_attribution)."""
    weaker: str = plain()
    stronger: str = plain()
    extra_fooled: int = plain()
    per_class: list[GainClass] = nested_list(GainClass)
    vulnerable_classes: list[int] = plain()
    share_from_vulnerable_half: float | None = plain()
    gain_rate_vulnerable: float | None = plain()
    gain_rate_others: float | None = plain()
    spearman_gain_vs_robustness: float | None = plain()


@_record
class SweepClass(JsonRecord):
    class_index: int = json_key("class")
    class_name: str = plain()
    n: int = plain()
    robust_acc: list = plain()
    strongest: float | None = plain()


@_record
class SweepStrongest(JsonRecord):
    value: float = plain()
    robust_acc: float = plain()


@_record
class Sweep(JsonRecord):
    """Per-class robust accuracy for each value of a swept parameter (analysis.sweep_section)."""
    parameter: str = plain()
    attack: str = plain()
    values: list[float] = plain()
    labels: list[str] = plain()
    overall_robust_acc: list[float] = plain()
    per_class: list[SweepClass] = nested_list(SweepClass)
    strongest: SweepStrongest = nested(SweepStrongest)
    rank_agreement: list[RankAgreement] = nested_list(RankAgreement)


@_record
class Sweeps(JsonRecord):
    temperature: Sweep | None = nested(Sweep)
    eps: Sweep | None = nested(Sweep)

    def present(self) -> list[tuple[str, Sweep]]:
        """[(name, sweep)] of the sweeps that were run, temperature first."""
        return [(name, sweep) for name, sweep in (("temperature", self.temperature), ("eps", self.eps))
                if sweep]


@_record
class Flag(JsonRecord):
    """A sanity check that failed ('error' or 'warning'), or a comparison the report states ('info':
    a fast mode's agreement with AutoAttack): code, severity, the attacks concerned, in words."""
    code: str = plain()
    severity: str = plain()
    attacks: list[str] = plain()
    message: str = plain()


@_record
class AutoAttackClass(JsonRecord):
    """One class of an ensemble attack: images each member fooled first, robust after each."""
    class_index: int = json_key("class")
    class_name: str = plain()
    n: int = plain()
    clean_wrong: int = plain()
    broken_first_by: dict[str, int] = plain()
    robust: int = plain()
    robust_acc: float | None = plain()
    robust_acc_after: list = plain()
    last_needed: str | None = plain()


@_record
class AutoAttackWorstClass(JsonRecord):
    class_index: int = json_key("class")
    class_name: str = plain()
    robust_acc: float | None = plain()
    last_needed: str | None = plain()


@_record
class AutoAttackSection(JsonRecord):
    """The per-class, per-member breakdown of an ensemble attack. `overall` is one object keyed by
    the member names plus "robust" and "clean_wrong", as report.json stores it: read it through
    fooled_first(member), robust and clean_wrong."""
    label: str = plain()
    members: list[str] = plain()
    member_seconds: dict[str, float] | None = plain()
    overall: dict[str, int] = plain()
    per_class: list[AutoAttackClass] = nested_list(AutoAttackClass)
    worst_class: AutoAttackWorstClass | None = nested(AutoAttackWorstClass)

    def fooled_first(self, member: str) -> int:
        """Images of all classes that `member` fooled first."""
        return self.overall[member]

    @property
    def robust(self) -> int:
        """Images of all classes that no member fooled and the model classified correctly."""
        return self.overall["robust"]

    @property
    def clean_wrong(self) -> int:
        """Images of all classes the model misclassified without attack (not attacked)."""
        return self.overall["clean_wrong"]


@_record
class Methods(JsonRecord):
    """How the report's statistics are computed, in words."""
    worst_stats: str = plain()
    paired_difference: str = plain()


@_record
class Software(JsonRecord):
    cwr_fast: str = plain()
    torch: str = plain()
    ops_backend: str = plain()


@_record
class ReportDataset(JsonRecord):
    """What was evaluated: the dataset's name and split (when known), its classes and images."""
    name: str | None = plain()
    split: str | None = plain()
    num_classes: int = plain()
    class_names: list[str] = plain()
    num_images: int = plain()


# ---- the report -----------------------------------------------------------------------------------

@_record
class Report(JsonRecord):
    """The class-wise robustness report (analysis.py's docstring gives every field). `config` is
    the free-form record of what was run, each tool its own keys, so it stays a dict."""
    schema: str = plain()
    schema_version: int = plain()
    created: str = plain()
    software: Software = nested(Software)
    config: dict = plain()
    dataset: ReportDataset = nested(ReportDataset)
    clean: CleanSection = nested(CleanSection)
    attacks: list[AttackSection] = nested_list(AttackSection)
    worst_case: WorstCaseSection = nested(WorstCaseSection)
    rank_agreement: list[RankAgreement] = nested_list(RankAgreement)
    gains: list[Gain] = nested_list(Gain)
    sweeps: Sweeps = nested(Sweeps)
    flags: list[Flag] = nested_list(Flag)
    autoattack: list[AutoAttackSection] = nested_list(AutoAttackSection)
    methods: Methods = nested(Methods)
    # how report.json stores the confusion matrices: None (sparse above SPARSE_CONFUSION_ABOVE
    # classes), or "dense" / "sparse" as in the file read, so that it is written back as it was
    confusion_storage: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data, where: str = "report") -> "Report":
        """The report of a dict read from report.json, of any version (module docstring)."""
        report = super().from_json(data, where)
        stored = _stored_confusions(data)
        report.confusion_storage = ("sparse" if any(isinstance(m, Mapping) for m in stored)
                                    else "dense" if stored else None)
        return report

    def to_json(self) -> str:
        """The text of report.json."""
        return json.dumps(self.stored_dict(), indent=1, default=json_default, allow_nan=False) + "\n"

    def stored_dict(self) -> dict:
        """as_dict() with each confusion matrix as report.json stores it (encode_confusion)."""
        data = self.as_dict()
        num_classes = len(self.class_names)
        sparse = (self.confusion_storage == "sparse" or self.confusion_storage is None
                  and num_classes > SPARSE_CONFUSION_ABOVE)
        if not sparse:
            return data
        for key in ("clean", "worst_case"):
            if isinstance(data.get(key), dict) and "confusion" in data[key]:
                data[key] = {**data[key], "confusion": encode_confusion(data[key]["confusion"], num_classes)}
        if isinstance(data.get("attacks"), list):
            data["attacks"] = [{**a, "confusion": encode_confusion(a["confusion"], num_classes)}
                               if "confusion" in a else a for a in data["attacks"]]
        return data

    def confusion_sections(self) -> list:
        """The sections holding a confusion matrix: clean, the worst case, each attack."""
        sections = [self.clean, self.worst_case] + list(self.attacks or [])
        return [s for s in sections if s and s.confusion is not ABSENT]

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.class_names or []) if self.dataset else []

    def attack(self, label: str) -> AttackSection:
        """The section of the attack labelled `label` (KeyError naming the labels there are)."""
        for section in self.attacks or []:
            if section.label == label:
                return section
        raise KeyError(f"no attack {label!r}; the report has {[a.label for a in self.attacks or []]}")

    # ---- the compatibility surface of the dict the report used to be ----
    def _view(self) -> dict:
        cached = self.__dict__.get("_cached_view")
        if cached is None:
            cached = self.as_dict()
            object.__setattr__(self, "_cached_view", cached)
        return cached

    def as_dict(self) -> dict:
        """The report as the plain dict it used to be (dense confusion matrices): json.dumps-able,
        what api.ClasswiseReport.data holds. A new copy each call."""
        return super().as_dict()

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        self.__dict__.pop("_cached_view", None)


def _stored_confusions(data) -> list:
    """The confusion matrices of a report dict as stored (dense lists or sparse objects)."""
    if not isinstance(data, Mapping):
        return []
    sections = [data.get("clean"), data.get("worst_case")]
    sections += list(data.get("attacks") or []) if isinstance(data.get("attacks"), list) else []
    return [s["confusion"] for s in sections if isinstance(s, Mapping) and "confusion" in s]


# ---- sparse confusion matrices ----------------------------------------------------------------------

def sparse_cells(matrix) -> list[list[int]]:
    """[[true class, prediction, count], ...]: the non-zero cells of a confusion matrix, row by row."""
    return [[i, j, int(n)] for i, row in enumerate(matrix) for j, n in enumerate(row) if n]


def encode_confusion(matrix, num_classes: int) -> dict:
    """{"sparse": [[true, pred, count], ...], "shape": [rows, C]}: the non-zero cells."""
    return {"sparse": sparse_cells(matrix), "shape": [len(matrix), num_classes]}


def decode_confusion(stored: dict, where: str = "confusion") -> list[list[int]]:
    """The dense matrix of a sparse one (encode_confusion); ReportFormatError if malformed."""
    shape, cells = stored.get("shape"), stored.get("sparse")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and 0 <= n for n in shape)
            and isinstance(cells, list)):
        raise ReportFormatError("a sparse confusion matrix needs 'shape' [rows, columns] and 'sparse' cells")
    dense = [[0] * shape[1] for _ in range(shape[0])]
    for cell in cells:
        if not (isinstance(cell, list) and len(cell) == 3 and all(type(v) is int for v in cell)
                and 0 <= cell[0] < shape[0] and 0 <= cell[1] < shape[1]):
            raise ReportFormatError(f"bad cell {cell!r} of a sparse confusion matrix of shape {shape}")
        dense[cell[0]][cell[1]] += cell[2]
    return dense


def json_default(value):
    """json.dumps' fallback for the values a config may hold: arrays and tensors, paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def known(value, default=None):
    """A field's value, or `default` where the report read lacks it (ABSENT)."""
    return default if value is ABSENT else value


def as_report(report) -> Report:
    """A Report as it is, or one read from a report dict (of any version)."""
    return report if isinstance(report, Report) else Report.from_json(report)
