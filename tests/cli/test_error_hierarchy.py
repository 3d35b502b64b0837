"""One error hierarchy (cwr_fast.errors, issue 27): every error class cwr_fast raises on purpose is a
UsageError (the command lines exit 2 with one line) or a RunError (exit 1, one line) and keeps its
old built-in base; anything else, an internal bug, keeps its traceback. Evaluate's options are
declared once (EvalSettings, EvaluateCommand, CalibrationConfig), and evaluating a model loads no
training, method or defense code."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys

import pytest
import torch

from cwr_fast.classwise.engine import EvaluationInputError, EvaluationInputTypeError
from cwr_fast.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from cwr_fast.errors import ConfigError, RunError, UsageError
from cwr_fast.models.checkpoint import CheckpointMismatchError, CheckpointNotFoundError
from cwr_fast.outputs import NoSpaceError, OutputError, OutputExists
from cwr_fast.runtime import RendezvousError
from cwr_fast.training.checkpoint import CheckpointError
from cwr_fast.training.trainer import TrainError, TrainingFailed

from conftest import REPO


@pytest.mark.parametrize("cls, kind, builtin", [
    (ConfigError, UsageError, ValueError), (OutputError, UsageError, ValueError),
    (OutputExists, UsageError, ValueError), (RendezvousError, UsageError, ValueError),
    (CheckpointMismatchError, UsageError, ValueError), (CheckpointError, UsageError, ValueError),
    (CheckpointNotFoundError, UsageError, FileNotFoundError), (TrainError, UsageError, RuntimeError),
    (DatasetError, UsageError, RuntimeError), (DatasetNotFoundError, UsageError, FileNotFoundError),
    (ChecksumError, UsageError, RuntimeError), (EvaluationInputError, UsageError, ValueError),
    (EvaluationInputTypeError, UsageError, TypeError),
    (TrainingFailed, RunError, RuntimeError), (NoSpaceError, RunError, OSError),
])
def test_each_error_class_is_a_usage_or_a_run_error_and_keeps_its_builtin_base(cls, kind, builtin):
    assert issubclass(cls, kind) and issubclass(cls, builtin)
    assert not issubclass(cls, UsageError if kind is RunError else RunError)


def test_a_full_disk_is_a_run_error_and_an_oserror_with_its_errno():
    err = NoSpaceError("/out/report.json")
    assert err.errno == errno.ENOSPC and err.filename == "/out/report.json"
    assert str(err) == "no space left while writing /out/report.json; free space and run with --resume"


def _evaluate_args(tmp_path):
    return ["--arch", "small_cnn", "--checkpoint", str(tmp_path / "weights.pt"), "--out",
            str(tmp_path / "report")]


@pytest.mark.parametrize("error", [ValueError("an internal bug"), TypeError("an internal bug")])
def test_evaluate_keeps_the_traceback_of_an_internal_value_or_type_error(error, monkeypatch, tmp_path):
    import cwr_fast.evaluate as evaluate

    def broken(args):
        raise error

    monkeypatch.setattr(evaluate, "run", broken)
    with pytest.raises(type(error), match="an internal bug"):
        evaluate.main(_evaluate_args(tmp_path))


@pytest.mark.parametrize("error, code", [(ConfigError("--eps is wrong"), 2),
                                         (DatasetError("no such split"), 2),
                                         (RunError("the workers died"), 1),
                                         (NoSpaceError("/out/x"), 1)])
def test_evaluate_ends_a_usage_or_run_error_with_one_line(error, code, monkeypatch, tmp_path, capsys):
    import cwr_fast.evaluate as evaluate

    def refused(args):
        raise error

    monkeypatch.setattr(evaluate, "run", refused)
    assert evaluate.main(_evaluate_args(tmp_path)) == code
    err = capsys.readouterr().err
    assert err == f"cwr_fast.evaluate: error: {error}\n"


@pytest.mark.parametrize("error, code", [(None, None), (ConfigError("--lr is wrong"), 2),
                                         (TrainingFailed("the loss diverged"), 1),
                                         (NoSpaceError("/run/last.pt"), 1)])
def test_train_ends_a_usage_or_run_error_with_one_line_and_keeps_a_bugs_traceback(
        error, code, monkeypatch, capsys):
    import cwr_fast.train as train

    def fails(args):
        raise error if error is not None else ValueError("an internal bug")

    monkeypatch.setattr(train, "run", fails)
    monkeypatch.setattr(train.runtime, "die_with_parent", lambda: None)
    if error is None:
        with pytest.raises(ValueError, match="an internal bug"):
            train.main([])
        return
    assert train.main([]) == code
    assert capsys.readouterr().err == f"cwr_fast.train: error: {error}\n"


def test_a_checkpoint_of_another_class_count_says_so_by_type(tmp_path):
    from cwr_fast.models import build_model, load_weights

    five = tmp_path / "five.pt"
    torch.save(build_model("small_cnn", 5, mean=[0.5], std=[0.5], in_channels=1).state_dict(), five)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_weights(build_model("small_cnn", 10, mean=[0.5], std=[0.5], in_channels=1), five)
    assert caught.value.shapes_differ
    state = build_model("small_cnn", 10, mean=[0.5], std=[0.5], in_channels=1).state_dict()
    fewer = tmp_path / "fewer.pt"
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i != 2}, fewer)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_weights(build_model("small_cnn", 10, mean=[0.5], std=[0.5], in_channels=1), fewer)
    assert not caught.value.shapes_differ and "missing" in str(caught.value)


def test_evaluates_options_are_declared_once_and_the_parser_is_derived_from_them():
    from cwr_fast.classwise.calibration import CalibrationConfig
    from cwr_fast.classwise.pipeline import EvalSettings
    from cwr_fast.evaluate import EvaluateCommand, build_parser

    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    declared = {f.name: f for cls in (EvalSettings, EvaluateCommand, CalibrationConfig)
                for f in dataclasses.fields(cls)}
    assert sorted(actions) == sorted(declared)
    for name, f in declared.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert actions[name].default == default, name
    assert "--no-channels-last" in actions["channels_last"].option_strings
    assert parser.parse_args(["--no-progress", "--save-adv-images"]).progress is False


def test_evaluating_a_model_loads_no_training_method_or_defense_code():
    code = ("import sys, torch\n"
            "import cwr_fast.evaluate, cwr_fast.api\n"
            "from cwr_fast.attacks.spec import build_attacks\n"
            "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
            "build_attacks('aa,fgsm,pgd-2', model, eps=0.1, num_classes=10)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('cwr_fast.training', "
            "'cwr_fast.methods', 'cwr_fast.defenses'))))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# ---- user input is refused at the source; an internal ValueError is not a usage error -------------

def test_the_input_error_classes_are_usage_errors_keeping_their_builtin_base():
    from cwr_fast.errors import MissingInput, UsageTypeError
    from cwr_fast.models.registry import ModelCodeError

    for cls, builtin in ((MissingInput, FileNotFoundError), (UsageTypeError, TypeError),
                         (ModelCodeError, ValueError)):
        assert issubclass(cls, UsageError) and issubclass(cls, builtin) and not issubclass(cls, RunError)


@pytest.fixture
def own_data(tmp_path):
    """A user's npz dataset of 20 MNIST-sized images and a small_cnn checkpoint for it."""
    import numpy as np

    from cwr_fast.models import build_model

    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    np.savez(tmp_path / "mine.npz", test_images=images, test_labels=labels)
    torch.save(build_model("small_cnn", 10, (0.5,), (0.5,), 1).state_dict(), tmp_path / "m.pt")
    (tmp_path / "models.py").write_text("def broken(num_classes):\n    raise KeyError('no such layer')\n")
    return tmp_path


