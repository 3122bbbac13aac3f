"""What a run leaves for people to read: summary.csv (one row per epoch) and a PNG of the training curves."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["SummaryWriter", "plot_training_curves", "read_summary", "comparison_table"]


class SummaryWriter:
    """Appends epoch rows; when a later row brings new columns (a new round's head), rewrites with the union."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: List[Dict[str, Any]] = read_summary(self.path) if self.path.exists() else []

    def write(self, row: Dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if (str(r.get("round")), str(r.get("epoch"))) !=
                     (str(row.get("round")), str(row.get("epoch")))]  # a resumed epoch replaces its old row
        self.rows.append(row)
        columns: List[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _fmt(r.get(k, "")) for k in columns})
        os.replace(tmp, self.path)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_summary(path: Path) -> List[Dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(value: str) -> Any:
    try:
        return float(value) if any(c in value for c in ".eE") else int(value)
    except ValueError:
        return value


def plot_training_curves(summary_csv: Path, out_png: Path) -> Path:
    """Loss and accuracy (every head, and the method's combined answer) per epoch, rounds side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_summary(summary_csv)
    x = list(range(1, len(rows) + 1))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    loss_keys = [k for k in rows[0] if k.startswith("train_") and not k.startswith("train_top1")] if rows else []
    for key in loss_keys:
        ax_loss.plot(x, [r.get(key, float("nan")) for r in rows], label=key[6:])
    ax_loss.set_xlabel("epoch (all rounds)")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=7)
    columns = {k for r in rows for k in r}
    for key in sorted(k for k in columns if k.startswith("val_top1")):
        values = [r.get(key, "") for r in rows]
        ax_acc.plot(x, [v if isinstance(v, (int, float)) else float("nan") for v in values],
                    label=key[4:], linewidth=2.5 if key == "val_top1" else 1.2)
    for key in sorted(k for k in columns if k.startswith("train_top1")):
        values = [r.get(key, "") for r in rows]
        ax_acc.plot(x, [v if isinstance(v, (int, float)) else float("nan") for v in values], "--",
                    label=key, linewidth=0.8)
    ax_acc.set_xlabel("epoch (all rounds)")
    ax_acc.set_ylabel("top-1 accuracy (%)")
    ax_acc.legend(fontsize=7)
    rounds = [r.get("round", 1) for r in rows]
    for i in range(1, len(rounds)):
        if rounds[i] != rounds[i - 1]:
            for ax in (ax_loss, ax_acc):
                ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


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
