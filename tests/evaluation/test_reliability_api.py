"""Issue 25, the Python API, the report files and compare: hostile class names (27), a model in
train mode (4), careless arguments to evaluate_model (26), fractional labels and doubled
checkpoint keys (8), damaged input to compare (24), the confusion matrices of many classes (11).
The CLIs run in a subprocess, as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.cli import assert_refused, cli, snapshot
from torch import nn

import cwr_fast
from cwr_fast.models.checkpoint import CheckpointMismatchError, extract_state_dict
from cwr_fast.report import SPARSE_CONFUSION_ABOVE, read_report



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for this file's tiny models, restored afterwards: set at import, it leaked
    into every test collected after it (an in-process evaluate then chose its threads differently
    from a subprocess's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear(classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, classes))


def _data(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % classes


HOSTILE = ["=cmd()", "a|b", "two\nlines", "+1+2", "@SUM(A1)", "-2+3", "\tTab"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """{name: evaluation dir}: 'hostile' (7 classes with hostile names), 'plain' (7 classes),
    'many' (SPARSE_CONFUSION_ABOVE + 50 classes)."""
    root = tmp_path_factory.mktemp("reports")
    x, y = _data(28, 7)
    out = {}
    for name, names in (("hostile", HOSTILE), ("plain", None)):
        report = cwr_fast.evaluate_model(_linear(7), (x, y), attacks="fgsm", eps=0.1, class_names=names)
        out[name] = report.save(root / name, plots=False)
    c = SPARSE_CONFUSION_ABOVE + 50
    xm, ym = _data(40, c, seed=1)
    many = cwr_fast.evaluate_model(_linear(c, seed=1), (xm, ym), attacks="fgsm,pgd-2", eps=0.1)
    out["many"] = many.save(root / "many", plots=False)
    out["many_report"] = many
    return out


def _table_rows_are_sound(markdown: str) -> None:
    """Every Markdown table row has as many unescaped '|' as its header."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            width = len(re.findall(r"(?<!\\)\|", line))
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                assert len(re.findall(r"(?<!\\)\|", lines[j])) == width, (lines[i], lines[j])
                j += 1


# ---- 27. formula injection and broken Markdown tables ------------------------------------------

def test_class_names_cannot_run_formulas_in_csv(reports):
    for name in ("per_class.csv", "confusion_clean.csv", "confusion_fgsm.csv"):
        rows = list(csv.reader(io.StringIO((reports["hostile"] / name).read_text())))
        for row in rows:
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")), (name, cell)
                assert not (cell.startswith("-") and cell != "-" and not re.fullmatch(r"-[\d.e+-]+", cell)), cell
    cells = [r[2] for r in csv.reader(io.StringIO((reports["hostile"] / "per_class.csv").read_text()))]
    assert "'=cmd()" in cells and "'@SUM(A1)" in cells and "'-2+3" in cells and "a|b" in cells


def test_class_names_cannot_break_markdown_tables(reports):
    text = (reports["hostile"] / "report.md").read_text()
    _table_rows_are_sound(text)
    assert "a\\|b" in text and "two lines" in text


def test_compare_names_cannot_inject_or_break_tables(reports, tmp_path):
    before = snapshot(reports["plain"])
    out = tmp_path / "cmp"
    proc = cli("cwr_fast.compare", reports["plain"], reports["hostile"], "--names", "=HYPERLINK(x)|y,@z\nw",
               "--allow-mismatch", "--out", out)
    assert proc.returncode == 0, proc.stderr
    _table_rows_are_sound(proc.stdout)
    _table_rows_are_sound((out / "compare.md").read_text())
    for row in csv.reader(io.StringIO((out / "compare.csv").read_text())):
        assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in row), row
    assert snapshot(reports["plain"]) == before


# ---- 4. a model in train mode is left as it was --------------------------------------------------

def test_train_mode_model_keeps_its_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(12, 3)
    report = cwr_fast.evaluate_model(model, (x, y), attacks="fgsm", eps=0.1, batch_size=5)
    assert report.data["dataset"]["num_images"] == 12
    assert all(m.training for m in model.modules())
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())


# ---- 26. careless arguments: one clear error naming the argument -------------------------------

class _IntLogits(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 3, dtype=torch.int64)


class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.rand(1, 4, 4), "label": i % 3}


@pytest.mark.parametrize("case, error, words", [
    ("int64 logits", TypeError, "floating-point logits"),
    ("meta model", ValueError, "meta device"),
    ("labels [N, 1]", ValueError, "squeeze"),
    ("empty data", ValueError, "no images"),
    ("empty iterable", ValueError, "no images"),
    ("batch_size=0", ValueError, "batch_size"),
    ("attacks objects", TypeError, "attacks"),
    ("dict batches", TypeError, "dict"),
    ("fractional labels", ValueError, "whole class"),
    ("a string as data", TypeError, "data"),
])
def test_careless_arguments_are_one_clear_error(case, error, words):
    x, y = _data(6, 3)
    model, data, kwargs = _linear(3), (x, y), {}
    if case == "int64 logits":
        model = _IntLogits()
    elif case == "meta model":
        model = _linear(3).to("meta")
    elif case == "labels [N, 1]":
        data = (x, y[:, None])
    elif case == "empty data":
        data = (x[:0], y[:0])
    elif case == "empty iterable":
        data = []
    elif case == "batch_size=0":
        kwargs = {"batch_size": 0}
    elif case == "attacks objects":
        kwargs = {"attacks": [object()]}
    elif case == "dict batches":
        data = torch.utils.data.DataLoader(_Dicts(), batch_size=2)
    elif case == "fractional labels":
        data = (x, y.float() + torch.tensor([0, 0, 0.99, 0, 0, 0]))
    elif case == "a string as data":
        data = "data.npz"
    with pytest.raises(error, match=words):
        cwr_fast.evaluate_model(model, data, eps=0.1, **{"attacks": "fgsm", **kwargs})


