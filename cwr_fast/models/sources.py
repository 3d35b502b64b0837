"""Published models as `--model` sources: `robustbench:NAME`, `timm:NAME`, `torchvision:NAME`.

    model, info = build_from_source("robustbench:Carmon2019Unlabeled", dataset="cifar10",
                                    num_classes=10, in_channels=3, mean=None, std=None,
                                    threat_model="Linf", model_dir="models")
    model, info = build_from_source("timm:resnet18", dataset="cifar10", num_classes=10,
                                    in_channels=3, mean=info.mean, std=info.std)
    load_weights(model, "resnet18_cifar10.pt")    # timm / torchvision: the caller's checkpoint

Every model takes images in [0, 1]. Nothing is ever downloaded: RobustBench's weights are read
from `model_dir` in RobustBench's own layout, `<model_dir>/<dataset>/<threat_model>/<NAME>.pt`
(what `robustbench.utils.load_model(NAME, model_dir=...)` writes on a machine with network);
timm and torchvision architectures are built without pretrained weights and take a checkpoint.

How RobustBench is imported. The registry's robustbench 1.1.1 cannot be imported as a package
here: its `__init__` imports its evaluation and download code, which needs `pkg_resources`
(gone from current setuptools), gdown, pandas and a module named `autoattack` (the registry's
AutoAttack is `pyautoattack`). Aliasing `sys.modules['autoattack']` to pyautoattack would fix only
one of these, would change what every later `import autoattack` in the process gets, and would
still pull in download code we must never call. The model definitions do not need any of it:
`robustbench.model_zoo` imports only torch, torchvision, timm, pyyaml, geotorch and torchdiffeq.
So `_robustbench_zoo()` registers an EMPTY module object for the package `robustbench` (made from
its import spec, so it has the package's `__path__`, without executing its `__init__`), imports
`robustbench.model_zoo` beneath it, and then removes that placeholder again: the zoo modules stay
imported, and a later `import robustbench` behaves exactly as it would have without us. The
loading logic of `robustbench.utils.load_model` for a local file (checkpoint keys, prefix
removal, per-model and per-dataset special cases, non-strict loading of its known-failing models)
is reproduced in `_load_robustbench`, with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import pickle
import socket
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cwr_fast.errors import ConfigError, UsageError
from cwr_fast.models.normalize import NormalizedModel

SOURCES = ("robustbench", "timm", "torchvision")
THREAT_MODELS = ("Linf", "L2", "corruptions")
DEFAULT_MODEL_DIR = "./models"  # RobustBench's own default
# RobustBench's datasets and their class counts (robustbench.utils.DATASET_CLASSES)
ROBUSTBENCH_DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
INSTALL = {
    "robustbench": "pip install --no-deps -r requirements/robustbench.txt (a checkout of "
                   "cwr_fast; it pins RobustBench's model zoo and what it imports), or pip "
                   "install 'cwr_fast[robustbench]'",
    "timm": "pip install 'cwr_fast[timm]' (or pip install timm)",
}

# robustbench.utils._safe_load_state_dict: models whose published checkpoints lack buffers the
# model definition has (e.g. mu/sigma); RobustBench loads these non-strictly on these messages
_KNOWN_FAILING = {
    "Andriushchenko2020Understanding", "Augustin2020Adversarial", "Engstrom2019Robustness",
    "Pang2020Boosting", "Rice2020Overfitting", "Rony2019Decoupling", "Wong2020Fast",
    "Hendrycks2020AugMix_WRN", "Hendrycks2020AugMix_ResNeXt",
    "Kireev2021Effectiveness_Gauss50percent", "Kireev2021Effectiveness_AugMixNoJSD",
    "Kireev2021Effectiveness_RLAT", "Kireev2021Effectiveness_RLATAugMixNoJSD",
    "Kireev2021Effectiveness_RLATAugMix", "Chen2020Efficient", "Wu2020Adversarial",
    "Augustin2020Adversarial_34_10", "Augustin2020Adversarial_34_10_extra",
    "Diffenderfer2021Winning_LRR", "Diffenderfer2021Winning_LRR_CARD_Deck",
    "Diffenderfer2021Winning_Binary", "Diffenderfer2021Winning_Binary_CARD_Deck",
    "Huang2022Revisiting_WRN-A4", "Bai2024MixedNUTS",
}
_FAILURE_MESSAGES = (
    'Missing key(s) in state_dict: "mu", "sigma".',
    'Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"',
    'Missing key(s) in state_dict: "normalize.mean", "normalize.std"',
    'Unexpected key(s) in state_dict: "conv1.scores"',
    'Missing key(s) in state_dict: "mean", "std".',
)
# ImageNet models whose definition has no normalisation wrapper (robustbench.utils.load_model
# adds the 'model.' prefix for all others)
_IMAGENET_NO_PREFIX = {
    "Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2",
    "Xu2024MIMIR_Swin-B", "Xu2024MIMIR_Swin-L",
}
_IMAGENET_SWIN_FILTER = {
    "Liu2023Comprehensive_Swin-B", "Liu2023Comprehensive_Swin-L", "Mo2022When_Swin-B",
    "RodriguezMunoz2024Characterizing_Swin-B", "RodriguezMunoz2024Characterizing_Swin-L",
}


@dataclass(frozen=True)
class SourceSpec:
    """`robustbench:[DATASET/]NAME`, `timm:NAME` or `torchvision:NAME`, parsed."""
    source: str
    name: str
    dataset: str | None = None  # robustbench only: the dataset the model was trained on


def is_source_spec(text: str | None) -> bool:
    """Whether a --model value names a published model (robustbench:, timm:, torchvision:)."""
    return isinstance(text, str) and text.partition(":")[0] in SOURCES and ":" in text


def parse_source_spec(text: str) -> SourceSpec:
    source, _, name = text.partition(":")
    if source not in SOURCES:
        raise ConfigError(f"--model {text!r}: not one of {', '.join(s + ':NAME' for s in SOURCES)}")
    name = name.strip()
    dataset = None
    if source == "robustbench" and "/" in name:
        dataset, _, name = name.partition("/")
        if dataset not in ROBUSTBENCH_DATASETS:
            raise ConfigError(f"--model {text!r}: RobustBench's datasets are "
                              f"{', '.join(ROBUSTBENCH_DATASETS)}, not {dataset!r}")
    if not name:
        raise ConfigError(f"--model {text!r}: give the model's name, e.g. {source}:"
                          + {"robustbench": "Carmon2019Unlabeled", "timm": "resnet18",
                             "torchvision": "resnet18"}[source])
    return SourceSpec(source, name, dataset)


def build_from_source(spec: str | SourceSpec, *, dataset: str, num_classes: int, in_channels: int,
                      mean: Sequence[float] | None, std: Sequence[float] | None,
                      threat_model: str = "Linf", model_dir: str | Path | None = None,
                      image_size: Sequence[int] | None = None) -> tuple[nn.Module, dict]:
    """(a model that takes images in [0, 1], a dict describing what was loaded).

    robustbench: the zoo's architecture with its weights read from
    `<model_dir>/<dataset>/<threat_model>/<NAME>.pt` (it normalises inside; mean/std unused).
    dataset is the RobustBench dataset (cifar10, cifar100, imagenet), unless the spec names it
    (robustbench:cifar100/NAME). timm / torchvision: the architecture with num_classes outputs,
    no pretrained weights, wrapped in NormalizedModel(net, mean, std); load a checkpoint into it
    afterwards (cwr_fast.models.checkpoint.load_weights). image_size (H, W) is passed to timm
    architectures that take an img_size (vision transformers). Raises ConfigError, also where
    timm's or torchvision's constructor refuses the model for this dataset (a ValueError or
    TypeError of theirs).
    """
    spec = parse_source_spec(spec) if isinstance(spec, str) else spec
    if spec.source == "robustbench":
        return _build_robustbench(spec, dataset=spec.dataset or dataset, num_classes=num_classes,
                                  threat_model=threat_model,
                                  model_dir=Path(model_dir if model_dir is not None else DEFAULT_MODEL_DIR))
    try:
        if spec.source == "timm":
            net, extra = _build_timm(spec.name, num_classes, in_channels, image_size)
        else:
            net, extra = _build_torchvision(spec.name, num_classes, in_channels)
    except (ValueError, TypeError) as err:
        if isinstance(err, UsageError):
            raise
        raise ConfigError(f"--model {spec.source}:{spec.name} cannot be built for {num_classes} classes "
                          f"of {in_channels}-channel images: {type(err).__name__}: {err}") from err
    model = NormalizedModel(net, mean, std)
    normalization = ({"mean": list(mean), "std": list(std)} if mean is not None
                     else "none (raw [0, 1] inputs)")
    return model, {"source": spec.source, "name": spec.name, "weights": None,
                   "normalization": normalization, **extra}


# ---- timm and torchvision ------------------------------------------------------------------------

def _import(package: str):
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as err:
        raise ConfigError(f"--model {package}:NAME needs the package {err.name!r}: "
                          f"{INSTALL.get(package, 'pip install ' + package)}") from err


def _unknown(kind: str, name: str, known: Sequence[str], hint: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if not close:  # e.g. a family name: resnet -> resnet18, resnet34, ...
        close = sorted(k for k in known if k.lower().startswith(name.lower()[:4]))[:5]
    return ConfigError(f"unknown {kind} {name!r}" + (f"; close names: {', '.join(close)}" if close else "")
                       + f" ({hint})")


def _build_timm(name: str, num_classes: int, in_channels: int,
                image_size: Sequence[int] | None) -> tuple[nn.Module, dict]:
    timm = _import("timm")
    if not timm.is_model(name):
        raise _unknown("timm architecture", name, timm.list_models(),
                       f"{len(timm.list_models())} names: timm.list_models()")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    extra = {}
    if image_size is not None:
        try:  # vision transformers are built for one input size; CNNs do not take img_size
            with _no_network(f"timm:{name}"):
                net = timm.create_model(name, img_size=tuple(image_size), **kwargs)
            return net, {"img_size": list(image_size)}
        except TypeError as err:
            if "img_size" not in str(err):
                raise
    with _no_network(f"timm:{name}"):
        net = timm.create_model(name, **kwargs)
    return net, extra


def _build_torchvision(name: str, num_classes: int, in_channels: int) -> tuple[nn.Module, dict]:
    from torchvision import models

    known = models.list_models(module=models)  # the classification models
    key = name.lower()
    if key not in known:
        raise _unknown("torchvision classification model", name, known,
                       "torchvision.models.list_models(module=torchvision.models)")
    if in_channels != 3:
        raise ConfigError(f"torchvision:{name} takes 3-channel images; this dataset has "
                          f"{in_channels} (use timm:NAME, which builds any in_chans)")
    with _no_network(f"torchvision:{name}"):
        net = models.get_model(key, weights=None, num_classes=num_classes)
    return net, {}


# ---- RobustBench ---------------------------------------------------------------------------------

def _robustbench_zoo():
    """robustbench.model_zoo, imported without running robustbench/__init__ (module docstring)."""
    zoo = sys.modules.get("robustbench.model_zoo")
    if zoo is not None:
        return zoo
    try:
        spec = importlib.util.find_spec("robustbench")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise ConfigError(f"--model robustbench:NAME needs RobustBench's model zoo: {INSTALL['robustbench']}")
    placeholder = None
    if "robustbench" not in sys.modules:
        placeholder = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
        sys.modules["robustbench"] = placeholder
    try:
        return importlib.import_module("robustbench.model_zoo")
    except ModuleNotFoundError as err:
        raise ConfigError(f"RobustBench's model zoo needs the package {err.name!r}: "
                          f"{INSTALL['robustbench']}") from err
    finally:
        if placeholder is not None and sys.modules.get("robustbench") is placeholder:
            del sys.modules["robustbench"]


@contextlib.contextmanager
def _no_network(what: str):
    """Refuses any connection while third-party model code runs: some zoo constructors fetch
    pretrained weights themselves (pretrained=True), and cwr_fast must never download."""
    had_own = "connect" in vars(socket.socket)
    saved_connect, saved_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(*args, **kwargs):
        raise ConfigError(f"{what} tried to download something while being built; cwr_fast never "
                          "downloads: this model cannot be evaluated offline as it is")

    socket.socket.connect = refuse
    socket.getaddrinfo = refuse
    try:
        yield
    finally:
        if had_own:
            socket.socket.connect = saved_connect
        else:
            del socket.socket.connect
        socket.getaddrinfo = saved_getaddrinfo


def _rm_substr_from_state_dict(state_dict: Mapping, substr: str) -> OrderedDict:
    """robustbench.utils.rm_substr_from_state_dict, as it is: a key CONTAINING substr loses its
    first len(substr) characters."""
    return OrderedDict((key[len(substr):] if substr in key else key, value)
                       for key, value in state_dict.items())


def _add_substr_to_state_dict(state_dict: Mapping, substr: str) -> OrderedDict:
    return OrderedDict((substr + key, value) for key, value in state_dict.items())


def _safe_load_state_dict(model: nn.Module, model_name: str, state_dict: Mapping,
                          dataset: str, path: Path) -> nn.Module:
    """robustbench.utils._safe_load_state_dict; a mismatch is a CheckpointMismatchError."""
    from cwr_fast.models.checkpoint import CheckpointMismatchError

    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        if (model_name in _KNOWN_FAILING or dataset == "imagenet") and any(
                msg in str(err) for msg in _FAILURE_MESSAGES):
            model.load_state_dict(state_dict, strict=False)
        else:
            first = " ".join(str(err).split())[:600]
            raise CheckpointMismatchError(f"{path} does not fit RobustBench's {model_name}: {first}") from err
    except (AttributeError, TypeError) as err:  # not a dict of tensors
        raise CheckpointMismatchError(f"{path} does not hold a state dict for {model_name}: {err}") from err
    return model


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot read {path} with torch.load(weights_only=True): {first}. If you trust the file, "
            f"convert it once: python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save(c, '{path}')\" (which keeps only what weights_only can read if c holds "
            "tensors and plain containers; else save c['state_dict'])") from err


def _fetch_hint(name: str, model_dir: Path, dataset: str, threat_model: str, gdrive) -> str:
    ids = gdrive if isinstance(gdrive, list) else [gdrive]
    return (f"cwr_fast never downloads; on a machine with network, "
            f"robustbench.utils.load_model('{name}', model_dir='{model_dir}', dataset='{dataset}', "
            f"threat_model='{threat_model}') saves it there (or download the Google Drive file"
            f"{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}); then copy it here, or pass "
            f"--model-dir with the folder that holds {dataset}/{threat_model}/")


def _zoo_entry(zoo, name: str, dataset: str, threat_model: str) -> dict:
    enums = zoo.enums
    by_dataset = zoo.model_dicts[enums.BenchmarkDataset(dataset)]
    threat = enums.ThreatModel(threat_model)
    if threat not in by_dataset:
        raise ConfigError(f"RobustBench has no {dataset} models for threat model {threat_model}; "
                          f"it has {', '.join(t.value for t in by_dataset)} (--threat-model)")
    models = by_dataset[threat]
    if name in models:
        return models[name]
    elsewhere = [f"{d.value} {t.value}" for d, tms in zoo.model_dicts.items()
                 for t, ms in tms.items() if name in ms]
    if elsewhere:
        raise ConfigError(f"RobustBench's {name!r} is not a {dataset} {threat_model} model; it is in "
                          f"{', '.join(elsewhere)} (--threat-model, or robustbench:DATASET/{name})")
    close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
    raise ConfigError(f"unknown RobustBench {dataset} {threat_model} model {name!r}"
                      + (f"; close names: {', '.join(close)}" if close else "")
                      + f" ({len(models)} names: robustbench.model_zoo.models.model_dicts)")


def _build_robustbench(spec: SourceSpec, *, dataset: str, num_classes: int, threat_model: str,
                       model_dir: Path) -> tuple[nn.Module, dict]:
    name = spec.name
    threat_model = _robustbench_threat_model(name, dataset, num_classes, threat_model)
    zoo = _robustbench_zoo()
    entry = _zoo_entry(zoo, name, dataset, threat_model)
    folder = model_dir / dataset / threat_model
    path = folder / f"{name}.pt"
    info = {"source": "robustbench", "name": name, "dataset": dataset, "threat_model": threat_model,
            "model_dir": str(model_dir), "weights": str(path),
            "normalization": "inside the model (RobustBench's definition)"}
    if "preprocessing" in entry:
        info["preprocessing"] = entry["preprocessing"]
    timm = sys.modules.get("timm") or _import("timm")
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
    if timm.is_model(timm_name):
        return _build_robustbench_timm(timm, timm_name, name, path, num_classes, info), info
    gdrive = entry.get("gdrive_id")
    if gdrive is None or "model" not in entry:
        raise ConfigError(f"RobustBench's {name} has neither a checkpoint nor a timm model")
    fetch_hint = _fetch_hint(name, model_dir, dataset, threat_model, gdrive)
    if not isinstance(gdrive, list):
        return _load_robustbench_single(entry, name, dataset, path, fetch_hint).eval(), info
    # an ensemble: one file per member, <NAME>.pt_m<i>.pt
    files = [Path(f"{path}_m{i}.pt") for i in range(len(gdrive))]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"RobustBench weights not found: {name} is an ensemble of {len(files)} "
                          f"files, missing {', '.join(str(f.resolve()) for f in missing)} "
                          f"({fetch_hint})")
    with _no_network(f"robustbench:{name}"):
        model = entry["model"]()
    info["weights"] = [str(f) for f in files]
    for i, file in enumerate(files):
        checkpoint = _torch_load(file)
        try:
            state_dict = _rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
        except (KeyError, TypeError, IndexError, AttributeError):
            state_dict = _rm_substr_from_state_dict(_mapping(checkpoint, file), "module.")
        _load_ensemble_member(model, name, i, state_dict, dataset, file)
    return model.eval(), info


def _robustbench_threat_model(name: str, dataset: str, num_classes: int, threat_model: str) -> str:
    """The zoo's folder for `threat_model`, once the dataset and class count are checked."""
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ConfigError(f"RobustBench's models are trained on {', '.join(ROBUSTBENCH_DATASETS)}; "
                          f"--dataset {dataset} is none of them (for a copy of one, e.g. an npz: "
                          f"or folder: source, name it: --model robustbench:cifar10/{name})")
    if ROBUSTBENCH_DATASETS[dataset] != num_classes:
        raise ConfigError(f"RobustBench's {dataset} models have {ROBUSTBENCH_DATASETS[dataset]} "
                          f"classes, the evaluated data {num_classes}")
    # robustbench.utils.load_model: the zoo has only a `corruptions` folder for corruptions_3d
    threat_model = threat_model.replace("_3d", "")
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"--threat-model must be one of {', '.join(THREAT_MODELS)}, got {threat_model!r}")
    return threat_model


