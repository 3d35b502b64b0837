"""Exponential moving average of the weights (Polyak averaging), as in Gowal et al. 2020 and most
recent adversarial-training recipes: evaluated and saved beside the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights after every optimiser step, with the usual
    warm-up decay_t = min(decay, (1 + t) / (10 + t)); buffers (BatchNorm statistics) are copied.

    `ema.module` is a full model (eval mode, no gradients) to evaluate or save.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        ema_p = [p for p in self.module.parameters()]
        new_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(new_p):
            raise RuntimeError("EMA and model have different parameters")
        floats = [(e, n) for e, n in zip(ema_p, new_p) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [n.to(e.dtype) for e, n in floats], 1.0 - d)
        for e, n in zip(self.module.buffers(), model.buffers()):
            e.copy_(n)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.module.load_state_dict(state["module"])