def test_attacks_as_a_list_of_strings_and_whole_float_labels_work():
    x, y = _data(6, 3)
    report = cwr_fast.evaluate_model(_linear(3), (x, y.float()), attacks=["fgsm", "pgd-2"], eps=0.1)
    assert [a["label"] for a in report.data["attacks"]] == ["fgsm", "pgd-2"]
    assert [r["n"] for r in report.per_class()] == [2, 2, 2]


# ---- 8. a state dict holding both x and module.x -------------------------------------------------

def test_doubled_checkpoint_keys_are_refused_naming_both():
    w = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError, match=r"'weight'.*'module\.weight'"):
        extract_state_dict({"weight": w, "module.weight": w + 1})
    with pytest.raises(CheckpointMismatchError, match=r"'module\.bias'.*'_orig_mod\.bias'"):
        extract_state_dict({"model": {"module.bias": w, "_orig_mod.bias": w}})
    assert set(extract_state_dict({"module.weight": w, "bias": w})) == {"weight", "bias"}


def test_evaluate_refuses_a_checkpoint_with_doubled_keys(mnist_checkpoint, tmp_path):
    state = torch.load(mnist_checkpoint, weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    key = next(iter(state))
    torch.save({**state, f"module.{key}": state[key]}, tmp_path / "double.pt")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.evaluate", "--arch", "small_cnn", "--checkpoint", tmp_path / "double.pt",
               "--dataset", "mnist-embedded", "--attacks", "fgsm", "--limit", "10", "--no-plots",
               "--out", tmp_path / "r", cwd=tmp_path)
    assert_refused(proc, f"module.{key}")
    assert snapshot(tmp_path) == before


# ---- 24. compare on damaged input: one line naming the file, exit 2 -------------------------------

def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["no clean", "5000 digits", "deep nesting", "attack without summary",
                                    "attacks not a list"])
def test_compare_refuses_a_damaged_report(damage, reports, tmp_path):
    run = _copy(reports["plain"], tmp_path / "run")
    path = run / "report.json"
    report = json.loads(path.read_text())
    if damage == "no clean":
        del report["clean"]
        path.write_text(json.dumps(report))
    elif damage == "5000 digits":
        path.write_text(json.dumps(report).replace('"num_images": 28', '"num_images": ' + "9" * 5000))
    elif damage == "deep nesting":
        path.write_text(json.dumps(report)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif damage == "attack without summary":
        del report["attacks"][0]["summary"]
        path.write_text(json.dumps(report))
    elif damage == "attacks not a list":
        report["attacks"] = {"fgsm": 1}
        path.write_text(json.dumps(report))
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.compare", reports["plain"], run, "--names", "a,b")
    assert_refused(proc, str(path))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["junk", "truncated", "empty zip", "wrong arrays"])
def test_compare_paired_refuses_a_damaged_outcomes_file(damage, reports, tmp_path):
    run = _copy(reports["plain"], tmp_path / "run")
    path = run / "outcomes.npz"
    good = path.read_bytes()
    if damage == "junk":
        path.write_bytes(b"\x80\x04junk" * 10)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty zip":
        with zipfile.ZipFile(path, "w"):
            pass
    elif damage == "wrong arrays":
        import numpy as np
        with np.load(io.BytesIO(good)) as data:
            arrays = dict(data)
        arrays["label"] = arrays["label"][:3]
        np.savez(path, **arrays)
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.compare", reports["plain"], run, "--names", "a,b", "--paired")
    assert_refused(proc, str(path))
    assert snapshot(tmp_path) == before


# ---- 11. many classes: sparse confusion matrices in report.json ----------------------------------

def test_many_classes_store_sparse_confusions_and_read_back_dense(reports):
    folder, report = reports["many"], reports["many_report"]
    c = len(report.class_names)
    stored = json.loads((folder / "report.json").read_text())
    for section in [stored["clean"], stored["worst_case"], *stored["attacks"]]:
        assert set(section["confusion"]) == {"sparse", "shape"} and section["confusion"]["shape"] == [c, c]
        assert sum(n for _, _, n in section["confusion"]["sparse"]) == 40
    assert isinstance(report.data["clean"]["confusion"], list)       # in memory: dense, as before
    assert read_report(folder / "report.json") == json.loads(json.dumps(report.data))
    dense_size = len(json.dumps(report.data, indent=1))
    assert (folder / "report.json").stat().st_size < dense_size / 5
    rows = list(csv.reader(io.StringIO((folder / "confusion_clean.csv").read_text())))
    assert rows[0] == ["true_class", "true_name", "predicted_class", "predicted_name", "count"]
    assert sum(int(r[4]) for r in rows[1:]) == 40


def test_few_classes_stay_dense_and_old_dense_reports_still_compare(reports, tmp_path):
    stored = json.loads((reports["plain"] / "report.json").read_text())
    assert isinstance(stored["clean"]["confusion"], list)
    assert read_report(reports["plain"] / "report.json") == stored
    many_dense = _copy(reports["many"], tmp_path / "dense")   # a report.json written before: dense
    (many_dense / "report.json").write_text(json.dumps(reports["many_report"].data))
    proc = cli("cwr_fast.compare", reports["many"], many_dense, "--names", "sparse,dense", "--paired")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sparse") or line.startswith("| dense")]
    assert rows and [r.split("|")[2:] for r in rows if r.startswith("| sparse")] == \
        [r.split("|")[2:] for r in rows if r.startswith("| dense")]
