"""WAT: Worst-class Adversarial Training (`--defense wat`).

Boqi Li and Weiwei Liu. "WAT: Improve the Worst-class Robustness in Adversarial Training."
AAAI 2023 (arXiv:2302.04025); authors' code https://github.com/boqili/WAT
(worst_class_adversarial_training.py), whose update and defaults are used here.

The training objective mixes the C class-conditional losses and the average loss with weights
from a no-regret (Hedge / exponentiated-gradient) learner over C + 1 "experts" (class 1..C, and
the average as expert C+1). After every epoch e the evaluated model is attacked on the held-out
validation images and the per-expert validation losses are measured,

    L_k^e = mean over validation images of class k of l(x, y)      (k = 1..C),
    L_{C+1}^e = mean over all validation images of l(x, y),

with l the run's adversarial objective: for TRADES l = CE(f(x), y) + beta KL(f(x) || f(x')), x'
the TRADES KL attack at the run's eps (as the authors); for the other methods l = CE(f(x'), y),
x' a PGD attack (the run's eps, alpha and attack steps, random start). Then Hedge on the
cumulative losses:

    p_k = exp(eta * sum_{s<=e} L_k^s) / sum_j exp(eta * sum_{s<=e} L_j^s)     (k = 1..C+1),

and the training loss of the next epoch is, as in the authors' code (w = C p),

    L_train = (1/N) sum_i w_{y_i} l_i + w_{C+1} (1/N) sum_i l_i  =  (1/N) sum_i (w_{y_i} + w_{C+1}) l_i,

i.e. the per-sample loss weight of class k is class_weight_k = C (p_k + p_{C+1}). A class with a
large validation loss gains weight exponentially fast. p starts uniform (the authors start from
all-ones weights, 2 per sample; uniform p gives 2C/(C+1)). Default eta = 0.1 (authors' code).

The validation losses are computed here, in update(), from the evaluated model on
the validation loader (batched, on the run's device, under the run's autocast), every epoch, with a
private RNG stream seeded from (seed, epoch) so the training RNG and exact resume are untouched.
With several processes every process measures the whole validation set (same result everywhere).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cwr_fast.defenses.base import ClasswisePolicy, float_option, register_defense

_VAL_PURPOSE = 0x3A7


@register_defense
class WAT(ClasswisePolicy):
    """Hedge weights over the C class losses and the average loss; see the module docstring."""

    name = "wat"

    def __init__(self, num_classes: int, eps: float, alpha: float, beta: float | None, *,
                 eta: float = 0.1):
        super().__init__(num_classes, eps, alpha, beta)
        self.eta = float_option(self.name, "eta", eta, low=0.0, low_open=True)
        c = num_classes
        self.cum_loss = torch.zeros(c + 1, dtype=torch.float64)   # sum over epochs of L_k
        self.probs = torch.full((c + 1,), 1.0 / (c + 1), dtype=torch.float64)
        self.class_weight = self._weights()

    def _weights(self) -> Tensor:
        c = self.num_classes
        return (c * (self.probs[:c] + self.probs[c])).to(torch.float32)

    def hedge(self, losses: Tensor) -> None:
        """One Hedge step with this epoch's [C + 1] validation losses (class 1..C, average)."""
        losses = torch.as_tensor(losses, dtype=torch.float64).cpu()
        if losses.shape != (self.num_classes + 1,):
            raise ValueError(f"expected {self.num_classes + 1} losses, got shape {tuple(losses.shape)}")
        self.cum_loss = self.cum_loss + losses
        self.probs = torch.softmax(self.eta * self.cum_loss, dim=0)  # stable exp-normalisation
        self.class_weight = self._weights()

    def update(self, epoch: int, val_counts, train_counts: dict, context=None) -> dict:
        if context is None:
            raise ValueError("defense 'wat' needs the run's context (validation losses)")
        losses = validation_losses(context, epoch)
        self.hedge(losses)
        c = self.num_classes
        return {"val_loss": [float(v) for v in losses[:c]], "val_loss_avg": float(losses[c]),
                "probs": [float(v) for v in self.probs[:c]], "prob_avg": float(self.probs[c]),
                "weight": [float(v) for v in self.class_weight]}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({"cum_loss": self.cum_loss, "probs": self.probs, "eta": self.eta})
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cum_loss = state["cum_loss"].to(torch.float64)
        self.probs = state["probs"].to(torch.float64)

    def describe(self) -> dict:
        return {"name": self.name, "eta": self.eta}


@torch.no_grad()
def _loss_and_counts(model: nn.Module, method, x: Tensor, y: Tensor, eps: float, alpha: float,
                     steps: int, amp: str | None, num_classes: int):
    from cwr_fast.attacks.functional import perturb
    from cwr_fast.runtime import amp_dtype, autocast
    from cwr_fast.methods import BatchPolicy

    if method.name == "trades":  # the method's own attack and loss, in the caller's (eval) mode
        batch = BatchPolicy(eps=eps, alpha=alpha)
        with torch.enable_grad():
            x_adv = method.attack(model, x, y, batch).detach()
        per_sample = method.per_sample_loss(model, x, x_adv, y, batch)[0]
    else:
        dtype = amp_dtype(amp)
        with torch.enable_grad():
            x_adv = perturb(model, x, y, norm="linf", eps=eps, alpha=alpha, steps=steps, loss="ce",
                            random_start=True, track="final", amp=amp, score=False).x_adv
        with autocast(x.device, dtype):
            adv = model(x_adv).float()
        per_sample = F.cross_entropy(adv, y, reduction="none")
    per_sample = per_sample.to(torch.float64)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=x.device).index_add_(0, y, per_sample)
    counts = torch.bincount(y, minlength=num_classes)
    return sums, counts


def validation_losses(context, epoch: int) -> Tensor:
    """[C + 1] float64 on the CPU: per-class mean adversarial validation loss of the evaluated
    model and the mean over all validation images (the run's eps, alpha, attack steps and method;
    context: cwr_fast.defenses.base.RunContext)."""
    from cwr_fast.attacks.attack import attack_mode
    from cwr_fast.data.order import derive_seed

    device, c, method = context.device, context.num_classes, context.method
    model = context.eval_model
    sums = torch.zeros(c, dtype=torch.float64, device=device)
    counts = torch.zeros(c, dtype=torch.int64, device=device)
    rng_devices = [device] if device.type == "cuda" else []
    with attack_mode(model), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(derive_seed(context.seed, epoch, _VAL_PURPOSE))
        for x, y in context.val_loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True).long()
            s, n = _loss_and_counts(model, method, x, y, context.eps, context.alpha,
                                    method.steps, context.amp, c)
            sums += s
            counts += n
    sums, counts = sums.cpu(), counts.cpu()
    per_class = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
    total = sums.sum() / max(int(counts.sum()), 1)
    return torch.cat([per_class, total.view(1)])
