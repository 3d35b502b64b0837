"""The typed report (cwr_fast.classwise.report_data): report.json read and written back byte for byte,
for the reports cwr_fast writes today and for every older version of the file; the typed
attributes say what the JSON keys say; the compatibility surface (read by key) while callers
migrate; flags belong to the report when it is built; per-image outcomes are rebuilt into a report
by the report layer.

The files in data/reports/ were written by the code of each version of the schema
(`git archive <commit> cwr_fast | tar -x -C OLD`, then `PYTHONPATH=OLD python
data/reports/make_reports.py CLASSES AA`: that version's build_report and report.json writer on the
same synthetic counts: fgsm, pgd-10, AutoAttack where the version has it, both sweeps):
    v1.json.gz               schema_version 1 (65c47dd, 3 classes): no autoattack, worst_stats, methods
    v2.json.gz               schema_version 2 (70ab999, 3 classes): autoattack
    v3_early.json.gz         schema_version 3 (21e8ac2, 3 classes): worst_stats and methods, no gain rates
    v3_dense_many.json.gz    21e8ac2 with 105 classes: dense confusion matrices above 100 classes
    v3_sparse_many.json.gz   2371846 with 105 classes: the first sparse confusion matrices
    v3_before_typed.json.gz  f07dd97 (the last dict-based code), 3 classes: what build_report must
                             still write, byte for byte
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cwr_fast.attacks import build_attacks
from cwr_fast.classwise import report_data
from cwr_fast.classwise.analysis import (build_report, clean_accuracy_flags, describe_outcomes,
                                         report_from_outcomes, sweep_section)
from cwr_fast.classwise.engine import evaluate_classwise
from cwr_fast.classwise.report_data import (ABSENT, SPARSE_CONFUSION_ABOVE, Flag, Report,
                                            ReportFormatError)
from cwr_fast.compare import CompareError, load_run
from cwr_fast.compare_paired import PairedError
from cwr_fast.errors import UsageError
from cwr_fast.report import format_summary, markdown, read_report, write_report

OLD = Path(__file__).parent / "data" / "reports"
OLD_FILES = ["v1", "v2", "v3_early", "v3_dense_many", "v3_sparse_many"]


def make_reports_module():
    spec = importlib.util.spec_from_file_location("make_reports", OLD / "make_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXTRA_FLAG = {"code": "test_flag", "severity": "warning", "attacks": [], "message": "given to build_report"}


def round_trip(text: str) -> str:
    return Report.from_json(json.loads(text)).to_json()


def old_text(name: str) -> str:
    return gzip.decompress((OLD / f"{name}.json.gz").read_bytes()).decode("utf-8")


@pytest.fixture(scope="module")
def written(mnist_model, mnist_eval, tmp_path_factory) -> dict[str, Path]:
    """{name: report directory} written by write_report: 'full' (the session MNIST CNN on 60 real
    test images: fgsm, pgd-3 and a short AutoAttack, both sweeps, a clean-accuracy flag) and 'many'
    (SPARSE_CONFUSION_ABOVE + 20 classes: sparse confusion matrices)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("typed_reports")
    x, y = mnist_eval[0][:60], mnist_eval[1][:60]
    attacks = build_attacks("fgsm,pgd-3,aa", mnist_model, eps=0.15, track="any")
    for member in attacks["aa"].members.values():
        for key, value in (("steps", 3), ("queries", 10), ("targets", 2)):
            if hasattr(member, key):
                setattr(member, key, value)
    counts = evaluate_classwise(mnist_model, [(x, y)], 10, attacks, per_image=True)
    names = [str(c) for c in range(10)]
    sweeps = {}
    for name, specs, values in (("T", "tpgd-2:T=0.5,tpgd-2:T=2", [0.5, 2.0]), ("eps", None, [0.05, 0.15])):
        built = (build_attacks(specs, mnist_model, eps=0.15, track="any") if specs else
                 {f"pgd-2@{e}": next(iter(build_attacks("pgd-2", mnist_model, eps=e, track="any").values()))
                  for e in values})
        sweep_counts = evaluate_classwise(mnist_model, [(x, y)], 10, built)
        sweeps[name] = sweep_section(sweep_counts, name, values, "pgd-2", names)
    report = build_report(counts, names, attacks=attacks, config={"dataset": "mnist", "eps": 0.15},
                          dataset={"name": "mnist", "split": "test"}, temperature_sweep=sweeps["T"],
                          eps_sweep=sweeps["eps"], flags=[Flag.from_json(EXTRA_FLAG)])
    out = {"full": write_report(report, root / "full", plots=False, outcomes=counts.outcomes)}
    c = SPARSE_CONFUSION_ABOVE + 20
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, c)).eval()
    xm, ym = torch.rand(40, 1, 4, 4), torch.arange(40) % c
    many = evaluate_classwise(model, [(xm, ym)], c, build_attacks("fgsm", model, eps=0.1, track="any"))
    out["many"] = write_report(build_report(many, [f"c{i}" for i in range(c)]), root / "many", plots=False)
    out["report"], out["counts"], out["attacks"] = report, counts, attacks
    return out