def _load_robustbench_single(entry: dict, name: str, dataset: str, path: Path,
                             fetch_hint: str) -> nn.Module:
    """A RobustBench model with one checkpoint file, loaded as robustbench.utils.load_model does."""
    if dataset == "imagenet" and "Standard" in name:
        raise ConfigError(f"RobustBench's {name} is torchvision's ImageNet model with its "
                          "pretrained weights, not a RobustBench checkpoint: evaluate it as "
                          "--model torchvision:resnet50 --checkpoint FILE --normalize dataset, "
                          "FILE being torchvision.models.resnet50(weights='IMAGENET1K_V1')'s "
                          "state dict saved on a machine with network")
    if not path.is_file():
        raise ConfigError(f"RobustBench weights not found: put {name}.pt at {path.resolve()} "
                          f"({fetch_hint})")
    with _no_network(f"robustbench:{name}"):
        model = entry["model"]()
    checkpoint = _torch_load(path)
    if "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding":
        checkpoint = _key(checkpoint, "last", path)  # the last model (choices: last, best)
    try:
        state_dict = _rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
        state_dict = _rm_substr_from_state_dict(state_dict, "model.")
    except (KeyError, TypeError, IndexError, AttributeError):
        state_dict = _rm_substr_from_state_dict(_mapping(checkpoint, path), "module.")
        state_dict = _rm_substr_from_state_dict(state_dict, "model.")
    if dataset == "imagenet":
        if name in _IMAGENET_SWIN_FILTER:  # checkpoint of an older timm's Swin
            try:
                from timm.models.swin_transformer import checkpoint_filter_fn
                state_dict = checkpoint_filter_fn(state_dict, model.model)
            except Exception:  # as RobustBench: keep the state dict as it is
                pass
        if name not in _IMAGENET_NO_PREFIX:  # the normalisation wrapper's `model.`
            state_dict = _add_substr_to_state_dict(state_dict, "model.")
    return _safe_load_state_dict(model, name, state_dict, dataset, path)


