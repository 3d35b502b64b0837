"""Published models as `--model` sources (cwr_fast.models.sources): robustbench:NAME, timm:NAME,
torchvision:NAME. No network: the tests write seeded random weights in each source's checkpoint
format (RobustBench's own layout for robustbench:) and check that what cwr_fast loads computes the
same logits as the model built directly, and as RobustBench's own `load_model` on the same file;
the CLI runs end to end on the real CIFAR-10 subset in ../shared/data."""

import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from cwr_fast.errors import ConfigError
from cwr_fast.data import dataset_info, make_loader
from cwr_fast.evaluate import _load_model, build_parser, main
from cwr_fast.models import NormalizedModel
from cwr_fast.models import sources

REPO = Path(__file__).resolve().parents[2]
LIMIT = 20


# ---- helpers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo():
    return sources._robustbench_zoo()


def zoo_model(zoo, name: str, threat_model: str, dataset: str = "cifar10", seed: int = 0):
    """RobustBench's architecture of `name`, seeded random weights (the 'direct' model)."""
    torch.manual_seed(seed)
    entry = zoo.model_dicts[zoo.enums.BenchmarkDataset(dataset)][zoo.enums.ThreatModel(threat_model)][name]
    return entry["model"]().eval()


def weights_path(model_dir: Path, name: str, threat_model: str, dataset: str = "cifar10") -> Path:
    folder = model_dir / dataset / threat_model
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.pt"


def robustbench_checkpoint(net, layout: str) -> dict:
    """A checkpoint as RobustBench publishes them: 'state_dict' with DataParallel's 'module.'
    prefix and other entries beside it; without the mu/sigma buffers of the model definition
    (Wong2020Fast's); or under 'last' (Andriushchenko2020Understanding's)."""
    state = net.state_dict()
    if layout == "module":
        return {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 200}
    if layout == "no-mu-sigma":
        assert {"mu", "sigma"} <= set(state)
        return {"state_dict": {f"module.{k}": v for k, v in state.items() if k not in ("mu", "sigma")}}
    if layout == "fast_adversarial":  # its own torch.save(model.state_dict()): no normalisation buffers
        return {k: v for k, v in state.items() if k not in ("mu", "sigma")}
    if layout == "last":
        return {"last": dict(state), "best": {k: torch.zeros_like(v) for k, v in state.items()}}
    raise AssertionError(layout)


@pytest.fixture
def robustbench_load_model(monkeypatch):
    """RobustBench's own robustbench.utils.load_model, as the reference. Its module imports gdown
    (its Google Drive downloader, not installed: stubbed, and failing if it is ever called)."""
    gdown = types.ModuleType("gdown")
    gdown.download = lambda *a, **k: pytest.fail("RobustBench tried to download")
    monkeypatch.setitem(sys.modules, "gdown", gdown)
    if "robustbench" not in sys.modules:  # as cwr_fast does: the package without its __init__
        spec = importlib.util.find_spec("robustbench")
        monkeypatch.setitem(sys.modules, "robustbench", importlib.util.module_from_spec(spec))
    return importlib.import_module("robustbench.utils").load_model


