"""Nothing lost, nothing silently wrong: each hostile or careless input of docs/RELIABILITY.md run
as a user would (the CLIs in a subprocess), asserting the exit status, a one-line message that
names the argument, and that no file the user owns changed (the directory hashed before and after)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import TINY_TRAIN, assert_refused, cli, evaluate_args, interrupt_when, snapshot

from cwr_fast import outputs
from cwr_fast.attacks.spec import AttackSpecError, parse_attack
from cwr_fast.options import number

@pytest.fixture(scope="module")
def user_dir(mnist_checkpoint, tmp_path_factory) -> Path:
    """A user's folder: the checkpoint being evaluated and a file of theirs."""
    root = tmp_path_factory.mktemp("user")
    (root / "model.pt").write_bytes(Path(mnist_checkpoint).read_bytes())
    (root / "notes.txt").write_text("my notes\n")
    return root


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    proc = cli("cwr_fast.train", *TINY_TRAIN, "--no-final-eval", "--out", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


# ---- 1. --overwrite only ever replaces cwr_fast's own files -----------------------------------------

def test_overwrite_refuses_a_folder_holding_the_checkpoint(user_dir, shared_data):
    before = snapshot(user_dir)
    proc = cli("cwr_fast.evaluate", *evaluate_args("model.pt", shared_data, ".", "--overwrite"), cwd=user_dir)
    assert_refused(proc, "did not write", "model.pt")
    assert snapshot(user_dir) == before


def test_evaluate_refuses_a_training_run_as_out(training_run, mnist_checkpoint, shared_data):
    before = snapshot(training_run)
    proc = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, training_run, "--overwrite"))
    assert_refused(proc, str(training_run), "training run")
    assert snapshot(training_run) == before


def test_overwrite_replaces_only_the_reports_own_files(mnist_checkpoint, shared_data, tmp_path):
    out = tmp_path / "report"
    first = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, out, "--attacks", "fgsm,pgd-1"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "confusion_pgd-1.csv").is_file()
    (out / "notes.txt").write_text("mine\n")
    (out / "model.pt").write_bytes(b"weights")
    again = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, out))
    assert_refused(again, str(out), "--overwrite")
    inode = out.stat().st_ino
    replaced = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, out, "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "model.pt").read_bytes() == b"weights"
    assert not (out / "confusion_pgd-1.csv").exists(), "the earlier report's files are replaced"
    assert json.loads((out / "report.json").read_text())["config"]["attacks"] == ["fgsm"]
    assert out.stat().st_ino == inode, "files are replaced in place (works on a mount point)"


def test_train_overwrite_refuses_foreign_files(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("my own metrics\n")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.train", *TINY_TRAIN, "--out", tmp_path, "--overwrite")
    assert_refused(proc, "did not write", "metrics.jsonl")
    assert snapshot(tmp_path) == before


# ---- 2. the .beton writer -------------------------------------------------------------------------

def test_beton_refuses_an_existing_file_or_folder(shared_data, tmp_path):
    target = tmp_path / "data.beton"
    target.write_bytes(b"precious")
    folder = tmp_path / "folder"
    folder.mkdir()
    before = snapshot(tmp_path)
    args = ["--dataset", "mnist", "--split", "test", "--data-dir", shared_data]
    assert_refused(cli("cwr_fast.data.beton", *args, "--out", target), str(target), "--overwrite")
    assert_refused(cli("cwr_fast.data.beton", *args, "--out", folder), str(folder), "directory")
    assert snapshot(tmp_path) == before


# ---- 2b. an output never lands on an input; a single file is replaced only if cwr_fast wrote it -----

@pytest.fixture(scope="module")
def npz_dataset(tmp_path_factory) -> Path:
    """A user's own dataset (npz: uint8 arrays) and a bare small_cnn state dict, in their folder."""
    from cwr_fast.models import build_model

    root = tmp_path_factory.mktemp("own")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 28, 28), generator=gen, dtype=torch.uint8).numpy()
    labels = (torch.arange(40) % 10).numpy()
    import numpy as np
    (root / "data").mkdir()
    np.savez(root / "data" / "mine.npz", train_images=images, train_labels=labels,
             test_images=images, test_labels=labels)
    torch.save(build_model("small_cnn", 10, (0.5,), (0.5,), 1).state_dict(), root / "m.pt")
    return root