# ---- byte for byte ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["full", "many"])
def test_written_reports_round_trip_byte_for_byte(written, name):
    text = (written[name] / "report.json").read_text(encoding="utf-8")
    assert round_trip(text) == text
    assert read_report(written[name] / "report.json").to_json() == text


def test_the_written_full_report_has_every_section(written):
    stored = json.loads((written["full"] / "report.json").read_text())
    assert stored["autoattack"] and stored["sweeps"]["temperature"] and stored["sweeps"]["eps"]
    assert stored["flags"][-1] == EXTRA_FLAG
    many = json.loads((written["many"] / "report.json").read_text())
    assert set(many["clean"]["confusion"]) == {"sparse", "shape"}


@pytest.mark.parametrize("name", OLD_FILES)
def test_every_older_version_round_trips_byte_for_byte(name):
    text = old_text(name)
    assert round_trip(text) == text
    if name != "v3_sparse_many":  # in memory the sparse matrices are dense
        assert Report.from_json(json.loads(text)) == json.loads(text)


def _built_like_the_file(module, stored: dict) -> Report:
    """The report that build_report makes today of make_reports.py's counts, with the file's
    creation time and software versions."""
    report = module.build(3, True, build_report, sweep_section)
    report.created, report.software = stored["created"], Report.from_json(stored).software
    return report


def test_build_report_writes_what_the_dict_based_code_wrote():
    text = old_text("v3_before_typed")
    report = _built_like_the_file(make_reports_module(), json.loads(text))
    assert report.to_json() == text


def test_a_field_out_of_order_fails_the_comparison_with_the_old_code(monkeypatch):
    spec = report_data._spec

    def std_after_gap(cls):
        fields = spec(cls)
        if cls is report_data.Summary:
            fields = tuple(sorted(fields, key=lambda f: f[0] == "std"))
        return fields
    monkeypatch.setattr(report_data, "_spec", std_after_gap)
    text = old_text("v3_before_typed")
    assert _built_like_the_file(make_reports_module(), json.loads(text)).to_json() != text


def test_older_versions_read_with_their_fields_absent():
    v1 = Report.from_json(json.loads(old_text("v1")))
    assert v1.schema_version == 1 and v1.autoattack is ABSENT and v1.methods is ABSENT
    assert v1.attacks[0].summary.worst_stats is ABSENT
    assert v1.gains and v1.gains[0].gain_rate_vulnerable is ABSENT
    v2 = Report.from_json(json.loads(old_text("v2")))
    assert v2.schema_version == 2 and v2.autoattack[0].members[-1] == "square"
    assert v2.attacks[0].summary.worst_stats is ABSENT
    v3 = Report.from_json(json.loads(old_text("v3_early")))
    assert v3.attacks[0].summary.worst_stats.level == 0.95 and v3.methods.worst_stats
    for name in OLD_FILES:  # the writers read them all
        report = Report.from_json(json.loads(old_text(name)))
        assert "## Robust accuracy per class" in markdown(report) and format_summary(report)