def images(seed: int = 0, n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def cli_model(model_args: list[str], data: str) -> tuple[torch.nn.Module, dict]:
    """The model `python -m cwr_fast.evaluate` builds from these arguments (its own _load_model)."""
    args = build_parser().parse_args([*model_args, "--dataset", data, "--out", "unused"])
    model, calibrated, _ = _load_model(args, dataset_info(data), torch.device("cpu"))
    assert not calibrated
    return model, args.model_source


def run_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cwr_fast.evaluate", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def evaluate_cli(model_args: list[str], data: str, out: Path) -> dict:
    result = run_cli(*model_args, "--dataset", data, "--limit", LIMIT, "--attacks", "fgsm",
                     "--out", out, "--no-progress", "--no-plots")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worst class" in result.stdout
    return json.loads((out / "report.json").read_text())


def clean_confusion(model, data: str) -> list[list[int]]:
    """The clean confusion matrix (true class -> prediction) of `model` on the images the CLI
    evaluates with --limit LIMIT."""
    info = dataset_info(data)
    loader = make_loader(data, "test", 256, train=False, per_class=LIMIT // info.num_classes)
    confusion = [[0] * info.num_classes for _ in range(info.num_classes)]
    with torch.no_grad():
        for x, y in loader:
            for t, p in zip(y.tolist(), model.eval()(x).argmax(1).tolist()):
                confusion[t][p] += 1
    assert sum(map(sum, confusion)) == LIMIT
    predicted = {p for row in confusion for p, n in enumerate(row) if n}
    assert len(predicted) > 1, "a model predicting one class would not tell weights apart"
    return confusion


def cli_error(capsys, *args) -> str:
    assert main([*map(str, args), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwr_fast.evaluate: error: ") and err.count("\n") == 1, err
    return err


# ---- RobustBench ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,threat_model,layout", [
    ("Wong2020Fast", "Linf", "no-mu-sigma"),                 # known-failing: non-strict load
    ("Wong2020Fast", "Linf", "fast_adversarial"),            # a model trained with fast_adversarial
    ("Andriushchenko2020Understanding", "Linf", "last"),     # checkpoint['last']
    ("Sehwag2021Proxy_R18", "L2", "module"),
])
def test_robustbench_loads_as_robustbench_does(zoo, robustbench_load_model, cifar_subset, tmp_path,
                                               name, threat_model, layout):
    net = zoo_model(zoo, name, threat_model)
    torch.save(robustbench_checkpoint(net, layout), weights_path(tmp_path, name, threat_model))
    model, source = cli_model(["--model", f"robustbench:{name}", "--threat-model", threat_model,
                               "--model-dir", str(tmp_path)], cifar_subset)
    x = images()
    reference = robustbench_load_model(name, model_dir=str(tmp_path), dataset="cifar10",
                                       threat_model=threat_model)
    assert torch.equal(logits(model, x), logits(net, x))
    assert torch.equal(logits(model, x), logits(reference, x))
    other = zoo_model(zoo, name, threat_model, seed=1)
    assert not torch.allclose(logits(model, x), logits(other, x)), "the weights must matter"
    assert source == {"source": "robustbench", "name": name, "dataset": "cifar10",
                      "threat_model": threat_model, "model_dir": str(tmp_path),
                      "weights": str(tmp_path / "cifar10" / threat_model / f"{name}.pt"),
                      "normalization": "inside the model (RobustBench's definition)"}


# random-init models whose predictions on the 20 images are not all one class (DMPreActResNet
# normalises inside; Sehwag2021Proxy_R18's plain ResNet-18 predicts one class at random init)
@pytest.mark.parametrize("name,threat_model", [("Wong2020Fast", "Linf"),
                                               ("Rebuffi2021Fixing_R18_cutmix_ddpm", "L2")])
def test_robustbench_cli_end_to_end(zoo, cifar_subset, tmp_path, name, threat_model):
    net = zoo_model(zoo, name, threat_model)
    torch.save(robustbench_checkpoint(net, "module"), weights_path(tmp_path / "models", name, threat_model))
    report = evaluate_cli(["--model", f"robustbench:{name}", "--threat-model", threat_model,
                           "--model-dir", tmp_path / "models"], cifar_subset, tmp_path / "report")
    assert report["clean"]["confusion"] == clean_confusion(net, cifar_subset)
    source = report["config"]["source"]
    assert (source["source"], source["name"], source["threat_model"]) == ("robustbench", name, threat_model)
    assert report["config"]["model"] == f"robustbench:{name}" and report["config"]["checkpoint"] is None


def test_robustbench_ensemble(zoo, robustbench_load_model, tmp_path):
    """An ensemble (one file per member, <NAME>.pt_m<i>.pt) as RobustBench loads it."""
    name = "Chen2020Adversarial"
    net = zoo_model(zoo, name, "Linf")
    path = weights_path(tmp_path, name, "Linf")
    with pytest.raises(ConfigError, match=r"ensemble of 3 files, missing .*Chen2020Adversarial\.pt_m0\.pt"):
        sources.build_from_source(f"robustbench:{name}", dataset="cifar10", num_classes=10,
                                  in_channels=3, mean=None, std=None, model_dir=tmp_path)
    for i, member in enumerate(net.models):
        torch.save({"state_dict": {f"module.{k}": v for k, v in member.state_dict().items()}},
                   f"{path}_m{i}.pt")
    model, source = sources.build_from_source(f"robustbench:{name}", dataset="cifar10", num_classes=10,
                                              in_channels=3, mean=None, std=None, model_dir=tmp_path)
    assert source["weights"] == [f"{path}_m{i}.pt" for i in range(3)]
    x = images(n=2)
    reference = robustbench_load_model(name, model_dir=str(tmp_path), dataset="cifar10", threat_model="Linf")
    assert torch.equal(logits(model, x), logits(net, x))
    assert torch.equal(logits(model, x), logits(reference, x))


def test_robustbench_model_hosted_by_timm(zoo, tmp_path):
    """XCiT entries are timm models for RobustBench (timm.create_model(pretrained=True) fetches
    them): the file in the model dir is handed to timm's own pretrained loading instead."""
    import timm

    name, timm_name = "Debenedetti2022Light_XCiT-S12", "debenedetti2022light_xcit_s12_cifar10_linf"
    build = dict(dataset="cifar10", num_classes=10, in_channels=3, mean=None, std=None, model_dir=tmp_path)
    path = weights_path(tmp_path, name, "Linf")
    with pytest.raises(ConfigError) as err:
        sources.build_from_source(f"robustbench:{name}", **build)
    assert str(path.resolve()) in str(err.value) and "debenedetti2022light-xcit-s-cifar10-linf" in str(err.value)
    torch.manual_seed(0)
    net = timm.create_model(timm_name, num_classes=10, pretrained=False).eval()
    torch.save({"model": net.model.state_dict()}, path)  # the published file: the bare XCiT
    model, source = sources.build_from_source(f"robustbench:{name}", **build)
    assert source["timm_model"] == timm_name
    x = images(n=2)
    assert torch.equal(logits(model, x), logits(net, x))
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))


