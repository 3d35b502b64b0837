"""The parts of `python -m cwr_fast.train` (the methods it trains with are cwr_fast.methods, the
class-wise defenses cwr_fast.defenses, device / torchrun / amp / seeds cwr_fast.runtime):

    config       TrainConfig: every option declared once, presets per dataset, the CLI parser,
                 the checks before any work (ConfigError)
    schedules    learning-rate schedules (piecewise, cosine, one-cycle) and the eps ramp
    ema          exponential moving average of the weights
    checkpoint   weights_only loading, RNG states (CheckpointError); written by cwr_fast.outputs
    data         train / held-out validation / test loaders on cwr_fast.data
    metrics      metrics.jsonl, the per-class robust-accuracy-over-epochs plot, log lines
    trainer      the loop (Trainer)
"""
