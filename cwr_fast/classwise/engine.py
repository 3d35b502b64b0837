"""The class-wise evaluation engine: clean predictions, then every attack on every clean-correct
image, batch by batch, accumulated into `ClasswiseCounts`.

    attacks = build_attacks("fgsm,pgd-20,cw-30", model, eps=0.3, track="any")
    counts = evaluate_classwise(model, loader, num_classes=10, attacks=attacks)
    counts.robust_accuracy("pgd-20")          # [C]

Cheap enough for a training loop's per-epoch check on a small class-balanced subset. Attack noise
(and a randomised model's own, in the clean pass too) is seeded per (batch, attack) from `seed`,
so results do not depend on how batches are spread over processes, on which other attacks run,
or on the caller's RNG state (which is left untouched).
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cwr_fast.attacks.attack import Attack, attack_mode, check_pixel_range, float32_logits
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.classwise.outcomes import PerImageOutcomes
from cwr_fast.errors import UsageError
from cwr_fast.outputs import save_torch
from cwr_fast.runtime import amp_dtype, model_device, to_channels_last


class EvaluationInputError(UsageError):
    """The model, batches or attacks handed to the engine are not what it takes (labels out of
    range, images outside [0, 1], logits of another number of classes, no images): the caller's
    input, so a command line exits 2 with the message. A ValueError too."""


class EvaluationInputTypeError(EvaluationInputError, TypeError):
    """An input of the wrong kind (a model that returns a tuple, batches that are not tensors)."""


def _named_attacks(attacks: Mapping[str, Attack] | Sequence[Attack]) -> dict[str, Attack]:
    if isinstance(attacks, Mapping):
        named = dict(attacks)
    else:
        named = {}
        for atk in attacks:
            label = getattr(atk, "label", None) or getattr(atk, "name", type(atk).__name__)
            if label in named:
                raise EvaluationInputError(f"two attacks are both named {label!r}: pass a dict "
                                           "{label: attack}")
            named[label] = atk
    for label, atk in named.items():
        if not isinstance(atk, Attack):
            raise EvaluationInputTypeError(f"attack {label!r} is a {type(atk).__name__}, not a "
                                           "cwr_fast Attack")
    return named


def _progress_bar(enabled: bool, total: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", dynamic_ncols=True, leave=False)


def batch_seed(seed: int, batch_index: int, label: str) -> int:
    """The RNG seed of one attack on one batch: a function of the global batch index and the
    attack's label only, so results do not depend on sharding or on the other attacks."""
    return (seed * 1_000_003 + batch_index * 7_919 + zlib.crc32(label.encode())) % (2 ** 63)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(predicted classes, number of images whose logits are not all finite), in float32."""
    logits = float32_logits(model, x)
    check_logits(logits, x.shape[0], num_classes)
    return logits.argmax(dim=1), (~torch.isfinite(logits).all(dim=1)).sum()


def check_logits(logits, n: int, num_classes: int) -> None:
    """The model contract: logits, a tensor [N, num_classes] (no tuple, dict or probabilities)."""
    if not isinstance(logits, Tensor):
        kind = type(logits).__name__
        hint = " with keys " + ", ".join(map(repr, list(logits)[:4])) if isinstance(logits, dict) else ""
        raise EvaluationInputTypeError(
            f"the model must return logits, a tensor [N, num_classes]; it returned a {kind}{hint}: "
            "wrap it so that it returns the logits only (e.g. lambda x: model(x)[0])")
    if not logits.is_floating_point():
        raise EvaluationInputTypeError(
            f"the model must return floating-point logits; it returned {logits.dtype} "
            "(class indices or integers cannot be attacked: return the scores)")
    if logits.dim() != 2 or logits.shape[0] != n:
        raise EvaluationInputError(f"the model must return logits of shape [N, num_classes] = "
                                   f"[{n}, {num_classes}], got {list(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise EvaluationInputError(f"the model returns {logits.shape[1]} logits per image but the "
                                   f"data has {num_classes} classes")


def evaluate_classwise(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                       attacks: Mapping[str, Attack] | Sequence[Attack], *, amp: str | None = None,
                       seed: int = 0, distributed: bool = False, progress: bool = False,
                       channels_last: bool = True, device: torch.device | str | None = None,
                       per_image: bool = False, keep_adv: bool = False,
                       log: BatchLog | None = None) -> ClasswiseCounts:
    """Class-wise clean and robust counts of `model` on `batches` of (images in [0, 1], labels).

    attacks: {label: Attack} (or a list of attacks, labelled by their name). Each attack runs on
        every clean-correct image; use track="any" attacks for speed (the CLI does).
    amp: checked, and otherwise not used here: the clean pass decides which images count, so it
        runs in float32 whatever amp says, as every verdict does (attacks/precision.py; the
        attacks carry their own amp for their search).
    distributed: shard the batches over the processes of the default group (batch i goes to rank
        i mod world size; every process iterates the same batches) and all-reduce the counts.
    progress: a tqdm bar with images/s and the current attack (rank 0 only).
    channels_last: 4-D weights and images in the channels-last layout during the evaluation
        (faster convolutions with oneDNN and cuDNN; the results are the same up to rounding).
    per_image: also return what happened to each image, `counts.outcomes` (PerImageOutcomes, on
        every process); keep_adv: with the adversarial images.
    log: a BatchLog: each batch's results are saved there as soon as they are known, and batches
        found there are read instead of evaluated, so an interrupted evaluation continues where it
        stopped with the same result.
    Returns ClasswiseCounts on the CPU; the model's modes, requires_grad flags and weight tensors
    are restored. The model is in eval mode throughout, unless an attack keeps the caller's mode
    (`keeps_model_mode`: AutoAttack's version rand, APGD with eot > 1): then the clean pass, and
    those attacks, see the model in the mode the caller set (the other attacks still put it in
    eval mode while they run). counts.meta["check_flags"] {attack: [flag]}: the automatic checks
    an attack ran (AutoAttack's, on its first batch), for the report.
    """
    named = _named_attacks(attacks)
    amp_dtype(amp)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise EvaluationInputError(f"num_classes must be a positive int, got {num_classes!r}")
    device = torch.device(device) if device is not None else model_device(model)
    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
        rank, world = dist.get_rank(), dist.get_world_size()
    members = {label: list(atk.member_names) for label, atk in named.items() if atk.member_names}
    units = [atk.broken_at_unit for atk in named.values()]
    nonfinite_weights = sorted(
        name for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    member_seconds_before = {label: dict(named[label].member_seconds) for label in members}
    started = time.perf_counter()
    run = _BatchRun(model, named, num_classes, device, amp, seed, channels_last, keep_adv, per_image, log)
    parts = run.over(batches, rank, world, progress)
    outcomes = _outcomes(parts, list(named), num_classes, units, members)
    counts = outcomes.counts()
    _add_meta(counts, parts, named, members, member_seconds_before)
    counts.meta["nonfinite_weights"] = nonfinite_weights
    counts.meta["wall_seconds"] = time.perf_counter() - started
    counts.meta["nonfinite_logits"] = sum(int(r["nonfinite"]) for _, r in parts)
    if distributed:
        counts.all_reduce()
    if counts.total == 0:
        raise EvaluationInputError("no images to evaluate: the batches were empty (an empty split, "
                                   "or a --limit/subset that selects nothing)")
    if per_image:
        if distributed and world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
            outcomes = _outcomes(parts, list(named), num_classes, units, members)
        counts.outcomes = outcomes
    return counts


class _BatchRun:
    """The batches of one evaluation, each evaluated (or read back from its BatchLog) in turn."""

    def __init__(self, model, named, num_classes, device, amp, seed, channels_last, keep_adv,
                 per_image, log):
        self.model, self.named, self.num_classes, self.device = model, named, num_classes, device
        self.amp, self.seed, self.channels_last, self.keep_adv = amp, seed, channels_last, keep_adv
        self.per_image, self.log = per_image, log

    def over(self, batches, rank: int, world: int, progress: bool) -> list[tuple[int, dict]]:
        """(batch index, its record) of this process's batches (batch i is rank i mod world's)."""
        parts: list[tuple[int, dict]] = []
        indices = _dataset_indices(batches)
        bar = _progress_bar(progress and rank == 0, _len_or_none(batches))
        rng_devices = [self.device] if self.device.type == "cuda" else []
        eval_mode = not any(atk.keeps_model_mode for atk in self.named.values())
        position = 0
        try:
            with attack_mode(self.model, self.channels_last, eval_mode), \
                    torch.random.fork_rng(devices=rng_devices):
                for batch_index, (x, y) in enumerate(batches):
                    first, position = position, position + len(y)
                    if batch_index % world != rank:
                        continue
                    record = self.one(batch_index, x, y, bar, indices[first:position]
                                      if indices is not None else torch.arange(first, position))
                    parts.append((batch_index, record if self.per_image else _without_images(record)))
                    if bar is not None:
                        bar.update(len(y) * world)
        finally:
            if bar is not None:
                bar.close()
        return parts

    def one(self, batch_index: int, x, y, bar, index) -> dict:
        names = list(self.named)
        record = self.log.load(batch_index, names, (x, y)) if self.log is not None else None
        if record is None:
            record = _evaluate_batch(self.model, x, y, self.named, self.num_classes, self.device,
                                     self.amp, self.seed, batch_index, self.channels_last,
                                     self.keep_adv, bar)
            record["index"] = index
            if self.log is not None:
                self.log.save(batch_index, record, names, (x, y))
        return record


def _add_meta(counts: ClasswiseCounts, parts, named: dict, members: dict, member_seconds_before) -> None:
    """Times, the ensembles' member times, the attacks' automatic checks, non-finite logits."""
    counts.seconds = sum((r["seconds"] for _, r in parts), torch.zeros(len(named), dtype=torch.float64))
    counts.clean_seconds = sum(float(r["clean_seconds"]) for _, r in parts)
    for label in members:  # ensembles time their members (this process's share of the work)
        now = named[label].member_seconds
        counts.meta.setdefault("member_seconds", {})[label] = {
            m: now[m] - member_seconds_before[label].get(m, 0.0) for m in now}
    checked = {label: list(atk.check_flags) for label, atk in named.items() if atk.check_flags is not None}
    if checked:
        counts.meta["check_flags"] = checked


def _evaluate_batch(model, x, y, named: dict[str, Attack], c: int, device, amp, seed: int,
                    batch_index: int, channels_last: bool, keep_adv: bool, bar) -> dict:
    """One batch: the clean prediction, then each attack on the clean-correct images. Returns its
    record (CPU tensors): label, clean_pred, adv_pred [K, B], broken_at [K, B], optionally x_adv,
    seconds [K], clean_seconds, nonfinite (images with non-finite logits)."""
    x, y = _check_batch(x, y, c, device)
    if channels_last:
        x = to_channels_last(x)
    t0 = time.perf_counter()
    torch.manual_seed(batch_seed(seed, batch_index, ""))  # a randomised model's clean pass draws
    clean_pred, nonfinite = _predict(model, x, c)
    clean_seconds = time.perf_counter() - t0
    correct = clean_pred == y
    x_attack, y_attack = x[correct], y[correct]
    adv_preds, broken, images, seconds = [], [], [], []
    for label, atk in named.items():
        if bar is not None:
            bar.set_postfix_str(label, refresh=False)
        torch.manual_seed(batch_seed(seed, batch_index, label))
        t0 = time.perf_counter()
        adv_pred, broken_at = clean_pred.clone(), torch.full_like(y, -1)
        x_adv = x.clone() if keep_adv else None
        if x_attack.shape[0]:
            result = atk.run(x_attack, y_attack)
            adv_pred[correct] = result.pred
            when = result.broken_by if result.broken_by is not None else result.step
            fooled = result.pred != y_attack
            broken_at[correct] = torch.where(fooled, when if when is not None else 0, -1)
            if keep_adv:
                x_adv[correct] = result.x_adv.to(x_adv.dtype)
        seconds.append(time.perf_counter() - t0)
        adv_preds.append(adv_pred)
        broken.append(broken_at)
        images.append(x_adv)
    k = len(named)
    record = {"label": y.cpu(), "clean_pred": clean_pred.cpu(),
              "adv_pred": torch.stack(adv_preds).cpu() if k else torch.zeros(0, len(y), dtype=torch.int64),
              "broken_at": torch.stack(broken).cpu() if k else torch.zeros(0, len(y), dtype=torch.int64),
              "seconds": torch.tensor(seconds, dtype=torch.float64), "clean_seconds": clean_seconds,
              "nonfinite": int(nonfinite)}
    if keep_adv:
        record["x_adv"] = torch.stack(images).contiguous().cpu()
    return record


def _without_images(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "x_adv"}


def _outcomes(parts: list[tuple[int, dict]], attack_names: list[str], c: int, units: list[str],
              members: dict) -> PerImageOutcomes:
    parts = sorted(parts, key=lambda part: part[0])
    empty = torch.zeros(0, dtype=torch.int64)
    if not parts:
        return PerImageOutcomes(attack_names, c, empty, empty, empty,
                                torch.zeros(len(attack_names), 0, dtype=torch.int64),
                                torch.zeros(len(attack_names), 0, dtype=torch.int64),
                                broken_at_unit=units, members=members)
    return PerImageOutcomes.cat([
        PerImageOutcomes(attack_names, c, r["index"], r["label"], r["clean_pred"], r["adv_pred"],
                         r["broken_at"], x_adv=r.get("x_adv"), broken_at_unit=units, members=members)
        for _, r in parts])


def _dataset_indices(batches) -> Tensor | None:
    """The split's indices of the images, in the order a cwr_fast loader yields them (None for
    other iterables, or a shuffled order)."""
    order = getattr(batches, "order", None)
    if order is None or getattr(order, "shuffle", True) or getattr(order, "world_size", 1) != 1:
        return None
    return order.for_epoch(0)


def _len_or_none(batches) -> int | None:
    """Number of images in `batches`, when it says (cwr_fast loaders, torch DataLoaders)."""
    n = getattr(batches, "num_samples", None)
    if isinstance(n, int):
        return n
    try:
        return len(batches.dataset)
    except (AttributeError, TypeError):
        return None


def _check_batch(x, y, num_classes: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise EvaluationInputTypeError("batches must yield (images, labels) tensors")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        hint = " (labels.squeeze(1))" if y.dim() == 2 and y.shape[1] == 1 else ""
        raise EvaluationInputError(f"labels must be a tensor [N] matching the {x.shape[0]} images, "
                                   f"got shape {list(y.shape)}{hint}")
    if y.is_floating_point() and y.numel() and not bool((y == y.round()).all()):
        raise EvaluationInputError("labels must be whole class indices: a fractional float label "
                                   "would be truncated to another class")
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True).long()
    if x.is_floating_point():
        try:
            check_pixel_range(x)  # it refuses only the pixels (attacks.attack's ValueError)
        except ValueError as err:
            raise EvaluationInputError(str(err)) from None
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise EvaluationInputError(f"labels must lie in [0, {num_classes}), got range "
                                   f"[{int(y.min())}, {int(y.max())}]")
    return x, y


# ---- resuming -------------------------------------------------------------------------------------
# Per-batch results of an evaluation, saved as they are computed, so that an interrupted evaluation
# (AutoAttack on ImageNet takes hours) continues where it stopped. One file per batch, written
# atomically: a batch is either complete on disk or evaluated again. Attack noise is seeded per
# (batch, attack), so the continued evaluation equals an uninterrupted one.

class BatchLog:
    """The per-batch results of an evaluation, saved as they are computed:

        log = BatchLog("reports/imagenet.partial/attacks")
        counts = evaluate_classwise(model, loader, 1000, attacks, log=log)   # again after a kill
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, batch_index: int) -> Path:
        return self.directory / f"batch-{batch_index:07d}.pt"

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("batch-*.pt"))

    def load(self, batch_index: int, attack_names: list[str], batch: tuple | None = None) -> dict | None:
        """The saved record of a batch, or None when it was not evaluated yet. With batch (the
        images and labels being evaluated), a record saved from other images is refused."""
        path = self.path(batch_index)
        if not path.is_file():
            return None
        record = torch.load(path, map_location="cpu", weights_only=True)
        if record.get("attack_names") != attack_names:
            raise UsageError(f"{path} holds batch {batch_index} of an evaluation with the attacks "
                             f"{record.get('attack_names')}, not {attack_names}: the kept batches "
                             f"in {self.directory} belong to another evaluation (start it over with "
                             "--overwrite)")
        if batch is not None and record.get("batch_sha256") not in (None, batch_digest(*batch)):
            raise UsageError(f"{path} holds batch {batch_index} of other images or labels than "
                             f"the dataset gives now: the dataset changed since the kept batches in "
                             f"{self.directory} were evaluated (restore it, or start over with "
                             "--overwrite)")
        return record

    def save(self, batch_index: int, record: dict, attack_names: list[str],
             batch: tuple | None = None) -> None:
        extra = {} if batch is None else {"batch_sha256": batch_digest(*batch)}
        save_torch({**record, "attack_names": list(attack_names), **extra}, self.path(batch_index))


def batch_digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' dtypes, shapes and bytes (a batch's images and labels)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
