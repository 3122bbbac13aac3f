"""A miniature of the DKS paper's Table 3: how the auxiliary heads' design decides whether the synergy loss helps.

    python benchmarks/dks_heads.py [--seeds 3] [--quick]

CIFAR ResNet-32 (``dks_resnet32``) on the built-in multidigit-II set (level 3, 16x16), every head kind of
``aux=`` trained as deep supervision (``pairs="none"``, the paper's DS) and as DKS (``pairs="bidirectional"``), plus
the plain ``cifar_resnet32``; the same recipe and seeds for every row. The paper (CIFAR-100 error, DS / DKS):
AP+2FC 31.85 / 35.09, AP+1Conv+2FC 30.24 / 32.52, narrow blocks 29.52 / 29.18, shallow blocks 29.39 / 28.69,
its designed heads 29.89 / 26.81, baseline 29.97: simple heads make DKS worse than DS, richer heads make it better.

Writes ``benchmarks/results/dks_heads.json`` (``dks_heads_quick.json`` with ``--quick``: 3 epochs on the 10-class
built-in digits, 16x16, a few CPU minutes; a smoke run whose numbers say little about the paper's question;
``dks_heads_medium.json`` with ``--medium``: the same for 10 epochs).
``--kinds`` limits the head kinds (all five by default). Top-1 of the main head, mean and standard
deviation over the seeds, and each kind's head parameter count (training minus exported parameters).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS_ROOT, run_metadata, write_json_atomic, seed_summary, train_run  # noqa: E402

import collab_zoo  # noqa: E402
from collab_zoo.methods.dks import AUX_KINDS  # noqa: E402

DATA = ["--dataset", "multidigit-II", "--md-level", "3", "--md-train-size", "5000", "--md-test-size", "2000",
        "--input-size", "16", "--recipe", "multidigit", "--epochs", "15"]
# The quick run trains on the 10-class digits (1,438 images) for 3 epochs: small enough for a few CPU minutes, large
# enough that the heads are above chance (1 epoch of the 100-class set is not). Its lr is the multidigit recipe's
# 0.02, not the digits recipe's 0.05: with one 23-step warm-up epoch at 0.05, blocks-DKS ResNet-32 diverged early
# (eval loss 1.6e4-5.9e4 after epoch 1; top-1 16.16 % and 41.78 % for seeds 0 and 1) while its DS reached 97.21 %,
# so the rows would compare divergence, not head designs. Every row uses the same lr.
QUICK_DATA = ["--dataset", "digits", "--recipe", "digits", "--input-size", "16", "--epochs", "3", "--lr", "0.02"]
# The medium run: the same data and rate for 10 epochs (about half an hour on 2 CPU cores). At 3 epochs every DKS row
# trailed its DS row, which may say only that synergy slows the first epochs; 10 epochs ask whether that persists.
MEDIUM_DATA = QUICK_DATA[:-4] + ["--epochs", "10", "--lr", "0.02"]
PAPER_ERROR = {  # Table 3, CIFAR-100 error (%) of ResNet-32, DS / DKS
    "ap_2fc": (31.85, 35.09), "ap_conv_2fc": (30.24, 32.52), "narrow": (29.52, 29.18), "shallow": (29.39, 28.69),
    "blocks": (29.89, 26.81),
}
PAPER_BASELINE_ERROR = 29.97


def runs(kinds: Sequence[str] = AUX_KINDS) -> Dict[str, Any]:
    """label -> (model, kwargs): the baseline, then DS and DKS for every head kind."""
    table: Dict[str, Any] = {"baseline": ("cifar_resnet32", {})}
    for aux in kinds:
        table[f"{aux} DS"] = ("dks_resnet32", dict(aux=aux, pairs="none"))
        table[f"{aux} DKS"] = ("dks_resnet32", dict(aux=aux, pairs="bidirectional"))
    return table


def head_parameters(aux: str, num_classes: int = 100) -> int:
    with torch.device("meta"):
        model = collab_zoo.create_model("dks_resnet32", num_classes=num_classes, aux=aux)
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.export().parameters())


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 epochs on the 10-class digits: a smoke run")
    parser.add_argument("--medium", action="store_true", help="10 epochs on the 10-class digits")
    parser.add_argument("--kinds", nargs="+", default=list(AUX_KINDS), choices=list(AUX_KINDS))
    args = parser.parse_args(argv)
    os.environ["COLLAB_ZOO_NO_PROGRESS"] = "1"
    import logging

    logging.basicConfig(level=logging.WARNING, force=True)
    scale = "quick" if args.quick else "medium" if args.medium else "full"
    data = {"quick": QUICK_DATA, "medium": MEDIUM_DATA, "full": DATA}[scale]
    seeds = list(range(args.seeds))
    table: Dict[str, Any] = {}
    start_all = time.time()
    with tempfile.TemporaryDirectory() as out:
        for label, (model, kwargs) in runs(args.kinds).items():
            results = []
            for seed in seeds:
                start = time.time()
                results.append(train_run(model, kwargs, data, seed, out))
                print(f"  {label:18s} seed {seed}: top-1 {results[-1]['top1']:.2f}%  ({time.time() - start:.0f} s)",
                      flush=True)
            row: Dict[str, Any] = dict(model=model, kwargs={k: str(v) for k, v in kwargs.items()},
                                       top1=seed_summary((r["top1"] for r in results), digits=2))
            if "aux" in kwargs:
                row["head_parameters"] = head_parameters(kwargs["aux"])
                ds, dks = PAPER_ERROR[kwargs["aux"]]
                row["paper_cifar100_error"] = ds if kwargs["pairs"] == "none" else dks
            else:
                row["paper_cifar100_error"] = PAPER_BASELINE_ERROR
            table[label] = row
            if label.endswith(" DKS"):
                aux = kwargs["aux"]
                row["dks_minus_ds"] = round(row["top1"]["mean"] - table[f"{aux} DS"]["top1"]["mean"], 2)
            # Written after every row, complete=False until the last: a run stopped early keeps what it measured.
            path = write_result(scale, data, seeds, table, start_all, complete=False)
    path = write_result(scale, data, seeds, table, start_all, complete=True)
    print(f"wrote {path}", flush=True)
    return 0


def write_result(scale: str, data: Sequence[str], seeds: Sequence[int], table: Dict[str, Any], start: float,
                 complete: bool) -> Path:
    payload = dict(data=" ".join(data), seeds=list(seeds), scale=scale, quick=scale == "quick", complete=complete,
                   table=table, minutes=round((time.time() - start) / 60, 1), machine=run_metadata())
    name = "dks_heads.json" if scale == "full" else f"dks_heads_{scale}.json"
    return write_json_atomic(RESULTS_ROOT / name, payload)


if __name__ == "__main__":
    sys.exit(main())
