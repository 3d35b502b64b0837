"""Training methods: standard, PGD-AT, TRADES, MART and FGSM-RS, on the fused ops.

Each method turns a batch into a loss in two timed parts:

    x_train = method.perturb(attack_model, x, y, batch)      # inner maximisation, no param grads
    out = method.loss(train_model, x, x_train, y, batch)      # outer minimisation, differentiable

`batch` is a `BatchPolicy`: the budget and loss weights of this batch, as numbers or as per-sample
[N] tensors. This is the extension point of the class-wise defenses (`cwr_fast.defenses`): a
defense sets per-sample loss weights, per-sample eps (alpha scales with it) and per-sample
TRADES/MART beta, and the methods honour them.

Attack-time model mode, from each method's reference code (`attack_bn="auto"`):
  pgd-at   train mode (BatchNorm batch statistics), as Madry et al.'s cifar10_challenge and
           Rice et al. (2020); uniform random start in the eps-ball.
  fgsm-rs  train mode, as Wong et al. (2020); uniform random start, one step of alpha = 1.25 eps.
  trades   eval mode, as Zhang et al.'s code; start x + 0.001 N(0, 1), ascent on KL(f(x) || f(x')).
  mart     eval mode, as Wang et al.'s code; start x + 0.001 N(0, 1), ascent on CE.
Parameters never get gradients during the attack; the model's modes are restored afterwards.

Every attack runs on the one loop of `cwr_fast.attacks.functional.perturb`: PGD-AT and FGSM-RS
with its CE ascent and uniform start, TRADES with its start and KL gradient, MART with its start.

`ops_impl="fused"` (default) uses cwr_fast.ops: the fused CE forward+backward gives dL/dlogits, the
fused in-place PGD step moves and projects x_adv; the training CE is ops.temperature_cross_entropy.
`ops_impl="eager"` runs the same code on cwr_fast.reference (the same functions in plain PyTorch),
the baseline of bench/bench_train.py and a cross-check in tests; the module is chosen once, here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cwr_fast.attacks.attack import attack_mode
from cwr_fast.attacks.functional import perturb
from cwr_fast.ops import backend_module
from cwr_fast.runtime import amp_dtype, autocast

METHODS = ("standard", "pgd-at", "trades", "mart", "fgsm-rs")
ATTACK_BN = {"standard": None, "pgd-at": "train", "fgsm-rs": "train", "trades": "eval", "mart": "eval"}
DEFAULT_BETA = {"trades": 6.0, "mart": 6.0}
_TRADES_MART_INIT = 0.001


@dataclass
class BatchPolicy:
    """Per-batch knobs. eps, alpha, beta: numbers or [N] float tensors (per-sample);
    weight: None or [N] per-sample loss weights (the loss is mean_i w_i * loss_i)."""

    eps: float | Tensor
    alpha: float | Tensor
    weight: Tensor | None = None
    beta: float | Tensor | None = None


@dataclass
class StepOutput:
    loss: Tensor                 # scalar, to backpropagate
    logits: Tensor               # detached logits of the training inputs (adversarial if any)
    clean_logits: Tensor | None = None  # detached clean logits, when the method computes them


class Method:
    """Base class; see the module docstring."""

    name = "method"
    adversarial = True

    def __init__(self, steps: int = 10, beta: float | None = None, amp: str | None = None,
                 attack_bn: str = "auto", ops_impl: str = "fused"):
        if attack_bn not in ("auto", "train", "eval"):
            raise ValueError(f"attack_bn must be auto, train or eval, got {attack_bn!r}")
        self.ops = backend_module(ops_impl)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"attack steps must be an int >= 1, got {steps!r}")
        self.steps, self.amp, self.ops_impl = steps, amp, ops_impl
        self.dtype = amp_dtype(amp)
        self.beta = DEFAULT_BETA.get(self.name) if beta is None else float(beta)
        self.attack_bn = ATTACK_BN[self.name] if attack_bn == "auto" else attack_bn

    # ---- inner maximisation ----
    @contextlib.contextmanager
    def attack_context(self, model: nn.Module):
        """No parameter gradients; the method's train/eval mode; everything restored on exit."""
        with attack_mode(model):
            if self.attack_bn == "train":
                model.train()
            yield model

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchPolicy) -> Tensor:
        """The training inputs of (x, y): x_adv under the method's attack mode, or x."""
        if not self.adversarial:
            return x
        with self.attack_context(model):
            return self.attack(model, x, y, batch).detach()

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, batch: BatchPolicy) -> Tensor:
        """The method's inner maximisation in the model's current mode (the caller sets it, as
        `perturb` does): `steps` Linf PGD steps from `_start` (None: uniform in the eps-ball) on
        the gradient of `_loss_grad` (None: CE on y)."""
        return perturb(model, x, y, norm="linf", eps=batch.eps, alpha=batch.alpha, steps=self.steps,
                       loss="ce", random_start=True, track="final", amp=self.amp, score=False,
                       start=self._start, loss_grad=self._loss_grad(model, x), ops=self.ops).x_adv

    _start = None  # the uniform start in the eps-ball

    def _loss_grad(self, model: nn.Module, x: Tensor):
        return None  # CE on y

    # ---- outer minimisation ----
    def per_sample_loss(self, model: nn.Module, x: Tensor, x_train: Tensor, y: Tensor,
                        batch: BatchPolicy) -> tuple[Tensor, Tensor, Tensor | None]:
        """The training objective per sample, without the loss weights (differentiable [N]), the
        logits of x_train and the clean logits (None where the method does not compute them).
        Here CE(f(x_train), y)."""
        with autocast(x.device, self.dtype):
            logits = model(x_train)
        return self._ce_per_sample(logits, y), logits, None

    def loss(self, model: nn.Module, x: Tensor, x_train: Tensor, y: Tensor,
             batch: BatchPolicy) -> StepOutput:
        """mean_i w_i l_i of per_sample_loss; for CE, one fused op."""
        with autocast(x.device, self.dtype):
            logits = model(x_train)
        loss = self.ops.temperature_cross_entropy(logits, y, 1.0, weight=batch.weight, reduction="mean")
        return StepOutput(loss, logits.detach())

    def _beta(self, batch: BatchPolicy):
        return self.beta if batch.beta is None else batch.beta

    def _ce_per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        return self.ops.temperature_cross_entropy(logits, y, 1.0, reduction="none")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, beta={self.beta}, amp={self.amp}, "
                f"attack_bn={self.attack_bn}, ops={self.ops_impl})")