def test_save_adv_never_replaces_the_dataset_being_evaluated(npz_dataset, tmp_path):
    """Issue 25, item 1: --save-adv data/mine.npz --overwrite used to replace the dataset."""
    before = snapshot(npz_dataset)
    data = npz_dataset / "data" / "mine.npz"
    common = ["--dataset", f"npz:{data}", "--arch", "small_cnn", "--checkpoint", npz_dataset / "m.pt",
              "--limit", "20", "--attacks", "fgsm", "--eps", "0.1", "--no-plots", "--out", tmp_path / "r",
              "--overwrite"]
    assert_refused(cli("cwr_fast.evaluate", *common, "--save-adv", data), str(data), "input", "dataset")
    link = npz_dataset / "data" / "alias.npz"  # the same file under another name
    os.symlink(data, link)
    try:
        assert_refused(cli("cwr_fast.evaluate", *common, "--save-adv", link), "input", "dataset")
    finally:
        link.unlink()
    assert snapshot(npz_dataset) == before


def test_save_adv_overwrite_replaces_only_its_own_file(npz_dataset, tmp_path):
    data = npz_dataset / "data" / "mine.npz"
    common = ["--dataset", f"npz:{data}", "--arch", "small_cnn", "--checkpoint", npz_dataset / "m.pt",
              "--limit", "20", "--attacks", "fgsm", "--eps", "0.1", "--no-plots", "--overwrite"]
    theirs = tmp_path / "theirs.npz"
    theirs.write_bytes(b"someone else's file")
    proc = cli("cwr_fast.evaluate", *common, "--out", tmp_path / "r1", "--save-adv", theirs)
    assert_refused(proc, str(theirs), "not written by cwr_fast")
    assert theirs.read_bytes() == b"someone else's file"
    ours = tmp_path / "ours.npz"
    for run in ("r2", "r3"):  # written once, then replaced by the same command with --overwrite
        proc = cli("cwr_fast.evaluate", *common, "--out", tmp_path / run, "--save-adv", ours)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ours.write_bytes(ours.read_bytes() + b"")  # touched by hand: no longer what cwr_fast wrote
    os.utime(ours, ns=(0, 0))
    assert_refused(cli("cwr_fast.evaluate", *common, "--out", tmp_path / "r4", "--save-adv", ours),
                   "not written by cwr_fast")


def test_beton_never_replaces_its_own_source(npz_dataset, tmp_path):
    """Issue 25, item 2: the beton writer with --out on its source npz and --overwrite."""
    pytest.importorskip("ffcv")  # CI installs FFCV (scripts/test.sh --with-ffcv): this runs there
    before = snapshot(npz_dataset)
    data = npz_dataset / "data" / "mine.npz"
    proc = cli("cwr_fast.data.beton", "--dataset", f"npz:{data}", "--split", "test", "--out", data,
               "--overwrite")
    assert_refused(proc, str(data), "input")
    assert snapshot(npz_dataset) == before
    out = tmp_path / "mine-test.beton"
    for _ in range(2):  # its own earlier output it may replace
        proc = cli("cwr_fast.data.beton", "--dataset", f"npz:{data}", "--split", "test", "--out", out,
                   "--overwrite")
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_output_checks_by_content_of_the_registry(tmp_path):
    """The rule itself: same_file sees links; a file is cwr_fast's only while unchanged."""
    a = tmp_path / "a.bin"
    a.write_bytes(b"1")
    os.link(a, tmp_path / "hard.bin")
    assert outputs.same_file(a, tmp_path / "hard.bin") and outputs.same_file(a, tmp_path / "x" / ".." / "a.bin")
    assert not outputs.written_by_cwr_fast(a)
    outputs.record_written_file(a)
    assert outputs.written_by_cwr_fast(a)
    a.write_bytes(b"22")
    assert not outputs.written_by_cwr_fast(a)
    with pytest.raises(outputs.OutputError, match="not written by cwr_fast"):
        outputs.check_output_file(a, overwrite=True)
    with pytest.raises(outputs.OutputError, match="is the dataset of this run"):
        outputs.check_output_file(tmp_path / "hard.bin", overwrite=True, inputs={"the dataset": a})


