"""The training loop: one `Trainer` per run (see cwr_fast/train.py for the CLI).

Exact resume. Everything a step does is a function of the checkpointed state and of
(seed, epoch, batch): the data order and augmentation come from the data layer's EpochOrder and
per-epoch augmentation generator (replayed up to the saved batch on resume), and the attack's
random start uses the global RNG reseeded from (seed, epoch, batch, rank) before every step. The
learning rate and the eps ramp are pure functions of the global step. So a run resumed from any
checkpoint (epoch end, or every --ckpt-every steps) reproduces the uninterrupted run bit for bit
on the CPU (same thread count; on GPUs with --deterministic up to non-deterministic kernels).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from cwr_fast.models.checkpoint import state_dict_mismatch
from cwr_fast.classwise.pipeline import EvalSettings, Evaluation, validate
from cwr_fast.data.order import derive_seed
from cwr_fast.errors import RunError, UsageError
from cwr_fast.models.registry import build_model
from cwr_fast.training import checkpoint as ckpt
from cwr_fast import runtime
from cwr_fast.defenses import build_defense
from cwr_fast.defenses.base import RunContext
from cwr_fast.methods import build_method
from cwr_fast.outputs import save_torch, write_text
from cwr_fast.training.config import TrainConfig
from cwr_fast.training.data import build_loaders, build_test_loader
from cwr_fast.training.ema import EMA
from cwr_fast.training.metrics import epoch_line, plot_dynamics, write_history
from cwr_fast.training.schedules import LRSchedule, eps_at
from cwr_fast.classwise.report_data import Report

_STEP_PURPOSE = 0x57E9


class TrainError(UsageError, RuntimeError):
    """A run that cannot proceed (e.g. a batch size larger than the data): a usage error (exit 2)."""


class TrainingFailed(RunError):
    """A run that failed after it started (the loss diverged): exit 1, its checkpoints kept."""


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: runtime.DistInfo,
                 resume: dict | None = None, progress: bool = False, plots: bool = True,
                 final_eval: bool = True, log=print):
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        self.device = dist.device
        self.progress, self.plots, self.final_eval = progress, plots, final_eval
        self._log = log
        self.amp = runtime.resolve_amp(cfg.amp, self.device)
        runtime.seed_everything(cfg.seed, cfg.deterministic)

        self.loaders = build_loaders(cfg, self.device, dist.rank, dist.world_size)
        self.info = self.loaders.info
        self.num_classes = self.info.num_classes
        self.class_names = [str(c) for c in self.info.class_names]
        if cfg.batch_size % dist.world_size:
            raise TrainError(f"--batch-size {cfg.batch_size} is not divisible by the "
                             f"{dist.world_size} processes")
        self.steps_per_epoch = len(self.loaders.train)
        if self.steps_per_epoch < 1:
            if cfg.val_split == "holdout" and self.loaders.num_train == 0:
                raise TrainError(f"--val-per-class {cfg.val_per_class} holds out every training image "
                                 f"({self.loaders.num_val} held out, none left to train on): lower it")
            raise TrainError(f"--batch-size {cfg.batch_size} does not fit the data: only "
                             f"{self.loaders.num_train} training images"
                             f"{' (after holding out the validation images)' if cfg.val_split == 'holdout' else ''}"
                             f"; an epoch would have no full batch")
        self.total_steps = self.steps_per_epoch * cfg.epochs

        # method, class-wise policy (built together: an incompatible pair fails here), model
        self.method = build_method(cfg.method, steps=cfg.steps, beta=cfg.beta, amp=self.amp,
                                   attack_bn=cfg.attack_bn, ops_impl=cfg.ops)
        try:
            self.policy = build_defense(cfg.defense, cfg.defense_opt, method=self.method,
                                        num_classes=self.num_classes, eps=cfg.eps,
                                        alpha=cfg.alpha, beta=cfg.beta)
        except ValueError as err:  # a bad --defense-opt: a clear error (exit code 2), no traceback
            raise TrainError(str(err)) from None
        c, h, w = self.info.image_shape
        model = build_model(cfg.arch, self.num_classes, self.info.mean, self.info.std, c)
        model = self.policy.modify_model(model)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the bare model: saved, evaluated, EMA source
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(cfg.schedule, cfg.lr, self.total_steps, self.steps_per_epoch,
                                   cfg.milestones, cfg.gamma, cfg.warmup_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        self.policy_model = self.policy.averaged_model(model)  # e.g. CFA's FAWA, else None

        # state
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.best = {"mean": {"epoch": None, "value": -1.0}, "worst": {"epoch": None, "value": -1.0}}
        self._reset_sums()
        if resume is not None:
            self._load(resume)

        # execution wrappers: compiled, then DDP for the training forward
        run_model = torch.compile(model) if cfg.compile else model
        self.attack_model = run_model
        self.train_model = run_model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.train_model = DDP(run_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eval_model = (self.policy_model if self.policy_model is not None
                           else self.ema.module if self.ema is not None else self.model)

    # ---- built when the first epoch ends ----
    @functools.cached_property
    def validation(self) -> Evaluation:
        """The per-epoch check: the evaluation pipeline with --val-attack (default the run's PGD)."""
        return self._evaluation(self.cfg.val_attack or f"pgd-{self.cfg.val_steps}", progress=False)

    @functools.cached_property
    def context(self) -> RunContext:
        """What the class-wise defense may read of the run."""
        cfg = self.cfg
        return RunContext(
            method=self.method, eps=cfg.eps, alpha=cfg.alpha, num_classes=self.num_classes,
            device=self.device, amp=self.amp, seed=cfg.seed, val_attack=self.validation.labels[0],
            val_loader=self.loaders.val, model=self.model, eval_model=self.eval_model,
            validate=functools.partial(validate, self.validation, batches=self.loaders.val,
                                       class_names=self.class_names))

    # ---- logging ----
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    # ---- state ----
    def _reset_sums(self) -> None:
        c = self.num_classes
        self.sums = {"loss": torch.zeros((), dtype=torch.float64, device=self.device),
                     "n": torch.zeros(c, dtype=torch.int64, device=self.device),
                     "correct": torch.zeros(c, dtype=torch.int64, device=self.device),
                     "clean_correct": torch.zeros(c, dtype=torch.int64, device=self.device),
                     "has_clean": False,
                     "time": {"data": 0.0, "attack": 0.0, "fwd_bwd": 0.0}}

    def state_dict(self) -> dict:
        sums = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                for k, v in self.sums.items()}
        sums["time"] = dict(self.sums["time"])
        return {
            "format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "schedule": self.schedule.state_dict(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
                         "steps_per_epoch": self.steps_per_epoch},
            "epoch_sums": sums,
            "defense": self.policy.state_dict(),
            "best": self.best,
            "history": self.history,
            "rng": ckpt.rng_state(),
            "num_threads": torch.get_num_threads(),
            "world_size": self.dist.world_size,
        }

    def _load(self, state: dict) -> None:
        try:
            self.schedule.check_state_dict(state["schedule"])
            p = state["progress"]
            if p["steps_per_epoch"] != self.steps_per_epoch:
                raise ckpt.CheckpointError(
                    f"the checkpoint has {p['steps_per_epoch']} steps per epoch, this run "
                    f"{self.steps_per_epoch}: the data or the number of processes changed")
            _load_model_state(self.model, state["model"], "model")
            if self.ema is not None:
                if state["ema"] is None:
                    raise ckpt.CheckpointError("the checkpoint has no EMA weights but --ema is on")
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler.is_enabled() and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.policy.load_state_dict(state["defense"])
        except (KeyError, ValueError, RuntimeError) as err:
            if isinstance(err, ckpt.CheckpointError):
                raise
            raise ckpt.CheckpointError(f"checkpoint does not fit this run: {err}") from err
        self.epoch, self.batch, self.global_step = p["epoch"], p["batch"], p["global_step"]
        self.best = state["best"]
        self.history = list(state["history"])
        if self.dist.is_main:  # the file is the checkpoint's history, whatever happened to it since
            write_history(self.history, self.run_dir / "metrics.jsonl")
        sums = state["epoch_sums"]
        for k in ("loss", "n", "correct", "clean_correct"):
            self.sums[k] = sums[k].to(self.device)
        self.sums["has_clean"] = bool(sums["has_clean"])
        self.sums["time"] = dict(sums["time"])
        ckpt.set_rng_state(state["rng"])
        if state.get("num_threads") != torch.get_num_threads():
            self.log(f"note: the checkpoint was written with {state.get('num_threads')} CPU threads, "
                     f"this process uses {torch.get_num_threads()}: results may differ in the last bits")

    def save(self, name: str = "last.pt") -> None:
        if self.dist.is_main:
            save_torch(self.state_dict(), self.run_dir / "checkpoints" / name)

    # ---- one step ----
    def _sync(self) -> None:
        if self.device.type == "cuda" and self.cfg.time_split:
            torch.cuda.synchronize(self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        cfg = self.cfg
        torch.manual_seed(derive_seed(cfg.seed, self.epoch, self.batch, self.dist.rank, _STEP_PURPOSE))
        lr = self.schedule(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        eps_t = eps_at(self.global_step, cfg.eps, cfg.eps_warmup_epochs, self.steps_per_epoch)
        alpha_t = cfg.alpha * (eps_t / cfg.eps) if cfg.eps > 0 else cfg.alpha
        self.current = {"lr": lr, "eps": eps_t}
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch = self.policy.batch_policy(y, eps_t, alpha_t, self.method.beta)

        t0 = time.perf_counter()
        x_train = self.method.perturb(self.attack_model, x, y, batch)
        self._sync()
        t1 = time.perf_counter()
        out = self.method.loss(self.train_model, x, x_train, y, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            out.loss.backward()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self._sync()
        t2 = time.perf_counter()

        s = self.sums
        n = y.shape[0]
        s["loss"] += out.loss.detach().to(torch.float64) * n
        c = self.num_classes
        s["n"] += torch.bincount(y, minlength=c)
        s["correct"] += torch.bincount(y[out.logits.argmax(1) == y], minlength=c)
        if out.clean_logits is not None:
            s["has_clean"] = True
            s["clean_correct"] += torch.bincount(y[out.clean_logits.argmax(1) == y], minlength=c)
        s["time"]["attack"] += t1 - t0
        s["time"]["fwd_bwd"] += t2 - t1
        self.last_loss = out.loss.detach()

    # ---- epochs ----
    def _epoch_batches(self):
        loader = self.loaders.train
        loader.set_epoch(self.epoch)
        it = iter(loader)
        for _ in range(self.batch):  # replay the data position (and augmentation draws)
            next(it)
        return it

    def train(self) -> None:
        cfg = self.cfg
        bar = None
        run_start = time.perf_counter()
        steps_at_start = self.global_step
        while self.epoch < cfg.epochs:
            it = self._epoch_batches()
            if self.progress and self.dist.is_main:
                from tqdm.auto import tqdm
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch, unit="step",
                           desc=f"epoch {self.epoch + 1}/{cfg.epochs}", dynamic_ncols=True,
                           leave=False, file=sys.stderr)
            epoch_start = time.perf_counter()
            batch_start = self.batch
            t_data = time.perf_counter()
            while self.batch < self.steps_per_epoch:
                x, y = next(it)
                self._sync()
                self.sums["time"]["data"] += time.perf_counter() - t_data
                self.train_step(x, y)
                self.batch += 1
                self.global_step += 1
                if cfg.ckpt_every and self.global_step % cfg.ckpt_every == 0 \
                        and self.batch < self.steps_per_epoch:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    if self.batch % 5 == 0 or self.batch == self.steps_per_epoch:
                        self._postfix(bar, epoch_start, batch_start, run_start, steps_at_start)
                t_data = time.perf_counter()
            if bar is not None:
                bar.close()
                bar = None
            self._end_epoch(time.perf_counter() - epoch_start)

    def _postfix(self, bar, epoch_start, batch_start, run_start, steps_at_start) -> None:
        elapsed = time.perf_counter() - epoch_start
        images = (self.batch - batch_start) * self.cfg.batch_size
        done = self.global_step - steps_at_start
        per_step = (time.perf_counter() - run_start) / max(done, 1)
        eta = per_step * (self.total_steps - self.global_step)
        bar.set_postfix_str(f"loss {float(self.last_loss):.3f} lr {self.current['lr']:.3g} "
                            f"eps {self.current['eps']:.3g} {images / max(elapsed, 1e-9):.0f} img/s "
                            f"train ETA {_hms(eta)}", refresh=False)

    def _end_epoch(self, seconds: float) -> None:
        cfg = self.cfg
        s = self.sums
        n = runtime.all_reduce_sum(s["n"]).cpu()
        correct = runtime.all_reduce_sum(s["correct"]).cpu()
        clean_correct = runtime.all_reduce_sum(s["clean_correct"]).cpu()
        loss_sum = float(runtime.all_reduce_sum(s["loss"]))
        total = int(n.sum())
        epoch = self.epoch + 1
        if not math.isfinite(loss_sum):
            raise TrainingFailed(f"training diverged in epoch {epoch}: the loss is {loss_sum / max(total, 1)} "
                             f"(lower --lr, raise --eps-warmup-epochs, or use --amp off / fp16 with "
                             f"its GradScaler)")
        record = {
            "epoch": epoch, "global_step": self.global_step,
            "lr": self.schedule(self.global_step - 1),
            "eps": eps_at(self.global_step - 1, cfg.eps, cfg.eps_warmup_epochs, self.steps_per_epoch),
            "train": {
                "loss": loss_sum / max(total, 1),
                "acc": int(correct.sum()) / max(total, 1),
                "clean_acc": int(clean_correct.sum()) / max(total, 1) if s["has_clean"] else None,
                "images": total, "seconds": seconds,
                "images_per_s": total / max(seconds, 1e-9),
                "time_split": {k: round(v, 4) for k, v in s["time"].items()},
                "per_class_acc": [int(k) / int(m) if m else None for k, m in zip(correct, n)],
            },
            "val": None,
        }
        val_counts = None
        self._sync_buffers()  # a defense may validate the training weights now (RunContext.validate)
        self.policy.before_validation(epoch - 1, self.context)  # e.g. FAWA: maybe absorb the weights
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            val_counts, record["val"] = self.validate()
            self._track_best(record["val"], epoch)
        record["best"] = {k: dict(v) for k, v in self.best.items()}
        record["defense"] = self.policy.update(epoch - 1, val_counts, {"n": n, "correct": correct},
                                                self.context) or {}
        self.history.append(record)
        self.epoch, self.batch = epoch, 0
        self._reset_sums()
        self.save()
        if self.dist.is_main:
            write_history(self.history, self.run_dir / "metrics.jsonl")
            if self.plots:
                plot_dynamics(self.history, self.class_names, self.run_dir / "per_class_robust_acc.png")
        self.log(epoch_line(record, cfg.epochs))

    def _evaluation(self, attacks: str, progress: bool) -> Evaluation:
        """The evaluation pipeline with this run's budget, precision, seed and processes."""
        settings = EvalSettings(attacks=attacks, track="any", amp=self.amp, seed=self.cfg.seed,
                                progress=progress)
        return Evaluation(settings, num_classes=self.num_classes, eps=self.cfg.eps,
                          distributed=self.dist.enabled, device=self.device)

    def validate(self, model: nn.Module | None = None):
        """The per-epoch PGD check of `model` (default: the evaluated model) on the validation set:
        the pipeline's validate, the record naming which weights it checked."""
        model = self.eval_model if model is None else model
        self._sync_buffers()
        counts, record = validate(self.validation, model, self.loaders.val, self.class_names)
        which = ("model" if model is self.model else "ema" if model is not self.policy_model
                 else f"{self.policy.name} average")
        return counts, {"attack": record.pop("attack"), "eps": record.pop("eps"), "model": which, **record}

    def _sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics on every process, so that a check agrees across ranks."""
        runtime.broadcast_buffers(self.model)
        if self.ema is not None:
            runtime.broadcast_buffers(self.ema.module)

    def _track_best(self, val: dict, epoch: int) -> None:
        for key, value in (("mean", val["robust_mean"]), ("worst", val["robust_worst"])):
            if value is not None and value > self.best[key]["value"]:
                self.best[key] = {"epoch": epoch, "value": value}
                if self.dist.is_main:
                    save_torch({
                        "format": ckpt.BEST_FORMAT, "format_version": ckpt.FORMAT_VERSION,
                        "model": {k: v.detach().cpu() for k, v in self.eval_model.state_dict().items()},
                        "epoch": epoch, "criterion": f"{key} robust accuracy ({val['attack']})",
                        "value": value, "config": self.cfg.to_dict()},
                        self.run_dir / "checkpoints" / f"best_{key}.pt")

    # ---- final report ----
    def final_model(self) -> nn.Module:
        which = self.cfg.final_model
        if which == "last":
            return self.eval_model
        import copy
        path = self.run_dir / "checkpoints" / f"best_{which.split('-')[1]}.pt"
        # rank 0 reads and sends: other nodes need not share the run directory's file system
        state = ckpt.load(path, expect=ckpt.BEST_FORMAT) if self.dist.is_main else None
        state = runtime.broadcast_object(state)
        model = copy.deepcopy(self.eval_model)
        _load_model_state(model, state["model"], path.name)
        return model

    def final_report(self) -> Report | None:
        from cwr_fast.report import write_report

        cfg = self.cfg
        model = self.final_model()
        runtime.broadcast_buffers(model)
        if cfg.calibrate:
            model = self.calibrate(model)
        loader = build_test_loader(cfg, self.device, cfg.val_batch_size)
        evaluation = self._evaluation(cfg.final_attacks, progress=self.progress and self.dist.is_main)
        split = self.info.eval_split
        self.log(f"final report: {', '.join(evaluation.labels)} at eps {cfg.eps:g} on "
                 f"{loader.num_samples} {cfg.dataset} {split} images ({cfg.final_model} weights"
                 f"{', EMA' if self.ema is not None else ''}"
                 f"{', class-wise calibrated' if cfg.calibrate else ''})")
        config = {"source": "cwr_fast.train", "run_dir": str(self.run_dir), "dataset": cfg.dataset,
                  "split": split, "arch": cfg.arch, "method": cfg.method,
                  "train_eps": cfg.eps, "eps": cfg.eps, "attacks": evaluation.labels,
                  "weights": cfg.final_model + (" (EMA)" if self.ema is not None else ""),
                  "epochs": cfg.epochs, "limit": cfg.final_limit, "seed": cfg.seed,
                  "world_size": self.dist.world_size,
                  "calibrated": cfg.calibrate,
                  "calibration": "checkpoints/calibrated.pt" if cfg.calibrate else None}
        result = evaluation.run(model, loader, self.class_names, config=config,
                                dataset={"name": cfg.dataset, "split": split})
        if self.dist.is_main:
            write_report(result.report, self.run_dir / "report", plots=self.plots, overwrite=True,
                         outcomes=result.outcomes)
        return result.report

    def calibrate(self, model: nn.Module) -> nn.Module:
        """--calibrate: fits a class-wise calibration of the final model on the held-out validation
        images (never trained on), saves checkpoints/calibrated.pt (BEST_FORMAT, criterion
        'calibrated') and calibration.json, and returns the calibrated model."""
        import json

        from cwr_fast.classwise.calibration import calibrate

        cfg = self.cfg
        cal, info = calibrate(model, self.loaders.val, self.num_classes, cfg.eps, cfg, amp=self.amp,
                              seed=cfg.seed, device=self.device, log=self.log)
        info.update({"weights": cfg.final_model + (" (EMA)" if self.ema is not None else ""),
                     "data": f"held-out validation ({cfg.val_split}, {self.loaders.num_val} images)",
                     "checkpoint": "checkpoints/calibrated.pt"})
        after = info["after"]
        if self.dist.is_main:
            save_torch({
                "format": ckpt.BEST_FORMAT, "format_version": ckpt.FORMAT_VERSION,
                "model": {k: v.detach().cpu() for k, v in cal.state_dict().items()},
                "epoch": self.epoch, "criterion": "calibrated", "calibrated": True,
                "value": after["robust_worst"], "calibration": info, "config": cfg.to_dict()},
                self.run_dir / "checkpoints" / "calibrated.pt")
            write_text(json.dumps(info, indent=1) + "\n", self.run_dir / "calibration.json")
        return cal


def _load_model_state(model: nn.Module, state: dict, what: str) -> None:
    problems = state_dict_mismatch(model, state)
    if problems:
        raise ckpt.CheckpointError(f"the {what} weights in the checkpoint do not fit the model: "
                                   + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