class Standard(Method):
    """Plain empirical risk minimisation on clean images."""

    name = "standard"
    adversarial = False


class PGDAT(Method):
    """PGD adversarial training (Madry et al., ICLR 2018): min_theta E max_{||d||<=eps} CE(f(x+d), y),
    the inner max by `steps` PGD steps of size alpha from a uniform random start."""

    name = "pgd-at"


class FGSMRS(PGDAT):
    """FGSM with random start ("fast is better than free", Wong et al., ICLR 2020): uniform start
    in the eps-ball, one signed step of alpha = 1.25 eps, projection. `steps` is 1."""

    name = "fgsm-rs"

    def __init__(self, steps: int = 1, **kwargs):
        super().__init__(steps=1, **kwargs)


class _CleanAndAdversarial(Method):
    """TRADES and MART: the attack starts at x + 0.001 N(0, I); the loss needs the clean and the
    adversarial forward passes (two forwards, as the reference code: separate BatchNorm batch
    statistics); loss() reduces per_sample_loss with the per-sample weights."""

    def _start(self, x: Tensor) -> Tensor:
        return x + _TRADES_MART_INIT * torch.randn_like(x)

    def _forwards(self, model, x, x_train) -> tuple[Tensor, Tensor]:
        with autocast(x.device, self.dtype):
            return model(x), model(x_train)

    def loss(self, model, x, x_train, y, batch):
        per_sample, logits_adv, logits_nat = self.per_sample_loss(model, x, x_train, y, batch)
        if batch.weight is not None:
            per_sample = per_sample * batch.weight
        return StepOutput(self._reduce(per_sample), logits_adv.detach(), logits_nat.detach())

    @staticmethod
    def _reduce(per_sample: Tensor) -> Tensor:
        return per_sample.mean()


class TRADES(_CleanAndAdversarial):
    """TRADES (Zhang et al., ICML 2019):
        L = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')),
        x' = argmax_{||x'-x||<=eps} KL(softmax f(x) || softmax f(x')), from x + 0.001 N(0, I).
    With per-sample weights w and beta_i: mean_i w_i (CE_i + beta_i KL_i)."""

    name = "trades"

    def _loss_grad(self, model, x):
        with torch.no_grad(), autocast(x.device, self.dtype):
            p_nat = torch.softmax(model(x).float(), dim=1)

        def kl_grad(logits: Tensor) -> Tensor:
            # d/dz sum_i KL(p_i || softmax(z_i)) = softmax(z_i) - p_i: closed form, no autograd
            return torch.softmax(logits.float(), dim=1) - p_nat
        return kl_grad

    def per_sample_loss(self, model, x, x_train, y, batch):
        logits_nat, logits_adv = self._forwards(model, x, x_train)
        ce = self._ce_per_sample(logits_nat, y)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_nat.float(), dim=1),
                      reduction="none").sum(dim=1)
        return ce + _per_sample_value(self._beta(batch), kl) * kl, logits_adv, logits_nat


class MART(_CleanAndAdversarial):
    """MART (Wang et al., ICLR 2020), as in the authors' code:
        L = BCE(f(x'), y) + beta * KL(softmax f(x) || softmax f(x')) * (1 - p_y(x)),
        BCE = CE(f(x'), y) - log(1 - max_{k != y} p_k(x')),
        x' = PGD on CE from x + 0.001 N(0, I)."""

    name = "mart"

    def per_sample_loss(self, model, x, x_train, y, batch):
        logits_nat, logits_adv = self._forwards(model, x, x_train)
        adv_probs = F.softmax(logits_adv.float(), dim=1)
        top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
        new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = (self._ce_per_sample(logits_adv, y)
               - torch.log(1.0001 - adv_probs.gather(1, new_y[:, None]).squeeze(1) + 1e-12))
        nat_probs = F.softmax(logits_nat.float(), dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(dim=1)
        robust = kl * (1.0000001 - true_probs)
        return bce + _per_sample_value(self._beta(batch), robust) * robust, logits_adv, logits_nat

    @staticmethod
    def _reduce(per_sample: Tensor) -> Tensor:
        return per_sample.sum() / per_sample.shape[0]  # the authors' sum / batch size


_CLASSES = {cls.name: cls for cls in (Standard, PGDAT, TRADES, MART, FGSMRS)}


def build_method(name: str, **kwargs) -> Method:
    if name not in _CLASSES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return _CLASSES[name](**kwargs)


def _per_sample_value(value, like: Tensor):
    if isinstance(value, Tensor):
        return value.to(like.dtype)
    return float(value)