def test_sparse_and_dense_many_class_files_read_to_the_same_matrices():
    sparse = Report.from_json(json.loads(old_text("v3_sparse_many")))
    dense = Report.from_json(json.loads(old_text("v3_dense_many")))
    assert sparse.confusion_storage == "sparse" and dense.confusion_storage == "dense"
    assert sparse.clean.confusion == dense.clean.confusion
    assert len(dense.clean.confusion) == 105 and isinstance(dense.clean.confusion[0], list)
    assert json.loads(sparse.to_json())["clean"]["confusion"]["shape"] == [105, 105]


def test_a_planted_bug_fails_the_round_trip(monkeypatch):
    """A field missing from the classes is kept as it was read (`extra`); a reader that then drops
    what it does not know loses it, and the round trip sees it."""
    text = old_text("v3_early")
    spec = report_data._spec

    def without_gap(cls):
        return tuple(f for f in spec(cls) if not (cls is report_data.Summary and f[0] == "gap"))
    monkeypatch.setattr(report_data, "_spec", without_gap)
    assert round_trip(text) == text
    report = Report.from_json(json.loads(text))
    assert report.attacks[0].summary.extra == {"gap": json.loads(text)["attacks"][0]["summary"]["gap"]}
    original = report_data.JsonRecord.from_json.__func__

    def dropping(cls, data, where="report"):
        record = original(cls, data, where)
        record.extra = {}
        return record
    monkeypatch.setattr(report_data.JsonRecord, "from_json", classmethod(dropping))
    assert round_trip(text) != text


# ---- typed attributes -------------------------------------------------------------------------------

def test_attributes_say_what_the_keys_say(written):
    report, stored = written["report"], json.loads((written["full"] / "report.json").read_text())
    assert isinstance(report, Report) and report.class_names == stored["dataset"]["class_names"]
    for section, data in zip(report.attacks, stored["attacks"]):
        assert section.label == data["label"] and section.overall.robust == data["overall"]["robust"]
        assert [r.class_index for r in section.per_class] == [r["class"] for r in data["per_class"]]
        assert [r.robust_acc for r in section.per_class] == [r["robust_acc"] for r in data["per_class"]]
        assert section.summary.worst.class_name == data["summary"]["worst"]["class_name"]
        assert section.summary.worst_stats.ci_high == data["summary"]["worst_stats"]["ci_high"]
    aa = report.autoattack[0]
    assert aa.fooled_first("apgd-ce") == stored["autoattack"][0]["overall"]["apgd-ce"]
    assert report.clean.per_class[0].robust is ABSENT and "robust" not in stored["clean"]["per_class"][0]
    assert report.sweeps.temperature.strongest.value == stored["sweeps"]["temperature"]["strongest"]["value"]
    assert report.attack("pgd-3") is report.attacks[1]
    with pytest.raises(KeyError, match="pgd-3"):
        report.attack("cw-30")


def test_flags_passed_to_build_report_come_after_its_own(written):
    report = written["report"]
    assert report.flags[-1] == Flag.from_json(EXTRA_FLAG) and report.flags[-1].code == "test_flag"
    again = build_report(written["counts"], report.class_names, attacks=written["attacks"])
    assert again.flags == report.flags[:-1]
    near_chance = clean_accuracy_flags(written["counts"], expected=1.0) + [EXTRA_FLAG]  # dicts too
    with_dicts = build_report(written["counts"], report.class_names, attacks=written["attacks"],
                              flags=near_chance)
    assert [f.code for f in with_dicts.flags[len(again.flags):]] == [
        f["code"] if isinstance(f, dict) else f.code for f in near_chance]


# ---- the compatibility surface ------------------------------------------------------------------------

