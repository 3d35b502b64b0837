"""Per-image outcomes of an evaluation: what each attack did to each image, one .npz file.

    outcomes = PerImageOutcomes.load("reports/mnist/adv.npz")
    outcomes.robust("pgd-20")               # [N] bool
    outcomes.counts()                       # the ClasswiseCounts of the report, recomputed
    classwise.analysis.report_from_outcomes(outcomes)   # the report, rebuilt by the report layer

Pure data: nothing here builds or reads a report (analysis.describe_outcomes fills `meta`).

Schema of the file (numpy arrays; N images, K attacks in evaluation order):
    index       [N] int64   the image's index in the evaluated split (its position in the data when
                            the loader does not know the split's indices)
    label       [N] int64   true class
    clean_pred  [N] int64   prediction on the clean image
    adv_pred    [K, N] int64  prediction on attack k's adversarial image (the clean prediction for
                            images the model already misclassifies: they are not attacked)
    broken_at   [K, N] int64  what fooled the image first, in the unit `broken_at_unit[k]`: "step"
                            (gradient attacks: the iterate, 0 = the start point, restart r counted
                            from r * (steps + 1)), "member" (AutoAttack: the index into
                            members[label]), "fooled" (attacks that do not say: 0); -1 where
                            attack k did not fool it or did not run on it
    x_adv       [K, N, C, H, W] float32, optional  the adversarial images (clean images where the
                            attack did not run)
    meta        a JSON string: {"schema", "attack_names", "broken_at_unit", "members",
                            "num_classes", "class_names", "dataset", "config", "attacks"}
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cwr_fast.classwise.counts import ClasswiseCounts
from cwr_fast.outputs import write_atomic

OUTCOMES_SCHEMA = "cwr_fast.per_image"
# what a damaged, truncated or foreign .npz raises while it is read (np.load, json, the arrays)
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, EOFError,
                RecursionError, zipfile.BadZipFile, pickle.UnpicklingError)


def _why(err: Exception) -> str:
    """Why a .npz could not be read, in words (np.load calls any non-zip file 'pickled data')."""
    text = str(err)
    if "pickled" in text or isinstance(err, (zipfile.BadZipFile, EOFError, pickle.UnpicklingError)):
        return "not a complete .npz file (damaged, truncated or another format)"
    return text or type(err).__name__


def _meta(data) -> dict:
    meta = json.loads(str(data["meta"]))
    if not isinstance(meta, dict):
        raise ValueError("its meta is not a JSON object")
    return meta
UNITS = ("step", "member", "fooled")
_ARRAYS = ("index", "label", "clean_pred", "adv_pred", "broken_at")


@dataclass
class PerImageOutcomes:
    attack_names: list[str]
    num_classes: int
    index: Tensor
    label: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    broken_at: Tensor
    x_adv: Tensor | None = None
    broken_at_unit: list[str] = field(default_factory=list)
    members: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)   # class_names, dataset, config, attacks (describe_outcomes)

    def __post_init__(self):
        k, n = len(self.attack_names), self.label.shape[0]
        for name in _ARRAYS:
            expected = (k, n) if name in ("adv_pred", "broken_at") else (n,)
            if tuple(getattr(self, name).shape) != expected:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {expected}")
        if not self.broken_at_unit:
            self.broken_at_unit = ["member" if a in self.members else "fooled" for a in self.attack_names]
        if len(self.broken_at_unit) != k or any(u not in UNITS for u in self.broken_at_unit):
            raise ValueError(f"broken_at_unit must give one of {UNITS} per attack, got {self.broken_at_unit}")

    def __len__(self) -> int:
        return self.label.shape[0]

    def robust(self, attack: str) -> Tensor:
        """[N] bool: the image is classified correctly after `attack` (so also when clean)."""
        return self.adv_pred[self._k(attack)] == self.label

    def _k(self, attack: str) -> int:
        if attack not in self.attack_names:
            raise KeyError(f"no attack {attack!r}; the outcomes have {self.attack_names}")
        return self.attack_names.index(attack)

    @classmethod
    def cat(cls, parts: list["PerImageOutcomes"]) -> "PerImageOutcomes":
        """The outcomes of consecutive parts (batches) of one evaluation, in order."""
        first = parts[0]
        images = [p.x_adv for p in parts]
        return cls(first.attack_names, first.num_classes,
                   *(torch.cat([getattr(p, name) for p in parts], dim=-1) for name in _ARRAYS),
                   x_adv=torch.cat(images, dim=1) if all(t is not None for t in images) else None,
                   broken_at_unit=list(first.broken_at_unit), members=dict(first.members),
                   meta=dict(first.meta))

    def sorted_by_index(self) -> "PerImageOutcomes":
        order = torch.argsort(self.index)
        return PerImageOutcomes(
            self.attack_names, self.num_classes, *(getattr(self, n)[..., order] for n in _ARRAYS),
            x_adv=None if self.x_adv is None else self.x_adv[:, order],
            broken_at_unit=list(self.broken_at_unit), members=dict(self.members), meta=dict(self.meta))

    def counts(self) -> ClasswiseCounts:
        """The class-wise counts these outcomes amount to (those of the engine, without timings)."""
        c, y = self.num_classes, self.label
        counts = ClasswiseCounts(list(self.attack_names), c, members=dict(self.members))
        counts.clean_confusion = _confusion(y, self.clean_pred, c)
        robust = self.adv_pred == y                                               # [K, N]
        counts.adv_confusion = torch.stack([_confusion(y, p, c) for p in self.adv_pred]) \
            if self.attack_names else torch.zeros(0, c, c, dtype=torch.int64)
        onehot = torch.nn.functional.one_hot(y, c).to(torch.int64)               # [N, C]
        r = robust.to(torch.int64)
        counts.gain = torch.einsum("in,jn,nc->ijc", r, 1 - r, onehot)             # robust to i, not j
        worst_pred, still_robust = self.clean_pred.clone(), self.clean_pred == y
        for k in range(len(self.attack_names)):     # the first attack, in order, that fools it
            newly_fooled = still_robust & ~robust[k]
            worst_pred[newly_fooled] = self.adv_pred[k][newly_fooled]
            still_robust &= robust[k]
        counts.worst_confusion = _confusion(y, worst_pred, c)
        for label, names in self.members.items():
            at = self.broken_at[self._k(label)]
            hit = at >= 0
            counts.member_broken[label] = _confusion(at[hit], y[hit], len(names), c)
        return counts

    # ---- the file ----
    def save(self, path: str | os.PathLike) -> Path:
        """Writes the .npz file (schema above), atomically."""
        meta = {"schema": OUTCOMES_SCHEMA, "attack_names": self.attack_names,
                "broken_at_unit": self.broken_at_unit, "members": self.members,
                "num_classes": self.num_classes, **self.meta}
        arrays = {name: getattr(self, name).numpy() for name in _ARRAYS}
        if self.x_adv is not None:
            arrays["x_adv"] = self.x_adv.numpy()
        return write_atomic(path, "wb", lambda f: np.savez_compressed(
            f, meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PerImageOutcomes":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = _meta(data)
                arrays = {name: torch.from_numpy(data[name].astype(np.int64)) for name in _ARRAYS}
                x_adv = torch.from_numpy(data["x_adv"]) if "x_adv" in data.files else None
        except _READ_ERRORS as err:
            raise ValueError(f"cannot read per-image outcomes from {path}: {_why(err)}") from None
        if meta.get("schema") != OUTCOMES_SCHEMA:
            raise ValueError(f"{path} is not a cwr_fast per-image outcomes file (--save-adv)")
        own = ("schema", "attack_names", "broken_at_unit", "members", "num_classes")
        try:
            n, k = arrays["label"].shape[0], len(meta["attack_names"])
            if not (type(meta["num_classes"]) is int and meta["num_classes"] > 0
                    and all(a.shape == (n,) for a in (arrays["index"], arrays["label"], arrays["clean_pred"]))
                    and arrays["adv_pred"].shape == (k, n) and arrays["broken_at"].shape == (k, n)):
                raise ValueError("its arrays do not fit each other")
            return cls(meta["attack_names"], meta["num_classes"], **arrays, x_adv=x_adv,
                       broken_at_unit=meta["broken_at_unit"], members=meta["members"],
                       meta={k: v for k, v in meta.items() if k not in own})
        except _READ_ERRORS as err:
            raise ValueError(f"cannot read per-image outcomes from {path}: damaged ({err})") from None


def _confusion(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int | None = None) -> Tensor:
    n_cols = n_rows if n_cols is None else n_cols
    return torch.bincount(rows * n_cols + cols, minlength=n_rows * n_cols).view(n_rows, n_cols)


# ---- the compact form in every report: one bit per image and attack -------------------------------

ROBUST_FILE = "outcomes.npz"
ROBUST_SCHEMA = "cwr_fast.robust_bits"
CLEAN, WORST_CASE = "clean", "worst case"


@dataclass
class RobustBits:
    """Which images each attack left correctly classified: what paired comparisons of two models
    on the same images need (cwr_fast.classwise.paired), saved as `outcomes.npz` in every report
    directory. File: index [N] int64, label [N] int64, clean and robust as np.packbits of [N] and
    [K, N] booleans (little bit order), meta JSON {schema, attack_names, num_classes, n}."""
    attack_names: list[str]
    num_classes: int
    index: np.ndarray       # [N] int64
    label: np.ndarray       # [N] int64
    clean: np.ndarray       # [N] bool: classified correctly without attack
    robust: np.ndarray      # [K, N] bool: correctly classified after attack k

    @classmethod
    def from_outcomes(cls, outcomes: PerImageOutcomes) -> "RobustBits":
        y = outcomes.label
        robust = (outcomes.adv_pred == y).numpy().reshape(len(outcomes.attack_names), len(y))
        return cls(list(outcomes.attack_names), outcomes.num_classes, outcomes.index.numpy(),
                   y.numpy(), (outcomes.clean_pred == y).numpy(), robust)

    def correct(self, accuracy: str) -> np.ndarray:
        """[N] bool for `accuracy`: "clean", an attack's label, or "worst case" (every attack)."""
        if accuracy == CLEAN:
            return self.clean
        if accuracy == WORST_CASE:
            return self.robust.all(axis=0) & self.clean
        if accuracy not in self.attack_names:
            raise KeyError(f"no attack {accuracy!r}; the outcomes have {self.attack_names}")
        return self.robust[self.attack_names.index(accuracy)]

    def save(self, path: str | os.PathLike) -> Path:
        meta = {"schema": ROBUST_SCHEMA, "attack_names": self.attack_names,
                "num_classes": self.num_classes, "n": int(len(self.label))}
        return write_atomic(path, "wb", lambda f: np.savez_compressed(
            f, meta=np.array(json.dumps(meta)), index=self.index.astype(np.int64),
            label=self.label.astype(np.int64), clean=np.packbits(self.clean, bitorder="little"),
            robust=np.packbits(self.robust, axis=-1, bitorder="little")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RobustBits":
        """From a report's outcomes.npz, or from the per-image outcomes of --save-adv."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = _meta(data)
                if meta.get("schema") == OUTCOMES_SCHEMA:
                    return cls.from_outcomes(PerImageOutcomes.load(path))
                if meta.get("schema") != ROBUST_SCHEMA:
                    raise ValueError("not a cwr_fast outcomes file")
                n, k = meta["n"], len(meta["attack_names"])
                if type(n) is not int or n < 0 or type(meta["num_classes"]) is not int:
                    raise ValueError("its meta gives no image count")
                clean = np.unpackbits(data["clean"], count=n, bitorder="little").astype(bool)
                robust = np.unpackbits(data["robust"], axis=-1, count=n, bitorder="little").astype(bool)
                index, label = np.asarray(data["index"]), np.asarray(data["label"])
                if index.shape != (n,) or label.shape != (n,) or robust.size != k * n \
                        or not np.issubdtype(index.dtype, np.integer) or not np.issubdtype(label.dtype, np.integer):
                    raise ValueError(f"its arrays do not hold {n} images")
                return cls(meta["attack_names"], meta["num_classes"], index, label,
                           clean, robust.reshape(k, n))
        except _READ_ERRORS as err:
            raise ValueError(f"cannot read per-image outcomes from {path}: {_why(err)}") from None
