"""`python -m cwr_fast.evaluate --save-adv` (per-image outcomes, read back by compare) and
`--resume` (an evaluation killed with SIGKILL continues to the uninterrupted run's report)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cwr_fast import compare
from cwr_fast.classwise.outcomes import PerImageOutcomes
from cwr_fast.data import load_arrays
from cwr_fast.data.subset import class_balanced_subset
from cwr_fast.evaluate import main, progress_dir
from cwr_fast.models import build_model, load_weights
from helpers.cli import cli_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"seconds", "images_per_s", "member_seconds", "created", "wall_seconds"}


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def read_report(out):
    return json.loads((out / "report.json").read_text())


# ---- --save-adv ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(mnist_checkpoint, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("save_adv")
    out, npz = root / "report", root / "adv.npz"
    assert main(cli_args(mnist_checkpoint, shared_data, out, "--no-plots", "--save-adv-images",
                         attacks="fgsm,pgd-4,aa:seed=0", limit=40, batch_size=16,
                         save_adv=npz)) == 0
    return read_report(out), PerImageOutcomes.load(npz), npz


def test_per_image_outcomes_add_up_to_the_report(saved):
    report, outcomes, _ = saved
    counts = outcomes.counts()
    assert counts.clean_confusion.tolist() == report["clean"]["confusion"]
    for k, section in enumerate(report["attacks"]):
        assert counts.adv_confusion[k].tolist() == section["confusion"]
    assert counts.worst_confusion.tolist() == report["worst_case"]["confusion"]
    section = report["autoattack"][0]
    by_member = counts.member_broken["aa:seed=0"].sum(dim=1).tolist()
    assert by_member == [section["overall"][m] for m in section["members"]]


def test_indices_are_the_split_indices_of_the_evaluated_images(saved, shared_data):
    _, outcomes, _ = saved
    _, labels = load_arrays("mnist", "test", shared_data)
    expected = class_balanced_subset(labels, 4)
    assert outcomes.index.tolist() == expected.tolist()
    assert outcomes.label.tolist() == labels[expected].tolist()


def test_adversarial_images_and_what_broke_them(saved, shared_data, mnist_checkpoint):
    report, outcomes, _ = saved
    images, _ = load_arrays("mnist", "test", shared_data)
    x = images[outcomes.index].float().div(255)
    model = load_weights(build_model("small_cnn", 10, (0.1307,), (0.3081,), 1), mnist_checkpoint).eval()
    attacked = outcomes.clean_pred == outcomes.label
    assert outcomes.broken_at_unit == ["step", "step", "member"]
    for k, name in enumerate(outcomes.attack_names):
        x_adv = outcomes.x_adv[k]
        assert float((x_adv - x).abs().max()) <= report["config"]["eps"] + 1e-6
        assert torch.equal(x_adv[~attacked], x[~attacked])     # not attacked: the clean image
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        fooled = outcomes.adv_pred[k] != outcomes.label
        assert torch.equal(pred[fooled], outcomes.adv_pred[k][fooled])  # the saved image fools it
        broken = outcomes.broken_at[k]
        assert bool((broken[fooled] >= 0).all()) and bool((broken[~fooled] == -1).all())
    steps = {"fgsm": 1, "pgd-4": 4}
    for k, name in enumerate(outcomes.attack_names[:2]):
        assert int(outcomes.broken_at[k].max()) <= steps[name]
    assert int(outcomes.broken_at[2].max()) < len(outcomes.members["aa:seed=0"])


def test_compare_reads_the_outcomes_file_back(saved):
    report, _, npz = saved
    run = compare.load_run(npz)
    assert run["report"]["worst_case"]["per_class"] == report["worst_case"]["per_class"]
    assert [a["per_class"] for a in run["report"]["attacks"]] == [a["per_class"] for a in report["attacks"]]
    rows = compare.comparison_rows([run])
    worst = [r for r in rows if r["kind"] == "worst_case"]
    assert len(worst) == 1 and worst[0]["worst_acc"] == min(r["robust_acc"] for r in report["worst_case"]["per_class"])


def test_save_adv_needs_an_npz_name(mnist_checkpoint, shared_data, tmp_path, capsys):
    assert main(cli_args(mnist_checkpoint, shared_data, tmp_path / "o", save_adv=tmp_path / "a.pt")) == 2
    assert "give a .npz file name" in capsys.readouterr().err
    assert main(cli_args(mnist_checkpoint, shared_data, tmp_path / "o", "--save-adv-images")) == 2
    assert "--save-adv-images needs --save-adv" in capsys.readouterr().err


# ---- --resume -------------------------------------------------------------------------------------

def _command(args):
    return [sys.executable, "-m", "cwr_fast.evaluate", *args]


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_an_evaluation_killed_with_sigkill_resumes_to_the_same_report(mnist_checkpoint, shared_data,
                                                                      tmp_path):
    options = dict(attacks="fgsm,pgd-20,cw-10", limit=200, batch_size=10, eps=0.15, seed=3,
                   save_adv=None)
    whole = tmp_path / "whole"
    assert main(cli_args(mnist_checkpoint, shared_data, whole, "--no-plots", **options)) == 0
    assert not progress_dir(whole).exists()   # removed once the report is written

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(cli_args(mnist_checkpoint, shared_data, out, "--no-plots", **options)),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    batches = progress_dir(out) / "attacks"
    deadline = time.monotonic() + 300
    while len(list(batches.glob("batch-*.pt"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the evaluation wrote no batches"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    kept = len(list(batches.glob("batch-*.pt")))
    assert not (out / "report.json").exists() and 3 <= kept < 20, (kept, stderr)

    done = subprocess.run(_command(["--resume", str(out), "--no-progress"]), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert without_timing(read_report(out)) == without_timing(read_report(whole))
    assert not progress_dir(out).exists()
    again = subprocess.run(_command(["--resume", str(out)]), env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "holds a complete report: nothing to resume" in again.stderr


def test_resume_keeps_the_batches_and_refuses_other_settings(mnist_checkpoint, shared_data, tmp_path,
                                                             capsys, monkeypatch):
    out = tmp_path / "run"
    args = cli_args(mnist_checkpoint, shared_data, out, "--no-plots", attacks="fgsm,pgd-2", limit=40,
                    batch_size=10)
    from cwr_fast.classwise import engine

    real, calls = engine._evaluate_batch, []

    def interrupted_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(engine, "_evaluate_batch", interrupted_after_two)
    assert main(args) == 130
    assert f"--resume {out}" in capsys.readouterr().err
    assert len(list((progress_dir(out) / "attacks").glob("batch-*.pt"))) == 2

    assert main(args) == 2   # a new run does not silently discard the interrupted one
    assert "holds an interrupted evaluation" in capsys.readouterr().err
    assert main(["--resume", str(out), "--attacks", "fgsm"]) == 2
    assert "drop --attacks" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(engine, "_evaluate_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert len(calls) == 2   # 4 batches: 2 read back, 2 evaluated
    assert read_report(out)["dataset"]["num_images"] == 40


def test_a_run_that_fails_in_its_first_batch_leaves_no_partial(shared_data, tmp_path, capsys):
    factory = tmp_path / "five.py"
    factory.write_text("import torch\n"
                       "def make():\n"
                       "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))\n")
    out = tmp_path / "run"
    assert main(["--model", f"{factory}:make", "--data-dir", str(shared_data), "--limit", "20",
                 "--attacks", "fgsm", "--no-progress", "--out", str(out)]) == 2
    assert "returns 5 logits per image" in capsys.readouterr().err
    assert not progress_dir(out).exists() and not out.exists()


def test_resume_without_an_interrupted_run(tmp_path, capsys):
    assert main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no interrupted evaluation to resume" in capsys.readouterr().err