def test_the_report_reads_by_key_as_the_dict_it_used_to_be(written):
    report = written["report"]
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data and report == data and data == report
    assert report["attacks"][1]["label"] == "pgd-3" and report.get("autoattack")[0]["label"] == "aa"
    assert report["dataset"]["class_names"] == report.class_names and "flags" in report
    assert report.attacks[0]["summary"]["worst"]["class"] == report.attacks[0].summary.worst.class_index
    dense = json.loads(json.dumps(data))
    assert dense["clean"]["confusion"] == report.clean.confusion  # in memory: dense


def test_the_dict_given_is_a_copy(written):
    text = (written["full"] / "report.json").read_text()
    report = Report.from_json(json.loads(text))
    data = report.as_dict()
    data["config"]["eps"] = 99
    data["dataset"]["class_names"].append("x")
    data["clean"]["confusion"][0][0] = -1
    data["autoattack"][0]["per_class"][0]["broken_first_by"]["apgd-ce"] = -1
    report["config"]["eps"] = 98  # through the cached view, too
    assert report.to_json() == text


def test_a_report_is_not_changed_by_key(written):
    with pytest.raises(TypeError):
        written["report"]["flags"] = []


def test_writers_take_a_report_dict_of_any_version(written, tmp_path):
    stored = json.loads((written["full"] / "report.json").read_text())
    out = write_report(stored, tmp_path / "again", plots=False)
    assert (out / "report.json").read_text() == (written["full"] / "report.json").read_text()
    assert (out / "report.md").read_text() == (written["full"] / "report.md").read_text()


# ---- malformed input -------------------------------------------------------------------------------

@pytest.mark.parametrize("damage, where", [
    (lambda r: r.update(attacks={"fgsm": 1}), "'report.attacks' is not a list"),
    (lambda r: r["attacks"].__setitem__(0, [1]), "'report.attacks[0]' is not an object"),
    (lambda r: r["clean"].update(confusion={"shape": [2, 2], "sparse": [[5, 0, 1]]}), "bad cell"),
])
def test_malformed_parts_are_named(written, damage, where):
    stored = json.loads((written["full"] / "report.json").read_text())
    damage(stored)
    with pytest.raises(ReportFormatError, match=where.replace("[", r"\[").replace("]", r"\]")):
        Report.from_json(stored)


def test_comparison_errors_are_usage_errors():
    for error in (CompareError, PairedError, ReportFormatError):
        assert issubclass(error, UsageError) and issubclass(error, ValueError)


def test_compare_loads_older_versions(tmp_path):
    for name in OLD_FILES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(old_text(name))
        run = load_run(tmp_path / name)
        assert isinstance(run["report"], Report) and run["report"].to_json() == old_text(name)


# ---- per-image outcomes --------------------------------------------------------------------------------

def test_outcomes_are_rebuilt_into_the_report_by_the_report_layer(written):
    report, counts = written["report"], written["counts"]
    outcomes = describe_outcomes(counts.outcomes, report, written["attacks"])
    assert outcomes.meta["dataset"] == report.dataset.as_dict()
    assert outcomes.meta["attacks"]["pgd-3"]["name"] == "pgd"
    rebuilt = report_from_outcomes(outcomes)
    for a, b in zip(rebuilt.attacks, report.attacks):
        assert a.per_class == b.per_class and a.confusion == b.confusion and a.summary == b.summary
    assert rebuilt.worst_case.per_class == report.worst_case.per_class
    assert rebuilt.autoattack[0].per_class == report.autoattack[0].per_class


def test_outcomes_neither_import_nor_call_the_report_layer():
    import ast

    import cwr_fast.classwise.outcomes as outcomes
    tree = ast.parse(Path(outcomes.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m.startswith("cwr_fast.classwise.analysis")
                                             or m.startswith("cwr_fast.report")
                                             or m.startswith("cwr_fast.classwise.report_data"))}
    assert not hasattr(outcomes.PerImageOutcomes, "report") and not hasattr(outcomes.PerImageOutcomes, "describe")