# ---- 3. an unwritable --out is found before any compute ---------------------------------------------

def test_unwritable_out_is_refused_before_any_work(mnist_checkpoint, shared_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "report"  # cannot be created, whoever runs the test (root included)
    proc = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, out)[:-2], "--out", out)
    line = assert_refused(proc, "cannot write", str(blocker))
    assert "[cwr_fast.evaluate] attacks" not in proc.stderr, line
    for module, args in [("cwr_fast.train", [*TINY_TRAIN, "--out", out]),
                         ("cwr_fast.reproduce", ["--tiny", "--out", out]),
                         ("cwr_fast.data.beton", ["--dataset", "mnist", "--split", "test", "--data-dir",
                                                  shared_data, "--out", out / "x.beton"])]:
        assert_refused(cli(module, *args), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_reproduce_out_is_a_file(tmp_path):
    target = tmp_path / "study"
    target.write_text("x")
    assert_refused(cli("cwr_fast.reproduce", "--tiny", "--out", target), str(target), "not a directory")


# ---- 5. specs the parser accepts are checked completely at parse time ------------------------------------

@pytest.mark.parametrize("extra, named", [
    (["--attacks", "tpgd-10:T=inf"], "T='inf'"),
    (["--attacks", "pgdl2-5:eps=inf"], "eps='inf'"),
    (["--tpgd-sweep", "1,inf"], "--tpgd-sweep"),
    (["--eps-l2", "inf"], "--eps-l2"),
    (["--attacks", "pgd-²"], "steps"),
    (["--attacks", f"aa:seed={2 ** 70}"], "seed"),
])
def test_bad_attack_settings_fail_at_parse_time(mnist_checkpoint, shared_data, tmp_path, extra, named):
    proc = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, tmp_path / "out"), *extra)
    assert_refused(proc, named)
    assert not (tmp_path / "out").exists()


def test_train_checks_final_attacks_before_the_first_step(tmp_path):
    out = tmp_path / "run"
    proc = cli("cwr_fast.train", *TINY_TRAIN, "--final-attacks", "fgsm,pgdl2-5", "--out", out)
    assert_refused(proc, "--final-attacks", "pgdl2-5", "eps")
    assert not (out / "metrics.jsonl").exists()


# ---- 8. smaller ones --------------------------------------------------------------------------------

def test_fractions_with_a_decimal_numerator():
    assert number("2.67/255") == pytest.approx(2.67 / 255)  # the value train --help shows for ImageNet
    assert parse_attack("pgd-5:alpha=2.67/255").params["alpha"] == pytest.approx(2.67 / 255)
    for bad in ("inf", "nan", "1/0", "1/inf", "1/2/3"):
        with pytest.raises(Exception, match="number"):
            number(bad)
    with pytest.raises(AttackSpecError, match="steps"):
        parse_attack("pgd-²")


def test_reproduce_checks_eps_before_training(tmp_path):
    out = tmp_path / "study"
    assert_refused(cli("cwr_fast.reproduce", "--tiny", "--eps", "-1", "--out", out), "--eps")
    assert not (out / "runs").exists()