def _own_args(root, *model):
    model = model or ("--arch", "small_cnn", "--checkpoint", str(root / "m.pt"))
    return ["--dataset", f"npz:{root / 'mine.npz'}", "--split", "test", *model, "--attacks", "fgsm",
            "--eps", "0.1", "--no-plots", "--device", "cpu", "--out", str(root / "report")]


@pytest.mark.parametrize("model, message", [
    (("--model", "missing.py:make"), "model file not found: missing.py"),
    (("--model", "{root}/models.py:broken"), "the model factory broken(num_classes) raised: KeyError"),
    (("--arch", "nope", "--checkpoint", "{root}/m.pt"), "unknown architecture 'nope'"),
    (("--arch", "small_cnn", "--checkpoint", "{root}/m.pt", "--loader", "ffcv"),
     "loader 'ffcv' reads a .beton"),
])
def test_evaluate_refuses_a_bad_model_or_loader_with_one_line_and_exit_2(model, message, own_data,
                                                                         capsys):
    import cwr_fast.evaluate as evaluate

    args = _own_args(own_data, *(m.format(root=own_data) for m in model))
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwr_fast.evaluate: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (own_data / "report").exists()


@pytest.mark.parametrize("where", ["model", "loader"])
def test_evaluate_keeps_the_traceback_of_a_value_error_deep_inside_its_run(where, own_data,
                                                                           monkeypatch):
    """Planted where the old `_user_input` shim turned any ValueError into a usage error (exit 2):
    while the model is built, and while the loader is built."""
    import cwr_fast.data.loader
    import cwr_fast.evaluate as evaluate
    import cwr_fast.models.registry

    def internal_bug(*args, **kwargs):
        raise ValueError("an internal bug")

    if where == "model":
        monkeypatch.setattr(cwr_fast.models.registry, "NormalizedModel", internal_bug)
    else:
        monkeypatch.setattr(cwr_fast.data.loader, "DeviceTransform", internal_bug)
    with pytest.raises(ValueError, match="an internal bug") as err:
        evaluate.main(_own_args(own_data))
    assert not isinstance(err.value, UsageError)
    assert not (own_data / "report").exists()


def test_train_and_evaluate_catch_usage_errors_by_class_only(monkeypatch, capsys, tmp_path):
    """A missing input of cwr_fast's is a MissingInput (exit 2); a bare FileNotFoundError or
    FileExistsError is not caught by name any more: it keeps its traceback."""
    import cwr_fast.evaluate as evaluate
    import cwr_fast.train as train
    from cwr_fast.errors import MissingInput

    for bare in (FileNotFoundError("/data/gone"), FileExistsError("/run/lock")):
        def fails(args, bare=bare):
            raise bare

        monkeypatch.setattr(train, "run", fails)
        monkeypatch.setattr(evaluate, "run", fails)
        monkeypatch.setattr(train.runtime, "die_with_parent", lambda: None)
        with pytest.raises(type(bare)):
            train.main([])
        with pytest.raises(type(bare)):
            evaluate.main(_evaluate_args(tmp_path))

    def missing(args):
        raise MissingInput("no .beton at /data/x.beton")

    monkeypatch.setattr(train, "run", missing)
    monkeypatch.setattr(evaluate, "run", missing)
    assert train.main([]) == 2 and evaluate.main(_evaluate_args(tmp_path)) == 2
    assert capsys.readouterr().err == ("cwr_fast.train: error: no .beton at /data/x.beton\n"
                                       "cwr_fast.evaluate: error: no .beton at /data/x.beton\n")
