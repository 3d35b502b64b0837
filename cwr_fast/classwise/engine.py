"""The class-wise evaluation engine: clean predictions, then every attack on every clean-correct
image, batch by batch, accumulated into `ClasswiseCounts`.

    attacks = build_attacks("fgsm,pgd-20,cw-30", model, eps=0.3, track="any")
    counts = evaluate_classwise(model, loader, num_classes=10, attacks=attacks)
    counts.robust_accuracy("pgd-20")          # [C]

Cheap enough for a training loop's per-epoch check on a small class-balanced subset. Attack noise
is seeded per (batch, attack) from `seed`, so results do not depend on how batches are spread over
processes, on which other attacks run, or on the caller's RNG state (which is left untouched).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cwr_fast.attacks.attack import Attack, check_pixel_range
from cwr_fast.attacks.model_mode import attack_mode, to_channels_last
from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.runtime import amp_dtype, autocast, model_device


def _named_attacks(attacks: Mapping[str, Attack] | Sequence[Attack]) -> dict[str, Attack]:
    if isinstance(attacks, Mapping):
        named = dict(attacks)
    else:
        named = {}
        for atk in attacks:
            label = getattr(atk, "label", None) or getattr(atk, "name", type(atk).__name__)
            if label in named:
                raise ValueError(f"two attacks are both named {label!r}: pass a dict {{label: attack}}")
            named[label] = atk
    for label, atk in named.items():
        if not isinstance(atk, Attack):
            raise TypeError(f"attack {label!r} is a {type(atk).__name__}, not a cwr_fast Attack")
    return named


def _bincount2d(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int | None = None) -> Tensor:
    n_cols = n_rows if n_cols is None else n_cols
    return torch.bincount(rows * n_cols + cols, minlength=n_rows * n_cols).view(n_rows, n_cols)


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
def _predict(model: nn.Module, x: Tensor, dtype, num_classes: int) -> tuple[Tensor, Tensor]:
    """(predicted classes, number of images whose logits are not all finite)."""
    with autocast(x.device, dtype):
        logits = model(x)
    check_logits(logits, x.shape[0], num_classes)
    return logits.argmax(dim=1), (~torch.isfinite(logits).all(dim=1)).sum()


def check_logits(logits, n: int, num_classes: int) -> None:
    """The model contract: logits, a tensor [N, num_classes] (no tuple, dict or probabilities)."""
    if not isinstance(logits, Tensor):
        kind = type(logits).__name__
        hint = " with keys " + ", ".join(map(repr, list(logits)[:4])) if isinstance(logits, dict) else ""
        raise TypeError(f"the model must return logits, a tensor [N, num_classes]; it returned a {kind}"
                        f"{hint}: wrap it so that it returns the logits only (e.g. lambda x: model(x)[0])")
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape [N, num_classes] = [{n}, {num_classes}], "
                         f"got {list(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(f"the model returns {logits.shape[1]} logits per image but the data has "
                         f"{num_classes} classes")


def evaluate_classwise(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
                       attacks: Mapping[str, Attack] | Sequence[Attack], *, amp: str | None = None,
                       seed: int = 0, distributed: bool = False, progress: bool = False,
                       channels_last: bool = True,
                       device: torch.device | str | None = None) -> ClasswiseCounts:
    """Class-wise clean and robust counts of `model` on `batches` of (images in [0, 1], labels).

    attacks: {label: Attack} (or a list of attacks, labelled by their name). Each attack runs on
        every clean-correct image; use track="any" attacks for speed (the CLI does).
    amp: autocast for the clean forward pass (attacks carry their own setting).
    distributed: shard the batches over the processes of the default group (batch i goes to rank
        i mod world size; every process iterates the same batches) and all-reduce the counts.
    progress: a tqdm bar with images/s and the current attack (rank 0 only).
    channels_last: 4-D weights and images in the channels-last layout during the evaluation
        (faster convolutions with oneDNN and cuDNN; the results are the same up to rounding).
    Returns ClasswiseCounts on the CPU; the model's modes, requires_grad flags and weight tensors
    are restored.
    """
    named = _named_attacks(attacks)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    device = torch.device(device) if device is not None else model_device(model)
    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised torch.distributed process group")
        rank, world = dist.get_rank(), dist.get_world_size()
    c = num_classes
    members = {label: list(atk.member_names) for label, atk in named.items()
               if getattr(atk, "member_names", None)}
    counts = ClasswiseCounts(list(named), c, members=members)
    acc = {"clean": torch.zeros(c, c, dtype=torch.int64, device=device),
           "adv": torch.zeros(len(named), c, c, dtype=torch.int64, device=device),
           "gain": torch.zeros(len(named), len(named), c, dtype=torch.int64, device=device),
           "worst": torch.zeros(c, c, dtype=torch.int64, device=device),
           "members": {label: torch.zeros(len(names), c, dtype=torch.int64, device=device)
                       for label, names in members.items()}}
    seconds = [0.0] * len(named)
    nonfinite_logits = torch.zeros((), dtype=torch.int64, device=device)
    counts.meta["nonfinite_weights"] = sorted(
        name for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    member_seconds_before = {label: dict(getattr(named[label], "member_seconds", {})) for label in members}
    clean_dtype = amp_dtype(amp)
    bar = _progress_bar(progress and rank == 0, _len_or_none(batches))
    started = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with attack_mode(model, channels_last), torch.random.fork_rng(devices=rng_devices):
            for batch_index, (x, y) in enumerate(batches):
                if batch_index % world != rank:
                    continue
                x, y = _check_batch(x, y, c, device)
                if channels_last:
                    x = to_channels_last(x)
                t0 = time.perf_counter()
                clean_pred, nonfinite = _predict(model, x, clean_dtype, c)
                nonfinite_logits += nonfinite
                counts.clean_seconds += time.perf_counter() - t0
                correct = clean_pred == y
                acc["clean"] += _bincount2d(y, clean_pred, c)
                robust_masks = []
                worst_pred, worst_robust = clean_pred.clone(), correct.clone()
                x_attack, y_attack = x[correct], y[correct]
                for k, (label, atk) in enumerate(named.items()):
                    if bar is not None:
                        bar.set_postfix_str(label, refresh=False)
                    torch.manual_seed(batch_seed(seed, batch_index, label))
                    t0 = time.perf_counter()
                    adv_pred = clean_pred.clone()
                    if x_attack.shape[0]:
                        result = atk.run(x_attack, y_attack)
                        adv_pred[correct] = result.pred
                        if label in members:
                            hit = result.broken_by >= 0
                            acc["members"][label] += _bincount2d(result.broken_by[hit], y_attack[hit],
                                                                 len(members[label]), c)
                    seconds[k] += time.perf_counter() - t0
                    robust = adv_pred == y
                    acc["adv"][k] += _bincount2d(y, adv_pred, c)
                    newly_fooled = worst_robust & ~robust
                    worst_pred[newly_fooled] = adv_pred[newly_fooled]
                    worst_robust &= robust
                    robust_masks.append(robust)
                acc["worst"] += _bincount2d(y, worst_pred, c)
                if robust_masks:
                    r = torch.stack(robust_masks).to(torch.int64)           # [K, B]
                    onehot = torch.nn.functional.one_hot(y, c).to(torch.int64)  # [B, C]
                    # gain[i, j, c] = sum_b r[i, b] * (1 - r[j, b]) * onehot[b, c]
                    acc["gain"] += torch.einsum("ib,jb,bc->ijc", r, 1 - r, onehot)
                if bar is not None:
                    bar.update(x.shape[0] * world)
    finally:
        if bar is not None:
            bar.close()
    counts.clean_confusion = acc["clean"].cpu()
    counts.adv_confusion = acc["adv"].cpu()
    counts.gain = acc["gain"].cpu()
    counts.worst_confusion = acc["worst"].cpu()
    counts.member_broken = {label: t.cpu() for label, t in acc["members"].items()}
    counts.seconds = torch.tensor(seconds, dtype=torch.float64)
    for label in members:  # ensembles time their members (this process's share of the work)
        now = getattr(named[label], "member_seconds", {})
        counts.meta.setdefault("member_seconds", {})[label] = {
            m: now[m] - member_seconds_before[label].get(m, 0.0) for m in now}
    counts.meta["wall_seconds"] = time.perf_counter() - started
    counts.meta["nonfinite_logits"] = int(nonfinite_logits)
    if distributed:
        counts.all_reduce()
    if counts.total == 0:
        raise ValueError("no images to evaluate: the batches were empty (an empty split, or a "
                         "--limit/subset that selects nothing)")
    return counts


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
        raise TypeError("batches must yield (images, labels) tensors")
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True).long()
    if x.is_floating_point():
        check_pixel_range(x)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return x, y
