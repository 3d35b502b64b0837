"""Code that holds a typed report reads it by attribute, not through the JSON keys of its dict view
(issue 27, "a typed report"): api.ClasswiseReport's own methods, train._short_report and the
writers of cwr_fast.report still work, and give the same text, when every read by key of a report
part (the compatibility surface of report_data) and of ClasswiseReport.data fails."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from cwr_fast import api
from cwr_fast import train as train_cli
from cwr_fast.classwise.analysis import build_report, sweep_section
from cwr_fast.classwise.report_data import JsonRecord, Report
from cwr_fast.report import format_summary, markdown, report_files

MAKE_REPORTS = Path(__file__).parent / "data" / "reports" / "make_reports.py"


def make_reports_module():
    """The synthetic reports of data/reports/make_reports.py (test_report_data.py's)."""
    spec = importlib.util.spec_from_file_location("make_reports", MAKE_REPORTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReadByKey(AssertionError):
    pass


class _Poisoned(Mapping):
    """Stands for ClasswiseReport.data: any read of it fails."""

    def __getitem__(self, key):
        raise ReadByKey(f"ClasswiseReport.data[{key!r}] read")

    def __iter__(self):
        raise ReadByKey("ClasswiseReport.data iterated")

    def __len__(self):
        raise ReadByKey("len(ClasswiseReport.data)")


def _no_key_reads(monkeypatch):
    """From here on, reading any report part by key (report["worst_case"], section.get("label"),
    "attacks" in report, dict(report)) fails; its attributes and as_dict() still work."""
    def by_key(self, key):
        raise ReadByKey(f"{type(self).__name__}[{key!r}] read")

    def iterated(self):
        raise ReadByKey(f"{type(self).__name__} iterated as a mapping")

    monkeypatch.setattr(JsonRecord, "__getitem__", by_key)
    monkeypatch.setattr(JsonRecord, "__iter__", iterated)


def _report(classes: int) -> Report:
    """A report with attacks, an AutoAttack breakdown and both sweeps (synthetic counts)."""
    return make_reports_module().build(classes, True, build_report, sweep_section)


def _short_by_key(report: dict, max_rows: int = 12) -> dict:
    """train._short_report as the dict-based code did it: what the summary printed before."""
    records = report["worst_case"]["per_class"]
    scored = sorted((r["robust_acc"] if r["robust_acc"] is not None else 2.0, r["class"]) for r in records)
    half = max_rows // 2
    keep = sorted({c for _, c in scored[:half]} | {c for _, c in scored[-half:]})

    def cut(section: dict) -> dict:
        return {**section, "per_class": [section["per_class"][c] for c in keep]}

    return {**report, "clean": cut(report["clean"]), "worst_case": cut(report["worst_case"]),
            "attacks": [cut(a) for a in report["attacks"]]}


def test_the_poison_catches_a_read_by_key(monkeypatch):
    report = _report(3)
    _no_key_reads(monkeypatch)
    with pytest.raises(ReadByKey):
        report["worst_case"]
    with pytest.raises(ReadByKey):
        report.worst_case.get("per_class")
    with pytest.raises(ReadByKey):
        _Poisoned()["dataset"]
    assert report.worst_case.per_class[0].class_index == 0  # attributes still work


def test_classwise_report_reads_its_report_by_attribute(monkeypatch):
    report = _report(4)
    data = report.as_dict()
    wrapped = api.ClasswiseReport(report)
    expected = {
        "class_names": data["dataset"]["class_names"],
        "per_class": data["worst_case"]["per_class"],
        "per_class pgd-10": next(a for a in data["attacks"] if a["label"] == "pgd-10")["per_class"],
        "summary": format_summary(data),
        "markdown": markdown(data),
    }
    _no_key_reads(monkeypatch)
    wrapped.data = _Poisoned()
    assert wrapped.class_names == expected["class_names"]
    assert wrapped.per_class() == expected["per_class"]
    assert wrapped.per_class("pgd-10") == expected["per_class pgd-10"]
    assert all(type(r) is dict for r in wrapped.per_class())  # public: a list of plain dicts
    assert wrapped.robust_accuracy() == [r["robust_acc"] for r in expected["per_class"]]
    assert wrapped.robust_accuracy("pgd-10") == [r["robust_acc"] for r in expected["per_class pgd-10"]]
    with pytest.raises(KeyError, match="no attack 'cw-9'; the report has \\['fgsm', 'pgd-10', 'aa'\\]"):
        wrapped.per_class("cw-9")
    worst = data["worst_case"]["overall"]["robust_acc"]
    assert repr(wrapped) == f"ClasswiseReport({data['dataset']['num_images']} images, 4 classes, worst case {worst})"
    assert wrapped.summary() == expected["summary"]
    assert wrapped.markdown() == expected["markdown"]


def test_the_per_class_dicts_are_copies():
    wrapped = api.ClasswiseReport(_report(3))
    wrapped.per_class()[0]["n"] = -1
    assert wrapped.per_class()[0]["n"] != -1 and wrapped.data["worst_case"]["per_class"][0]["n"] != -1


@pytest.mark.parametrize("classes", [3, 25])
def test_short_report_reads_the_report_by_attribute(monkeypatch, classes):
    report = _report(classes)
    data = report.as_dict()
    before = format_summary(_short_by_key(data) if classes > 20 else data)
    _no_key_reads(monkeypatch)
    short, note = train_cli._short_report(report, max_rows=12)
    assert isinstance(short, Report)
    assert format_summary(short) == before  # the summary text, byte for byte
    assert (note != "") == (classes > 20)
    if classes > 20:
        assert len(short.worst_case.per_class) == len(short.clean.per_class) == 12
        assert all(len(a.per_class) == 12 for a in short.attacks)
        assert len(report.worst_case.per_class) == classes  # the report itself is not cut


def test_the_writers_read_the_report_by_attribute(monkeypatch):
    report = _report(4)
    before = report_files(report.as_dict(), plots=False)
    _no_key_reads(monkeypatch)
    assert report_files(report, plots=False) == before


def _methods_reading(cls, attribute: str) -> list[str]:
    """The methods of `cls` (not __init__) whose source reads self.<attribute>."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name != "__init__":
            if any(isinstance(n, ast.Attribute) and n.attr == attribute and isinstance(n.value, ast.Name)
                   and n.value.id == "self" for n in ast.walk(node)):
                found.append(node.name)
    return found


def test_classwise_report_methods_never_read_the_dict():
    assert _methods_reading(api.ClasswiseReport, "data") == []