def _load_ensemble_member(model: nn.Module, name: str, i: int, state_dict, dataset: str,
                          file: Path) -> None:
    """Member i of a RobustBench ensemble, from its file's state dict, into `model`."""
    if name.startswith("Bai2023Improving"):
        comp = model.comp_model
        if i < 2:
            comp.models[i] = _safe_load_state_dict(comp.models[i], name, state_dict, dataset, file).eval()
        else:
            comp.policy_net = _safe_load_state_dict(comp.policy_net, name,
                                                    _key(state_dict, "model", file), dataset, file)
            comp.bn = _safe_load_state_dict(comp.bn, name, _key(state_dict, "bn", file), dataset, file)
    elif name.startswith("Bai2024MixedNUTS"):
        if i == 0:
            model.std_model = _safe_load_state_dict(model.std_model, name, state_dict, dataset, file)
        elif i == 1:
            if dataset == "imagenet":
                from timm.models.swin_transformer import checkpoint_filter_fn
                state_dict = checkpoint_filter_fn(state_dict, model.rob_model.model)
                state_dict = _add_substr_to_state_dict(state_dict, "model.")
            model.rob_model = _safe_load_state_dict(model.rob_model, name, state_dict, dataset, file)
        else:
            raise ConfigError(f"{name}: unexpected checkpoint {file}")
    else:
        model.models[i] = _safe_load_state_dict(model.models[i], name, state_dict, dataset, file).eval()


