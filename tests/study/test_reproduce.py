"""`python -m cwr_fast.reproduce --tiny` end to end on real MNIST: every training (baselines and
defenses), the sweeps, FINDINGS.md with its plots, and a second call that resumes instead of
redoing the work."""

import json
import shutil
import subprocess
import sys

import pytest

from cwr_fast.study.reproduce import RUNS, main
from helpers.train import REPO, env


def reproduce(out, data, *extra, timeout=1500):
    cmd = [sys.executable, "-m", "cwr_fast.reproduce", "--tiny", "--data-dir", str(data),
           "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_study(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    proc = reproduce(out, shared_data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_writes_findings_for_every_run(tiny_study):
    out, proc = tiny_study
    text = (out / "FINDINGS.md").read_text()
    for section in ("## Settings", "## Summary", "## 1. Class-wise disparity", "## 2. Consistency",
                    "## 3. Stronger attacks", "## 4. Temperature-PGD", "## 5. Class-wise defenses"):
        assert section in text
    assert "Tiny smoke-test budget" in text
    result = json.loads((out / "findings.json").read_text())
    assert [r["name"] for r in result["defenses"]] == [name for name, _, _ in RUNS]
    for name in ("pgd-at", "trades"):
        b = result["baselines"][name]
        assert len(b["weight_norms"]) == 10 and all(v > 0 for v in b["weight_norms"])
        assert b["temperature"]["values"] == [1.0, 2.0]
    for plot in ("per_class_robust", "weight_norm_vs_robustness", "temperature_sweep", "confusion_pgd-at"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert (out / "compare" / "compare.md").is_file()
    # the defenses really ran with their policy: the run configs say so
    for name, _, extra in RUNS:
        config = json.loads((out / "runs" / name / "report" / "report.json").read_text())["config"]
        assert config["method"] in ("pgd-at", "trades")
    assert "calibrated" in json.dumps(json.loads(
        (out / "runs" / "cwr+calibration" / "report" / "report.json").read_text())["config"])


def test_second_call_resumes(tiny_study, shared_data):
    out, _ = tiny_study
    # an interrupted training: checkpoints kept, the summary and report not yet written
    shutil.rmtree(out / "runs" / "cfa" / "report")
    (out / "runs" / "cfa" / "summary.txt").unlink()
    (out / "sweeps" / "trades" / "report.json").unlink()
    proc = reproduce(out, shared_data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("already done") == len(RUNS) - 1 + 1
    assert "train cfa" in proc.stdout and "sweep trades" in proc.stdout
    assert "--resume" in (out / "logs" / "train-cfa.log").read_text()
    assert (out / "runs" / "cfa" / "summary.txt").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--runs", "pgd-at,nope"], "unknown run"),
    (["--dataset", "nope"], "nope"),
])
def test_bad_arguments(argv, message, capsys, tmp_path):
    assert main(["--tiny", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_two_datasets_and_seeds(shared_data, cifar_subset, tmp_path):
    """Both real datasets in one study with two seeds: each dataset's study in its own folder,
    the baselines and the best defense trained again at the second seed, one FINDINGS.md with
    the seeds' statistics, the paired tests, the per-class temperature and, on CIFAR-10, the
    comparison with the published per-class pattern."""
    out = tmp_path / "study"
    proc = reproduce(out, shared_data, "--dataset", f"mnist,{cifar_subset}", "--seeds", "0,1",
                     "--runs", "pgd-at,trades,cfa")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for study in ("mnist", "cifar10_subset"):
        runs = sorted(p.name for p in (out / study / "runs").iterdir())
        assert runs == ["cfa", "cfa@seed1", "pgd-at", "pgd-at@seed1", "trades", "trades@seed1"]
        config = json.loads((out / study / "runs" / "cfa@seed1" / "report" / "report.json").read_text())["config"]
        assert config["seed"] == 1
        result = json.loads((out / study / "findings.json").read_text())
        assert result["seeds"]["seeds"] == [0, 1] and set(result["seeds"]["runs"]) == {"pgd-at", "trades", "cfa"}
        assert len(result["seeds"]["paired"]["cfa"]) == 2
        v = result["best_defense_verdict"]
        assert result["best_defense"] == "cfa" and v["kind"] == "held-out seeds" and v["seeds"] == 1
        cfa = next(r for r in result["defenses"] if r["name"] == "cfa")
        assert 0 <= cfa["paired"]["worst"]["p"] <= 1 and len(cfa["paired"]["per_class"]) == 10
        per_class_t = result["baselines"]["pgd-at"]["per_class_T"]
        assert per_class_t["values"] == [1.0, 2.0] and len(per_class_t["chosen"]) == 10
    cifar = json.loads((out / "cifar10_subset" / "findings.json").read_text())
    assert cifar["settings"]["arch"] == "small_cnn"
    pattern = cifar["baselines"]["pgd-at"]["published_pattern"]
    assert len(pattern["least"]) >= 4 and 0 <= pattern["p"] <= 1
    text = (out / "FINDINGS.md").read_text()
    assert text.startswith("# Findings: class-wise robustness on 2 datasets")
    assert "## Findings: class-wise robustness on mnist" in text and "cifar10_subset/plots/" in text
    assert "## Budget" in text and "| cifar10_subset | npz:" in text
    floor = any(r["name"] in ("pgd-at", "trades") and r["aa"]["worst"] == 0 for name in ("mnist", "cifar10_subset")
                for r in json.loads((out / name / "findings.json").read_text())["defenses"])
    assert ("is at 0% under aa" in text) == floor
    assert "## Summary over the datasets" in text and "| cifar10_subset | 1d. the published CIFAR-10 pattern" in text
    assert "**Seeds** (0, 1" in text and "### A temperature per class" in text
    assert "Published CIFAR-10 pattern" in text and "airplane" in text
