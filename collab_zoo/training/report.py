"""What a run leaves for people to read: summary.csv (one row per epoch) and a PNG of the training curves.

summary.csv has timm's layout (``timm.utils.update_summary``): ``epoch``, ``train_*`` (the loss and its parts,
top-1 of the method's scores), ``eval_*`` (loss, top-1, top-5, each head's top-1; ``eval_ema_*`` for the EMA),
``lr`` (the mean learning rate of the epoch's optimizer steps). Multi-round methods add ``train_round``.
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["SummaryWriter", "plot_training_curves", "read_summary", "comparison_table"]


class SummaryWriter:
    """Appends epoch rows with timm's ``update_summary``.

    Three things timm's appender does not do are handled here: a later round can bring columns the header lacks
    (a boosting round's own loss part), a resumed run redoes the epochs after its checkpoint, and a failed write
    (a full disk) must not leave half a row. So every write makes the whole file again, from the rows kept and
    with the union of the columns, beside it, and renames it into place (the file is one row per epoch: small).
    """

    def __init__(self, path: Path, log_wandb: bool = False):
        self.path = Path(path)
        self.log_wandb = log_wandb
        self.rows: List[Dict[str, Any]] = read_summary(self.path) if self.path.exists() else []
        self.train_keys: List[str] = []
        self.eval_keys: List[str] = []
        for row in self.rows:
            self._learn(row)

    def _learn(self, row: Dict[str, Any]) -> bool:
        new = False
        for key in row:
            for prefix, keys in (("train_", self.train_keys), ("eval_", self.eval_keys)):
                if key.startswith(prefix) and key[len(prefix):] not in keys:
                    keys.append(key[len(prefix):])
                    new = True
        return new

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop the rows of ``epoch`` and later (a resumed run writes them again)."""
        kept = [r for r in self.rows if int(r["epoch"]) < epoch]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def _append(self, row: Dict[str, Any], write_header: bool, log_wandb: bool = False) -> None:
        from timm.utils import update_summary

        train = OrderedDict((k, row.get(f"train_{k}", "")) for k in self.train_keys)
        evaluation = OrderedDict((k, row.get(f"eval_{k}", "")) for k in self.eval_keys)
        update_summary(row["epoch"], train, evaluation, str(self.path), lr=row.get("lr", ""),
                       write_header=write_header, log_wandb=log_wandb)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        final, self.path = self.path, tmp
        try:
            for i, row in enumerate(self.rows):
                self._append(row, write_header=i == 0)
            if self.rows:
                _fsync_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self.path = final
        if self.rows:
            tmp.replace(final)
        else:
            final.unlink(missing_ok=True)

    def write(self, epoch: int, train: Dict[str, Any], evaluation: Dict[str, Any], lr: Optional[float]) -> None:
        row: Dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()},
                               **{f"eval_{k}": v for k, v in evaluation.items()}, "lr": lr}
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch] + [row]
        self._learn(row)
        self._rewrite()
        if self.log_wandb:
            self._wandb(row)

    def _wandb(self, row: Dict[str, Any]) -> None:
        import wandb

        wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))})


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def read_summary(path: Path) -> List[Dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(value: str) -> Any:
    if value is None or value == "":
        return ""
    try:
        return float(value) if any(c in value for c in ".eEn") else int(value)
    except ValueError:
        return value


def _series(rows: List[Dict[str, Any]], key: str) -> List[float]:
    return [r[key] if isinstance(r.get(key), (int, float)) else math.nan for r in rows]


def plot_training_curves(summary_csv: Path, out_png: Path) -> Path:
    """Three panels against the epoch: loss (training and validation), top-1 accuracy (the method's answer and
    every head's, validation solid and training dashed), and the learning rate. Rounds are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_summary(summary_csv)
    x = [int(r["epoch"]) + 1 for r in rows]
    out_png = Path(out_png)
    # Drawn beside the file and renamed into place: a failed write never leaves half a picture.
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    try:
        # Markers show the measured epochs while there are few of them.
        with plt.rc_context({"lines.marker": "o" if len(x) <= 30 else "", "lines.markersize": 3}):
            _draw(plt, MaxNLocator, rows, x, tmp)
        tmp.replace(out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png


def _draw(plt, MaxNLocator, rows, x, out_png) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))

    ax_loss.plot(x, _series(rows, "train_loss"), label="training loss", color="tab:blue", linewidth=2)
    if "eval_loss" in columns:
        ax_loss.plot(x, _series(rows, "eval_loss"), label="validation loss", color="tab:orange", linewidth=2)
    parts = [k for k in columns if k.startswith("train_") and k not in ("train_loss", "train_top1", "train_round")]
    for key in parts:
        ax_loss.plot(x, _series(rows, key), label=f"training {key[6:]}", linewidth=0.8, alpha=0.7)
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("loss (the method's objective)")

    if "eval_top1" in columns:
        ax_acc.plot(x, _series(rows, "eval_top1"), label="validation (method)", color="black", linewidth=2.5)
    if "train_top1" in columns:
        ax_acc.plot(x, _series(rows, "train_top1"), "--", label="training (method)", color="black", linewidth=1)
    for key in (k for k in columns if k.startswith("eval_top1_")):
        ax_acc.plot(x, _series(rows, key), label=f"validation, head {key[10:]}", linewidth=1.2)
    if "eval_ema_top1" in columns:
        ax_acc.plot(x, _series(rows, "eval_ema_top1"), ":", label="validation (EMA)", color="grey", linewidth=2)
    ax_acc.set_title("Top-1 accuracy")
    ax_acc.set_ylabel("top-1 accuracy (%)")

    ax_lr.plot(x, _series(rows, "lr"), color="tab:green", linewidth=2, label="mean lr of the epoch")
    ax_lr.set_title("Learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    rounds = [r.get("train_round", 1) for r in rows]
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch" + (" (all rounds)" if len(set(rounds)) > 1 else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        for i in range(1, len(rounds)):
            if rounds[i] != rounds[i - 1]:
                ax.axvline(x[i] - 0.5, color="grey", linestyle=":", linewidth=0.8)
    fig.tight_layout()
    try:
        fig.savefig(out_png, dpi=110, format="png")
    finally:
        plt.close(fig)


def comparison_table(results: List[Dict[str, Any]]) -> str:
    """Method and baseline side by side, as the main job prints them."""
    names = [r["model"] for r in results]
    width = max(24, *(len(n) + 2 for n in names))
    lines = ["".ljust(30) + "".join(n.rjust(width) for n in names)]

    def row(label: str, values: List[str]) -> None:
        lines.append(label.ljust(30) + "".join(v.rjust(width) for v in values))

    row("top-1 accuracy (%)", [f"{r['top1']:.2f}" for r in results])
    if all(r.get("top5") is not None for r in results):
        row("top-5 accuracy (%)", [f"{r['top5']:.2f}" for r in results])
    row("parameters (training)", [f"{r['params'] / 1e6:.3f}M" for r in results])
    row("parameters (inference)", [f"{r['inference_params'] / 1e6:.3f}M" for r in results])
    row("training time (s)", [f"{r['train_seconds']:.0f}" for r in results])
    heads = sorted({k for r in results for k in r if k.startswith("top1_")})
    for key in heads:
        row(f"  head {key[5:]} top-1 (%)", [f"{r[key]:.2f}" if key in r else "-" for r in results])
    return "\n".join(lines)
