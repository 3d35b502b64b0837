"""The parts of `python -m cwr_fast.train` (the class-wise defenses it takes are in cwr_fast.defenses):

    config       presets per dataset, the CLI parser, checks before any work (ConfigError)
    methods      standard, PGD-AT, TRADES, MART, FGSM-RS on the fused ops (BatchPolicy: the
                 per-sample weights / eps / beta of a batch)
    schedules    learning-rate schedules (piecewise, cosine, one-cycle) and the eps ramp
    ema          exponential moving average of the weights
    checkpoint   atomic checkpoints, weights_only loading, RNG states (CheckpointError)
    distributed  torchrun / DDP helpers (gloo on CPU, nccl on GPU; rank 0 writes)
    data         train / held-out validation / test loaders on cwr_fast.data
    metrics      metrics.jsonl, the per-class robust-accuracy-over-epochs plot, log lines
    trainer      the loop (Trainer)
"""

from cwr_fast.training.checkpoint import CheckpointError
from cwr_fast.training.config import PRESETS, ConfigError, TrainConfig
from cwr_fast.training.methods import METHODS, BatchPolicy, Method, build_method

__all__ = ["CheckpointError", "ConfigError", "METHODS", "PRESETS", "BatchPolicy", "Method",
           "TrainConfig", "build_method"]