def test_missing_weights_file_says_where_to_put_it(capsys, cifar_subset, tmp_path):
    err = cli_error(capsys, "--model", "robustbench:Wong2020Fast", "--model-dir", tmp_path / "rb",
                    "--dataset", cifar_subset, "--out", tmp_path / "out")
    expected = (tmp_path / "rb" / "cifar10" / "Linf" / "Wong2020Fast.pt").resolve()
    assert f"put Wong2020Fast.pt at {expected}" in err
    assert "never downloads" in err and "load_model('Wong2020Fast'" in err
    assert "1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv" in err  # its Google Drive file
    assert not (tmp_path / "out").exists()


def test_default_model_dir_is_robustbenchs(capsys, cifar_subset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = cli_error(capsys, "--model", "robustbench:Sehwag2021Proxy_R18", "--threat-model", "L2",
                    "--dataset", cifar_subset, "--out", tmp_path / "out")
    assert str(tmp_path / "models" / "cifar10" / "L2" / "Sehwag2021Proxy_R18.pt") in err


@pytest.mark.parametrize("spec,threat_model,expected", [
    ("robustbench:Carmon2019Unlabeld", "Linf", "unknown RobustBench cifar10 Linf model 'Carmon2019Unlabeld'; "
                                               "close names: Carmon2019Unlabeled"),
    ("robustbench:Rony2019Decoupling", "Linf", "'Rony2019Decoupling' is not a cifar10 Linf model; it is in cifar10 L2"),
    ("timm:resnt18", None, "unknown timm architecture 'resnt18'; close names: resnet18"),
    ("torchvision:resnet181", None, "unknown torchvision classification model 'resnet181'; close names: resnet18"),
])
def test_unknown_names_list_close_ones(cifar_subset, tmp_path, spec, threat_model, expected):
    with pytest.raises(ConfigError) as err:
        sources.build_from_source(spec, dataset="cifar10", num_classes=10, in_channels=3, mean=None,
                                  std=None, threat_model=threat_model or "Linf", model_dir=tmp_path)
    assert expected in str(err.value)


def test_refused_combinations(capsys, cifar_subset, tmp_path):
    common = ["--dataset", cifar_subset, "--out", tmp_path / "out"]
    ckpt = tmp_path / "w.pt"
    torch.save({}, ckpt)
    assert "untrained" in cli_error(capsys, "--model", "timm:resnet18", *common)
    assert "needs --checkpoint" in cli_error(capsys, "--model", "torchvision:resnet18", *common)
    err = cli_error(capsys, "--model", "robustbench:Wong2020Fast", "--normalize", "none", *common)
    assert "--normalize none: RobustBench models normalise their inputs inside" in err
    err = cli_error(capsys, "--model", "robustbench:Wong2020Fast", "--checkpoint", ckpt, *common)
    assert "reads its weights from --model-dir" in err
    err = cli_error(capsys, "--arch", "small_cnn", "--checkpoint", ckpt, "--model-dir", tmp_path, *common)
    assert "--threat-model and --model-dir belong to --model robustbench:NAME" in err
    assert "exactly one of --arch" in cli_error(capsys, "--arch", "small_cnn", "--model", "timm:resnet18",
                                                "--checkpoint", ckpt, *common)
    err = cli_error(capsys, "--model", "robustbench:Standard_R50", "--dataset", "mnist", "--out", tmp_path / "o")
    assert "RobustBench's models are trained on cifar10, cifar100, imagenet" in err
    assert "--model torchvision:resnet50" in str(pytest.raises(
        ConfigError, sources.build_from_source, "robustbench:Standard_R50", dataset="imagenet",
        num_classes=1000, in_channels=3, mean=None, std=None).value)


def test_missing_packages_name_the_pip_command(monkeypatch):
    for module in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, module)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "robustbench" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"needs RobustBench's model zoo: pip install --no-deps -r "
                                          r"requirements/robustbench.txt"):
        sources.build_from_source("robustbench:Wong2020Fast", dataset="cifar10", num_classes=10,
                                  in_channels=3, mean=None, std=None)
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails as if not installed
    with pytest.raises(ConfigError, match=r"needs the package 'timm': pip install 'cwr_fast\[timm\]'"):
        sources.build_from_source("timm:resnet18", dataset="cifar10", num_classes=10, in_channels=3,
                                  mean=None, std=None)


