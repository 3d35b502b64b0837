"""The model zoo. Every zoo model takes images in [0, 1]: normalisation lives inside it.

    model = build_model("preact_resnet18", num_classes=10, mean=info.mean, std=info.std)
    load_weights(model, "checkpoint.pt")          # a state dict of the model or of model.net
    factory = load_factory("my_models.py:make")   # any model class a user has
"""

from cwr_fast.models.checkpoint import CheckpointMismatchError, extract_state_dict, load_weights
from cwr_fast.models.normalize import NormalizedModel
from cwr_fast.models.preact_resnet import PreActResNet, preact_resnet18
from cwr_fast.models.registry import ARCHITECTURES, build_model, call_factory, canonical_name, load_factory
from cwr_fast.models.resnet import resnet50
from cwr_fast.models.small_cnn import SmallCNN
from cwr_fast.models.wide_resnet import WideResNet, wrn34_10

__all__ = ["ARCHITECTURES", "CheckpointMismatchError", "NormalizedModel", "PreActResNet", "SmallCNN",
           "WideResNet", "build_model", "call_factory", "canonical_name", "extract_state_dict",
           "load_factory", "load_weights", "preact_resnet18", "resnet50", "wrn34_10"]
