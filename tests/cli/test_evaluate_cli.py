"""`python -m cwr_fast.evaluate` end to end on real MNIST, its report files, and its errors."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from cwr_fast import report as report_module
from cwr_fast.evaluate import main
from cwr_fast.models import build_model

from helpers.cli import ATTACKS, cli_args
RECORD_KEYS = {"class", "class_name", "n", "clean_correct", "clean_acc", "robust", "robust_acc",
               "ci_low", "ci_high"}


@pytest.fixture(scope="module")
def full_run(mnist_checkpoint, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "report"
    rc = main(cli_args(mnist_checkpoint, shared_data, out, tpgd_sweep="0.5,2", eps_sweep="0,0.1",
                       sweep_steps=2))
    assert rc == 0
    return out


def test_cli_writes_every_file(full_run):
    names = {p.name for p in full_run.iterdir()}
    expected = {"report.json", "per_class.csv", "report.md", "confusion_clean.csv",
                "confusion_worst_case.csv", "confusion_worst_case.png", "per_class_robust.png",
                "sweep_temperature.csv", "sweep_temperature.png", "sweep_eps.csv", "sweep_eps.png",
                "confusion_fgsm.csv", "confusion_pgd-3.csv", "confusion_tpgd-3_T=2.csv", "confusion_cw-3.csv",
                "confusion_fgsm.png", "confusion_pgd-3.png", "confusion_tpgd-3_T=2.png", "confusion_cw-3.png",
                "outcomes.npz", "sweep_temperature_outcomes.npz"}   # per image, for paired comparisons
    assert expected | {".cwr_fast.json"} == names
    manifest = json.loads((full_run / ".cwr_fast.json").read_text())
    assert manifest == {"kind": "evaluation report", "files": sorted(expected)}, "what --overwrite may replace"
    for png in full_run.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(full_run.parent.glob(".report.*")), "temporary directories left behind"


def test_report_json_follows_the_schema(full_run):
    report = json.loads((full_run / "report.json").read_text())
    assert report["schema"] == "cwr_fast.classwise_report" and report["schema_version"] == 3
    assert report["dataset"]["class_names"] == [str(c) for c in range(10)]
    assert report["dataset"]["num_images"] == 60 and report["config"]["per_class"] == 6
    assert [a["label"] for a in report["attacks"]] == ATTACKS
    for section in report["attacks"]:
        assert len(section["per_class"]) == 10
        assert all(RECORD_KEYS <= set(r) for r in section["per_class"])
        assert all(r["n"] == 6 for r in section["per_class"])
        confusion = section["confusion"]
        assert [sum(row) for row in confusion] == [6] * 10
        assert [confusion[c][c] for c in range(10)] == [r["robust"] for r in section["per_class"]]
        assert set(section["summary"]) == {"mean", "std", "gap", "worst", "best", "worst_stats"}
        stats = section["summary"]["worst_stats"]
        assert stats["ci_low"] <= section["summary"]["worst"]["value"] <= stats["ci_high"]
        assert sum(f for f in stats["worst_frequency"] if f is not None) == pytest.approx(1.0)
        assert section["attack"]["name"] in ("fgsm", "pgd", "tpgd", "cw")
    assert report["attacks"][2]["attack"]["params"]["temperature"] == 2.0
    assert len(report["rank_agreement"]) == len(ATTACKS) * (len(ATTACKS) - 1) // 2
    assert isinstance(report["gains"], list) and isinstance(report["flags"], list)
    assert report["worst_case"]["overall"]["robust"] <= min(a["overall"]["robust"] for a in report["attacks"])
    t_sweep, e_sweep = report["sweeps"]["temperature"], report["sweeps"]["eps"]
    assert t_sweep["values"] == [0.5, 2.0] and t_sweep["strongest"]["value"] in (0.5, 2.0)
    assert e_sweep["overall_robust_acc"][0] == report["clean"]["accuracy"]   # eps = 0
    assert e_sweep["overall_robust_acc"][1] <= e_sweep["overall_robust_acc"][0]


def test_per_class_csv_and_confusion_csv(full_run):
    rows = list(csv.DictReader((full_run / "per_class.csv").open()))
    assert len(rows) == 10 * (len(ATTACKS) + 1)
    assert {r["attack"] for r in rows} == set(ATTACKS) | {"worst_case"}
    report = json.loads((full_run / "report.json").read_text())
    pgd = [r for r in rows if r["attack"] == "pgd-3"]
    assert [int(r["robust"]) for r in pgd] == [r["robust"] for r in report["attacks"][1]["per_class"]]
    confusion = list(csv.reader((full_run / "confusion_pgd-3.csv").open()))
    assert confusion[0] == ["true\\pred"] + [str(c) for c in range(10)]
    assert [[int(v) for v in row[1:]] for row in confusion[1:]] == report["attacks"][1]["confusion"]
    markdown = (full_run / "report.md").read_text()
    assert "| class | n | clean | fgsm | pgd-3 | tpgd-3:T=2 | cw-3 | worst case |" in markdown


def test_cli_with_a_model_factory(mnist_checkpoint, shared_data, tmp_path):
    factory = tmp_path / "user_model.py"
    factory.write_text("from cwr_fast.models import build_model\n"
                       "def make(num_classes, mean, std):\n"
                       "    return build_model('small_cnn', num_classes, mean, std)\n")
    out = tmp_path / "out"
    args = ["--model", f"{factory}:make", "--checkpoint", str(mnist_checkpoint), "--data-dir",
            str(shared_data), "--attacks", "fgsm", "--limit", "20", "--no-plots", "--no-progress",
            "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["eps"] == 0.3          # the MNIST default
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize("change, message", [
    ({"attacks": "pgd-3,deepfool"}, "unknown attack 'deepfool'"),
    ({"attacks": "pgd-3:gamma=1"}, "unknown parameter 'gamma'"),
    ({"attacks": "pgdl2-3"}, "--eps-l2"),
    ({"eps": "-0.1"}, "--eps must be >= 0"),
    ({"eps": "8"}, "did you mean 8/255"),
    ({"checkpoint": "MISSING"}, "checkpoint not found"),
    ({"checkpoint": "RESNET"}, "does not match architecture 'small_cnn'"),
    ({"arch": "vgg"}, "unknown architecture 'vgg'"),
    ({"dataset": "nodata"}, "nodata"),
    ({"limit": "5"}, "below the number of classes"),
    ({"split": "validation"}, "validation"),
    ({"arch": None, "model": "MISSING_PY"}, "model file not found"),
    ({"model": "x.py:f"}, "exactly one of --arch"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(change, message, mnist_checkpoint, shared_data,
                                                       tmp_path, capsys):
    resnet = tmp_path / "resnet.pt"
    torch.save(build_model("preact_resnet18", 10).state_dict(), resnet)
    files = {"MISSING": tmp_path / "missing.pt", "RESNET": resnet, "MISSING_PY": f"{tmp_path / 'no.py'}:make"}
    change = {k: files.get(v, v) for k, v in change.items()}
    assert main(cli_args(mnist_checkpoint, shared_data, tmp_path / "out", **change)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("cwr_fast.evaluate: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.pt"], "nothing may be written"


def test_existing_output_needs_overwrite(mnist_checkpoint, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = cli_args(mnist_checkpoint, shared_data, out, "--no-plots", attacks="fgsm")
    for flags in ([], ["--overwrite"]):  # a folder cwr_fast did not write is never replaced
        assert main(args + flags) == 2
        assert "did not write (keep.txt)" in capsys.readouterr().err and (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    (out / "keep.txt").write_text("mine")
    assert main(args + ["--overwrite"]) == 0
    assert (out / "report.json").exists() and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_while_writing_leaves_nothing(full_run, tmp_path, monkeypatch):
    report = json.loads((full_run / "report.json").read_text())

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "plot_confusion", broken_plot)
    with pytest.raises(RuntimeError, match="disk full"):
        report_module.write_report(report, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "cwr_fast.evaluate", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--tpgd-sweep" in result.stdout


def test_torchrun_two_processes_write_the_single_process_report(full_run, mnist_checkpoint, shared_data,
                                                                tmp_path):
    """`torchrun --nproc_per_node 2 -m cwr_fast.evaluate` (gloo on the CPU) gives the same report."""
    out = tmp_path / "torchrun"
    args = cli_args(mnist_checkpoint, shared_data, out, "--no-plots")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "cwr_fast.evaluate", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    sharded = json.loads((out / "report.json").read_text())
    single = json.loads((full_run / "report.json").read_text())
    assert sharded["config"]["world_size"] == 2
    for key in ("clean", "worst_case"):
        assert sharded[key]["confusion"] == single[key]["confusion"]
    assert [a["confusion"] for a in sharded["attacks"]] == [a["confusion"] for a in single["attacks"]]
    assert sharded["gains"] == single["gains"]


def test_autoattack_breakdown_in_every_report_file(mnist_robust, shared_data, tmp_path):
    """--attacks with aa: report.json, report.md, the CSV and the stacked-bar PNG carry the
    per-class, per-member breakdown, and its counts add up to the classes' images."""
    checkpoint = tmp_path / "model.pt"
    torch.save(mnist_robust.model.state_dict(), checkpoint)
    out = tmp_path / "report"
    assert main(cli_args(checkpoint, shared_data, out, attacks="pgd-5,aa:seed=0", eps=0.3, limit=40,
                         batch_size=40)) == 0
    report = json.loads((out / "report.json").read_text())
    (section,) = report["autoattack"]
    assert section["label"] == "aa:seed=0" and section["members"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    aa = next(a for a in report["attacks"] if a["label"] == "aa:seed=0")
    for r, record in zip(section["per_class"], aa["per_class"]):
        assert r["clean_wrong"] + sum(r["broken_first_by"].values()) + r["robust"] == r["n"] == 4
        assert r["robust"] == record["robust"]
        fooled = [m for m, k in r["broken_first_by"].items() if k]
        assert r["last_needed"] == (fooled[-1] if fooled else None)
    assert set(section["member_seconds"]) == set(section["members"])
    assert sum(section["overall"][m] for m in section["members"]) > 0
    rows = list(csv.reader((out / "autoattack_aa_seed=0.csv").open()))
    assert rows[0][:3] == ["class", "n", "clean wrong"] and len(rows) == 12
    assert (out / "autoattack_aa_seed=0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "## AutoAttack breakdown (aa:seed=0)" in md and "Time per member" in md


# ---- the default budget: --eps, else the checkpoint's training eps, else the dataset's ----------

@pytest.mark.parametrize("saved_config, expected_eps, source", [
    (None, 0.3, "the default of mnist-embedded"),                 # a bare state dict
    ({"eps": 0.2, "dataset": "mnist-embedded"}, 0.2, "the checkpoint's training config"),
])
def test_default_eps_follows_the_checkpoint_then_the_dataset(saved_config, expected_eps, source,
                                                             tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, (0.1309,), (0.3080,), in_channels=1)
    state = {k: v for k, v in model.state_dict().items()}
    path = tmp_path / "model.pt"
    torch.save(state if saved_config is None else {"model": state, "config": saved_config}, path)
    out = tmp_path / "report"
    rc = main(["--dataset", "mnist-embedded", "--arch", "small_cnn", "--checkpoint", str(path),
               "--attacks", "fgsm", "--limit", "20", "--out", str(out), "--no-progress", "--no-plots"])
    assert rc == 0
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["eps"] == pytest.approx(expected_eps) and config["eps_source"] == source
    assert f"eps {expected_eps:g}: {source}" in capsys.readouterr().out


# ---- --normalize: weights trained with another (or no) input normalisation -----------------------

def _bare_checkpoint(mnist_model, path):
    """The state dict of the bare network (as TRADES / MART repos save theirs): no mean/std."""
    torch.save({"state_dict": {f"module.{k[4:]}": v for k, v in mnist_model.state_dict().items()
                               if k.startswith("net.")}}, path)
    return path


def test_normalize_dataset_none_and_explicit(mnist_model, shared_data, tmp_path):
    ckpt = _bare_checkpoint(mnist_model, tmp_path / "bare.pt")
    clean = {}
    for mode in ("dataset", "0.1307,0.3081", "none"):
        out = tmp_path / mode.replace(",", "_")
        rc = main(cli_args(ckpt, shared_data, out, "--no-plots", attacks="fgsm", limit=50,
                           normalize=mode))
        assert rc == 0, mode
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["normalize"] == mode
        clean[mode] = [r["clean_correct"] for r in report["clean"]["per_class"]]
    assert clean["0.1307,0.3081"] == clean["dataset"]      # MNIST's statistics, written out
    assert clean["none"] != clean["dataset"]                # raw inputs to a normalised net
    assert sum(clean["dataset"]) >= 45                       # the net is ~95% accurate


@pytest.mark.parametrize("value, message", [("1,2,3", "MEAN,STD"), ("0.5,0", "std > 0"),
                                            ("x,y", "MEAN,STD")])
def test_normalize_bad_values(value, message, mnist_model, shared_data, tmp_path, capsys):
    ckpt = _bare_checkpoint(mnist_model, tmp_path / "bare.pt")
    assert main(cli_args(ckpt, shared_data, tmp_path / "o", attacks="fgsm", normalize=value)) == 2
    assert message in capsys.readouterr().err


def test_normalize_refused_for_a_checkpoint_with_its_own(mnist_checkpoint, shared_data, tmp_path,
                                                        capsys):
    assert main(cli_args(mnist_checkpoint, shared_data, tmp_path / "o", attacks="fgsm",
                         normalize="none")) == 2
    assert "carries its own normalisation" in capsys.readouterr().err


def test_the_eps_sweep_can_run_the_fast_autoattack_mode(mnist_checkpoint, shared_data, tmp_path):
    """--eps-sweep-attack aa:version=malt: AutoAttack strength at every eps of the sweep; the
    config records it (and only then: the default report is unchanged)."""
    out = tmp_path / "report"
    assert main(cli_args(mnist_checkpoint, shared_data, out, attacks="fgsm", eps_sweep="0,0.1",
                         eps_sweep_attack="aa:version=malt:seed=0", limit=20)) == 0
    report = json.loads((out / "report.json").read_text())
    sweep = report["sweeps"]["eps"]
    assert report["config"]["eps_sweep_attack"] == "aa:version=malt:seed=0"
    assert sweep["attack"].startswith("aa:version=malt") and sweep["overall_robust_acc"][0] == report["clean"]["accuracy"]
    assert sweep["overall_robust_acc"][1] <= report["attacks"][0]["overall"]["robust_acc"] + 1e-9  # aa-strength below fgsm
    assert main(cli_args(mnist_checkpoint, shared_data, tmp_path / "bad", eps_sweep="0.1",
                         eps_sweep_attack="malt:candidates=0")) == 2