def test_zoo_import_runs_no_robustbench_init():
    """The zoo comes without robustbench/__init__ (which needs pkg_resources, gdown, pandas and a
    module named autoattack), and leaves no placeholder package behind."""
    code = ("import sys; from cwr_fast.models.sources import _robustbench_zoo; zoo = _robustbench_zoo(); "
            "assert len(zoo.model_dicts) == 3; "
            "bad = [m for m in ('robustbench', 'robustbench.utils', 'autoattack', 'pandas', 'gdown') "
            "if m in sys.modules]; assert not bad, bad; "
            "import importlib; importlib.import_module('robustbench')")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    # a later `import robustbench` runs the real __init__, which fails here as it would without us
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, result.stderr[-2000:]
    assert "AssertionError" not in result.stderr


def test_no_download_while_a_model_is_built():
    import timm

    before = socket.socket.connect
    with pytest.raises(ConfigError, match="tried to download"):
        with sources._no_network("timm:resnet18"):
            timm.create_model("resnet18", pretrained=True)
    assert socket.socket.connect is before and "connect" not in vars(socket.socket)


# ---- timm and torchvision ------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_architecture_with_checkpoint_end_to_end(cifar_subset, tmp_path, source):
    import timm
    import torchvision

    torch.manual_seed(0)
    net = (timm.create_model("resnet18", num_classes=10) if source == "timm"
           else torchvision.models.resnet18(num_classes=10))
    checkpoint = tmp_path / "resnet18.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, checkpoint)  # the bare network's weights
    info = dataset_info(cifar_subset)
    direct = NormalizedModel(net, info.mean, info.std).eval()
    model_args = ["--model", f"{source}:resnet18", "--checkpoint", str(checkpoint)]
    model, described = cli_model(model_args, cifar_subset)
    x = images()
    assert torch.equal(logits(model, x), logits(direct, x))
    assert described == {"source": source, "name": "resnet18", "weights": str(checkpoint),
                         "normalization": {"mean": list(info.mean), "std": list(info.std)}}
    report = evaluate_cli(model_args, cifar_subset, tmp_path / "report")
    assert report["clean"]["confusion"] == clean_confusion(direct, cifar_subset)
    assert report["config"]["source"]["source"] == source


def test_timm_vision_transformer_takes_the_dataset_image_size(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    model, described = sources.build_from_source("timm:vit_tiny_patch16_224", dataset="cifar10",
                                                 num_classes=10, in_channels=3, mean=None, std=None,
                                                 image_size=(32, 32))
    assert described["img_size"] == [32, 32] and described["normalization"] == "none (raw [0, 1] inputs)"
    model.net.load_state_dict(net.state_dict())  # same shapes: a 2x2 grid of patches
    x = images(n=2)
    assert torch.equal(logits(model, x), logits(net, x))
