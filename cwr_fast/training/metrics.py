"""Per-epoch records (metrics.jsonl), the training-dynamics plot and the one-screen summary.

One metrics.jsonl line per epoch (JSON, accuracies as fractions in [0, 1]):

    epoch (1-based), global_step, lr (at the epoch's last step), eps (training budget at the end)
    train {loss, acc, clean_acc (trades/mart), images, seconds, images_per_s,
           time_split {data, attack, fwd_bwd} (seconds), per_class_acc [C]}
           acc is on the training inputs (adversarial for the adversarial methods)
    val   {attack, n [C], clean_acc [C], robust_acc [C], clean_mean, robust_mean, robust_worst,
           worst_class, seconds, model ("ema" or "model")} or null on epochs without a check
    best  {mean: {epoch, value}, worst: {epoch, value}}
    defense {...} what the class-wise policy logged
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cwr_fast.outputs import write_text


def history_text(history: list[dict]) -> str:
    return "".join(json.dumps(r, allow_nan=False) + "\n" for r in history)


def write_history(history: list[dict], path: Path) -> None:
    """metrics.jsonl from the records (atomically: a resume re-writes it from the checkpoint)."""
    write_text(history_text(history), path)


def _pct(v) -> str:
    return "  –  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def plot_dynamics(history: list[dict], class_names: list[str], path: Path) -> None:
    """Per-class validation robust accuracy over epochs (the paper's training-dynamics view), with
    the mean (black) and the worst class (dashed); clean accuracy in a second panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in history if r.get("val")]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    many = len(class_names) > 20
    for ax, key, title in ((axes[0], "robust_acc", f"robust accuracy ({rows[-1]['val']['attack']}, "
                                                   "held-out validation)"),
                           (axes[1], "clean_acc", "clean accuracy (held-out validation)")):
        values = [[(v if v is not None else math.nan) for v in r["val"][key]] for r in rows]
        for c, name in enumerate(class_names):
            series = [100 * v[c] for v in values]
            ax.plot(epochs, series, linewidth=0.6 if many else 1.2, alpha=0.5 if many else 0.9,
                    label=None if many else name)
        mean = [100 * r["val"][key.replace("_acc", "_mean")] for r in rows]
        ax.plot(epochs, mean, color="black", linewidth=2.5, label="mean")
        if key == "robust_acc":
            ax.plot(epochs, [100 * r["val"]["robust_worst"] for r in rows], color="black",
                    linestyle="--", linewidth=1.5, label="worst class")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    if not many:
        axes[0].legend(fontsize="x-small", ncols=2, loc="best")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def epoch_line(record: dict, epochs: int) -> str:
    """One line per epoch for the log."""
    t = record["train"]
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {t['loss']:.4f}", f"train acc {_pct(t['acc']).strip()}%",
             f"lr {record['lr']:.4g}", f"eps {record['eps']:.4g}", f"{t['images_per_s']:.0f} img/s"]
    v = record.get("val")
    if v:
        parts += [f"val clean {_pct(v['clean_mean']).strip()}%",
                  f"{v['attack']} mean {_pct(v['robust_mean']).strip()}%",
                  f"worst {_pct(v['robust_worst']).strip()}% (class {v['worst_class_name']})"]
    return " | ".join(parts)

