"""cwr_fast.study.reproduce's two entry points and its errors: a bad argument exits 2 with one
line (UsageError), a failed job exits 1 with one line (RunError), and a bug in the study's own code
keeps its traceback instead of passing for a usage error. Nothing here trains."""

import subprocess
import sys

import pytest

from cwr_fast.errors import RunError, UsageError
from cwr_fast.study import reproduce as R
from cwr_fast.study.document import _settings_lines
from helpers.train import REPO, env


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120)


def test_both_module_names_run_the_same_command_line(tmp_path):
    old, new = run_module("cwr_fast.reproduce", "--help"), run_module("cwr_fast.study.reproduce", "--help")
    assert old.returncode == new.returncode == 0 and old.stdout == new.stdout
    assert "usage: python -m cwr_fast.reproduce" in old.stdout and "--seeds" in old.stdout
    bad = run_module("cwr_fast.study.reproduce", "--tiny", "--jobs", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip() == "cwr_fast.reproduce: error: --jobs must be >= 1, got 0"
    assert not (tmp_path / "x").exists()


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="unknown run"):
        R.selected_runs("pgd-at,nope")
    for seeds in ("0,a", "1,1"):
        with pytest.raises(UsageError, match="--seeds"):
            R.parse_seeds(R.build_parser().parse_args(["--seeds", seeds]))
    assert issubclass(UsageError, ValueError)  # code that caught the old ValueErrors still does


@pytest.mark.parametrize("argv", [["--seeds", "1,1"], ["--eps", "2"], ["--dataset", "mnist,mnist"],
                                  ["--val-attack", "nope"], ["--val-attack", "aa:version=malt:targets=x"]])
def test_bad_arguments_exit_2_before_any_output(argv, capsys, tmp_path):
    assert R.main(["--tiny", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwr_fast.reproduce: error: ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_bug_while_planning_keeps_its_traceback(monkeypatch, tmp_path):
    def broken_plan(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(R, "plan", broken_plan)
    with pytest.raises(ValueError, match="an internal bug"):
        R.main(["--tiny", "--out", str(tmp_path / "x")])


def test_a_failed_job_is_a_run_error_naming_its_log(tmp_path):
    job = R.Job("sweep x", [sys.executable, "-c", "print('diverged'); raise SystemExit(3)"],
                tmp_path / "logs" / "sweep-x.log", tmp_path / "x.done")
    with pytest.raises(R.ReproduceError, match="exit 3") as caught:
        R.run_jobs([job], 1, log=lambda _: None)
    assert isinstance(caught.value, RunError) and isinstance(caught.value, RuntimeError)
    assert str(job.log) in str(caught.value) and "diverged" in str(caught.value)


def test_a_failed_job_exits_1_with_one_line(monkeypatch, capsys, tmp_path):
    def failing(jobs, parallel, log=print):
        raise R.ReproduceError("train pgd-at failed (exit 1); its log: LOG")

    monkeypatch.setattr(R, "run_jobs", failing)
    assert R.main(["--tiny", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == "cwr_fast.reproduce: error: train pgd-at failed (exit 1); its log: LOG\n"


def test_val_attack_reaches_every_training_and_no_sweep(tmp_path):
    def planned(*extra):
        return R.plan_studies(R.build_parser().parse_args(["--tiny", "--out", str(tmp_path / "x"), *extra]), "tiny")

    studies, jobs, _ = planned("--val-attack", "aa:version=malt")
    trainings = [j for j in jobs if j.name.startswith("train ")]
    assert len(trainings) == len(R.RUNS) and len(jobs) > len(trainings)
    for job in jobs:
        given = job.argv[job.argv.index("--val-attack") + 1] if "--val-attack" in job.argv else None
        assert given == ("aa:version=malt" if job in trainings else None), job.name
    settings = studies["mnist"].settings
    assert settings["val_attack"] == "aa:version=malt"
    assert any("`aa:version=malt`" in line for line in _settings_lines(settings))

    studies, jobs, _ = planned()  # the default: no flag, no key, no line
    assert not any("--val-attack" in j.argv for j in jobs) and "val_attack" not in studies["mnist"].settings
    assert not any("per-epoch check" in line for line in _settings_lines(studies["mnist"].settings))