def _build_robustbench_timm(timm, timm_name: str, name: str, path: Path, num_classes: int,
                            info: dict) -> nn.Module:
    """A RobustBench model that is registered in timm (XCiT, DeiT, AlexNet entries): RobustBench
    creates it with timm's pretrained=True, which downloads the weights from the URL of its
    pretrained config; here the file at `path` is the state dict handed to the same loading code
    (its filter function and strict loading) instead."""
    url = timm.models.get_pretrained_cfg(timm_name).url
    info["timm_model"] = timm_name
    if not path.is_file():
        raise ConfigError(f"RobustBench weights not found: put {name}.pt at {path.resolve()} "
                          f"(cwr_fast never downloads; RobustBench loads this model through timm, "
                          f"which fetches {url}: download that file on a machine with network and "
                          "save it under that name)")
    checkpoint = _torch_load(path)
    overlay = {"state_dict": _mapping(checkpoint, path), "file": None, "url": None,
               "hf_hub_id": None, "source": None}
    with _no_network(f"robustbench:{name}"):
        try:
            model = timm.create_model(timm_name, num_classes=num_classes, pretrained=True,
                                      pretrained_cfg_overlay=overlay)
        except RuntimeError as err:
            from cwr_fast.models.checkpoint import CheckpointMismatchError

            first = " ".join(str(err).split())[:600]
            raise CheckpointMismatchError(f"{path} does not fit RobustBench's {name}: {first}") from err
    return model.eval()


def _mapping(checkpoint, path: Path) -> Mapping:
    if not isinstance(checkpoint, Mapping):
        raise ConfigError(f"{path} holds a {type(checkpoint).__name__}, not a dict of tensors")
    return checkpoint


def _key(checkpoint, key: str, path: Path):
    checkpoint = _mapping(checkpoint, path)
    if key not in checkpoint:
        raise ConfigError(f"{path} has no key {key!r} (RobustBench reads its weights from "
                          f"checkpoint[{key!r}]); its keys: {sorted(map(str, checkpoint))[:10]}")
    return checkpoint[key]