def test_reproduce_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    before = snapshot(tmp_path)
    assert_refused(cli("cwr_fast.reproduce", "--tiny", "--out", tmp_path), "did not write", "thesis.tex")
    assert snapshot(tmp_path) == before


def test_beton_bad_dataset_exits_2():
    assert_refused(cli("cwr_fast.data.beton", "--dataset", "cifar11", "--split", "train"), "cifar11")


def test_compare_refuses_a_non_empty_out(training_run, tmp_path):
    (tmp_path / "paper.md").write_text("x")
    before = snapshot(tmp_path)
    proc = cli("cwr_fast.compare", training_run, "--out", tmp_path)
    assert_refused(proc, "did not write", "paper.md")
    assert snapshot(tmp_path) == before


def test_stale_temporaries_are_removed_and_reported(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f"{outputs.TMP_PREFIX}{dead}-abc"
    stale.mkdir()
    (stale / "big.bin").write_bytes(b"\0" * 1000)
    live = tmp_path / f"{outputs.TMP_PREFIX}{os.getpid()}-xyz"
    live.mkdir()
    outputs.check_output_dir(tmp_path, "evaluation report", overwrite=False)
    assert not stale.exists() and live.exists(), "only a dead process's temporary goes"


def test_write_files_keeps_what_it_did_not_write(tmp_path):
    outputs.write_files(tmp_path, "comparison", {"a.txt": "1", "b.txt": "2"})
    (tmp_path / "mine.txt").write_text("mine")
    outputs.write_files(tmp_path, "comparison", {"a.txt": "3"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [outputs.MANIFEST, "a.txt", "mine.txt"]
    assert (tmp_path / "a.txt").read_text() == "3"
    with pytest.raises(outputs.OutputError, match="holds a cwr_fast comparison"):
        outputs.check_output_dir(tmp_path, "evaluation report", overwrite=True)


# ---- 6. NaN is never a result ---------------------------------------------------------------------

def test_nan_images_are_refused(mnist_model, mnist_eval):
    from cwr_fast.attacks import PGD
    from cwr_fast.classwise import evaluate_classwise

    x, y = mnist_eval[0][:8].clone(), mnist_eval[1][:8]
    x[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite pixels"):
        evaluate_classwise(mnist_model, [(x, y)], 10, {"pgd": PGD(mnist_model, eps=0.0, steps=1)})
    with pytest.raises(ValueError, match="NaN or infinite pixels"):
        PGD(mnist_model, eps=0.0, steps=1).run(x, y)


def test_nan_weights_are_flagged(mnist_model, shared_data, tmp_path):
    state = {k: v.clone() for k, v in mnist_model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[first].view(-1)[0] = float("nan")
    checkpoint = tmp_path / "nan.pt"
    torch.save(state, checkpoint)
    proc = cli("cwr_fast.evaluate", *evaluate_args(checkpoint, shared_data, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FLAG [error] nonfinite_weights" in proc.stdout and first in proc.stdout
    codes = {f["code"] for f in json.loads((tmp_path / "out" / "report.json").read_text())["flags"]}
    assert {"nonfinite_weights", "nonfinite_logits", "single_class_predictions"} <= codes


def test_a_model_predicting_one_class_is_flagged(mnist_eval):
    from cwr_fast.attacks import FGSM
    from cwr_fast.classwise import build_report, evaluate_classwise

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0))  # always class 9
    x, y = mnist_eval[0][:40], mnist_eval[1][:40]
    counts = evaluate_classwise(model, [(x, y)], 10, {"fgsm": FGSM(model, eps=0.1)})
    flags = build_report(counts, [str(c) for c in range(10)])["flags"]
    assert [f["code"] for f in flags if f["severity"] == "error"] == ["single_class_predictions"]


# ---- 7. one-line errors where tracebacks were ---------------------------------------------------------

@pytest.mark.parametrize("device", ["foo", "meta"])
def test_bad_device(device, mnist_checkpoint, shared_data, tmp_path):
    proc = cli("cwr_fast.evaluate", *evaluate_args(mnist_checkpoint, shared_data, tmp_path / "out"),
               "--device", device)
    assert_refused(proc, "--device", device)
    assert_refused(cli("cwr_fast.train", *TINY_TRAIN, "--device", device, "--out", tmp_path / "run"),
                   "--device", device)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("returns, named", [("(logits, logits)", "tuple"),
                                            ("{'logits': logits}", "dict with keys 'logits'")])
def test_a_model_returning_a_tuple_or_dict(returns, named, shared_data, tmp_path):
    (tmp_path / "zoo.py").write_text(
        "import torch\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(784, 10)\n\n"
        "    def forward(self, x):\n"
        "        logits = self.fc(x.flatten(1))\n"
        f"        return {returns}\n\n"
        "def build():\n"
        "    return Net()\n")
    args = evaluate_args("unused", shared_data, tmp_path / "out")
    args = ["--model", tmp_path / "zoo.py:build", *args[4:]]
    assert_refused(cli("cwr_fast.evaluate", *args), "must return logits", named)


def test_a_corrupt_image_in_an_image_folder(jpeg_folder, tmp_path):
    root = jpeg_folder(tmp_path / "images", ["cat", "dog"], 6)
    broken = root / "train" / "dog" / "3.JPEG"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    proc = cli("cwr_fast.train", "--dataset", f"folder:{root}", "--arch", "small_cnn", "--train-per-class", "4",
               "--val-per-class", "2", "--epochs", "1", "--steps", "1", "--batch-size", "4", "--progress", "off",
               "--no-final-eval", "--no-plots", "--out", tmp_path / "run")
    assert_refused(proc, "cannot decode image", str(broken))


# ---- 8. smaller ones, continued -------------------------------------------------------------------

def test_an_empty_split_is_an_error(mnist_model):
    from cwr_fast.attacks import FGSM
    from cwr_fast.classwise import evaluate_classwise

    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate_classwise(mnist_model, [], 10, [FGSM(mnist_model, eps=0.1)])


def test_val_per_class_that_takes_every_image(tmp_path):
    proc = cli("cwr_fast.train", *TINY_TRAIN, "--val-per-class", "1000", "--out", tmp_path / "run")
    assert_refused(proc, "--val-per-class 1000")


def test_resume_rewrites_a_damaged_metrics_file(tmp_path):
    run = tmp_path / "run"
    assert cli("cwr_fast.train", *TINY_TRAIN, "--no-final-eval", "--out", run).returncode == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write("garbage {\n")
    proc = cli("cwr_fast.train", "--resume", run, "--no-final-eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]


def test_ctrl_c_in_train_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = interrupt_when(["cwr_fast.train", *TINY_TRAIN, "--epochs", "50", "--ckpt-every", "1",
                            "--no-final-eval", "--out", run], "epoch 2/50", "stdout")
    line = assert_refused(proc, "interrupted", f"--resume {run}", code=130)
    assert (run / "checkpoints" / "last.pt").is_file(), line


def test_ctrl_c_in_evaluate_keeps_nothing_half_written(mnist_checkpoint, shared_data, tmp_path):
    out = tmp_path / "out"
    args = evaluate_args(mnist_checkpoint, shared_data, out, "--attacks", "aa", "--limit", "200")
    proc = interrupt_when(["cwr_fast.evaluate", *args], "[cwr_fast.evaluate] attacks", "stderr")
    partial = Path(f"{out}.partial")
    if partial.exists():  # a batch was complete: it is kept for --resume
        assert_refused(proc, "interrupted", f"--resume {out}", code=130)
        assert list((partial / "attacks").glob("batch-*.pt"))
    else:
        assert_refused(proc, "interrupted", "nothing was written", code=130)
    assert not out.exists()
