"""The README's results section, written from benchmarks/results/*.json (so the README quotes what was measured).

    python benchmarks/tables.py            # prints the Markdown
    python benchmarks/tables.py --write    # replaces the section between the README's results markers

The paper's numbers beside ours come from SPEC.md (error % there; shown here as accuracy = 100 - error).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "results"
README = RESULTS.parent.parent / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# Paper accuracies (100 - the error SPEC.md quotes), for the rows that have a counterpart.
DKS_PAPER = {"baseline": 100 - 29.97, "DS": 100 - 29.89, "DKS (bidirectional)": 100 - 26.81}  # CIFAR-100 ResNet-32
CLDL_PAPER = {"baseline (NIN)": 100 - 35.96, "DSN*": 100 - 34.12, "CLDL-": 100 - 31.27,
              "CLDL": 100 - 30.40}  # CIFAR-100 NIN, no augmentation
DCL_PAPER = {"multidigit-II level 3": ("MNIST-II-01", {"baseline (LeNet)": 1.96, "DCL-A2": 1.76, "DCL-A3S": 1.73}),
             "multidigit-III level 5": ("MNIST-III-10", {"baseline (LeNet)": 10.12, "DCL-A2": 9.17,
                                                         "DCL-A3S": 9.14})}
COMPLEMENTARY_PAPER = {"complementary": [100 - e for e in (29.53, 26.65, 24.97, 24.15)],  # CIFAR-100 ResNet-56
                       "plain ensemble": [None, None, None, 100 - 29.32],
                       "sample-level boosting": [None, None, None, 100 - 26.53]}


def _load(name: str) -> Optional[Dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ms(stat: Dict[str, Any]) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _paper(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def _rel(path: str) -> str:
    return "benchmarks/results/" + Path(path).name


def dks_table(d: Dict[str, Any]) -> List[str]:
    heads = ["aux_stage1", "aux_stage2"]
    lines = ["| configuration | main head top-1 (%) | aux 1 | aux 2 | paper, CIFAR-100 ResNet-32 |",
             "|---|---|---|---|---|"]
    base = d["table"]["baseline"]["top1"]["mean"]
    for label, row in d["table"].items():
        aux = [_ms(row["heads"][h]) if h in row["heads"] else "" for h in heads]
        gain = "" if label == "baseline" else f" ({row['top1']['mean'] - base:+.2f})"
        lines.append(f"| {label} | {_ms(row['top1'])}{gain} | {aux[0]} | {aux[1]} | {_paper(DKS_PAPER.get(label))} |")
    return lines


def cldl_table(d: Dict[str, Any]) -> List[str]:
    lines = ["| configuration | top-1 by Eq. 9 (%) | per seed | main head alone | paper, CIFAR-100 NIN |",
             "|---|---|---|---|---|"]
    base = d["table"]["baseline (NIN)"]["top1"]["mean"]
    for label, row in d["table"].items():
        gain = "" if label.startswith("baseline") else f" ({row['top1']['mean'] - base:+.2f})"
        main = _ms(row["heads"]["main"]) if "main" in row["heads"] and len(row["heads"]) > 1 else ""
        seeds = " / ".join(f"{v:.1f}" for v in row["top1"]["values"])
        lines.append(f"| {label} | {_ms(row['top1'])}{gain} | {seeds} | {main} | {_paper(CLDL_PAPER.get(label))} |")
    return lines


def dcl_tables(d: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    for name, entry in d["datasets"].items():
        paper_name, paper = DCL_PAPER.get(name, ("", {}))
        lines += [f"*{name}* (paper column: {paper_name}, accuracy)", "",
                  "| configuration | top-1 (%) | paper |", "|---|---|---|"]
        for label, row in entry["table"].items():
            err = paper.get(label)
            lines.append(f"| {label} | {_ms(row['top1'])} | {_paper(None if err is None else 100 - err)} |")
        lines.append("")
    return lines[:-1]


def dcl_stability_table(d: Dict[str, Any]) -> List[str]:
    lines = ["| configuration | top-1 (%) |", "|---|---|"]
    for label, row in d["table"].items():
        lines.append(f"| {label} | {_ms(row['top1'])} |")
    return lines


def complementary_table(d: Dict[str, Any]) -> List[str]:
    tau = d["tau"]
    head = " | ".join(f"T={t}" for t in range(1, tau + 1))
    lines = [f"| ensemble | {head} | paper, CIFAR-100 ResNet-56 (T=1..4) |", "|---|" + "---|" * (tau + 1)]
    for method, per_t in d["table"].items():
        if not all(k.startswith("T=") for k in per_t):
            continue
        paper = " / ".join("-" if v is None else f"{v:.2f}" for v in COMPLEMENTARY_PAPER.get(method, []))
        cells = " | ".join(_ms(per_t[f"T={t}"]) for t in range(1, tau + 1))
        lines.append(f"| {method} | {cells} | {paper} |")
    return lines


def cost_table(d: Dict[str, Any]) -> List[str]:
    lines = ["| model / baseline | params | train FLOPs | train step time | train memory | eval time | "
             "exported eval |", "|---|---|---|---|---|---|---|"]
    for row in d["pairs"]:
        exported = f"x{row['exported_eval_time']['ratio']:.2f}" if "exported_eval_time" in row else ""
        lines.append(
            f"| `{row['method']}` / `{row['baseline']}` | x{row['params'] / row['baseline_params']:.2f} | "
            f"x{row['train_flops_ratio']:.2f} | x{row['train_step_time']['ratio']:.2f} | "
            f"x{row['train_memory_ratio']:.2f} | x{row['eval_time']['ratio']:.2f} | {exported} |")
    return lines


def section() -> str:
    out: List[str] = [BEGIN, "## Results", ""]
    cost, throughput = _load("cost"), _load("throughput")
    dks, cldl, dcl = _load("repro_dks"), _load("repro_cldl"), _load("repro_dcl")
    stability, comp = _load("repro_dcl-stability"), _load("repro_complementary")
    machine = (cost or dks or {}).get("machine", {})
    out += [f"Measured on this project's machine ({machine.get('cpu_count', '?')} CPU cores, "
            f"{machine.get('cpu_model', 'CPU')}, torch {machine.get('torch', '?')}, no GPU) by "
            "`python benchmarks/run_all.py` (about two hours; `benchmarks/reproduce.py --paper NAME` reruns one "
            "paper, `--replot` redraws the figures, `benchmarks/tables.py --write` rewrites this section from "
            "`benchmarks/results/*.json`). The reproductions are *miniatures*: the built-in 16x16 or 28x28 "
            "multi-digit sets (100 or 1,000 classes, 5,000-10,000 training images), a few minutes of CPU per "
            "run, three seeds (mean ± std). The papers' columns are their CIFAR/MNIST numbers as accuracy, "
            "there to show the direction each paper reports, not a number to match.", ""]
    if dks:
        out += ["### DKS: does synergy beat deep supervision?", "",
                f"CIFAR ResNet-20 with heads after stages 1 and 2 on multidigit-II level 3 (`{dks['data']}`).", ""]
        out += dks_table(dks) + ["", f"![DKS]({_rel(dks['figure'])})", ""]
    if cldl:
        out += ["### CLDL: the collaborative loss against deep supervision, and the number of heads", "",
                f"NIN-MNIST (heads at weight layers 3, 6, 9) on multidigit-II level 3 (`{cldl['data']}`), dropout "
                "off for every row. Top-1 ranks labels by Eq. 9 (all heads); the main-head column is its "
                "classifier alone.", ""]
        out += cldl_table(cldl) + ["", f"![CLDL]({_rel(cldl['figure'])}) "
                                   f"![CLDL per M]({_rel(cldl['figure_heads'])})", ""]
    if dcl:
        out += ["### DCL: two or three fused branches in place of FC500", "",
                f"The multi-digit LeNet (28x28; `{dcl['common']}`).", ""]
        out += dcl_tables(dcl) + [""]
        figures = " ".join(f"![DCL {n}]({_rel(e['figure'])})" for n, e in dcl["datasets"].items())
        out += [figures, ""]
    if stability:
        out += ["Three deterministic branches (A3D) diverged in every seed above. The same run, tamed:", ""]
        out += dcl_stability_table(stability) + [""]
    if comp:
        gain = comp["table"]["round 2 gain on round 1's hardest 10% of classes (points)"]
        out += ["### Complementary networks: class-level boosting against a plain ensemble and sample-level "
                "boosting", "",
                f"{comp['tau']} x {comp['member']} on {comp['dataset']}, {comp['epochs_per_network']} epochs per "
                f"network, {int(comp['heldout_fraction'] * 100)} % of the training images held out for the "
                "per-class errors. Accuracy of the first T networks' ensemble:", ""]
        out += complementary_table(comp)
        out += ["", f"Round 2 raised the test accuracy of the 10 % of classes round 1 got most wrong by "
                f"{_ms(gain)} points.", "", f"![complementary]({_rel(comp['figure'])})", ""]
    if cost:
        out += ["### What each method costs", "",
                "Ratios of each collaborative model over its plain backbone, timed in alternation inside one "
                "run (median of paired ratios; batch 16, ImageNet models at 224, CIFAR models at 32). Memory "
                "counts parameters, gradients and the tensors autograd saves, exactly. DCL models are at the "
                "paper's widths; `complementary_resnet56_x4`'s train step is one member's.", ""]
        out += cost_table(cost) + [""]
        alex, ens, load = cost["dcl_alexnet"], cost["complementary_resnet50_x4"], cost["pretrained_loading"]
        out += [f"- `dcl_alexnet` over `alexnet_caffe`: params x{alex['params_ratio']:.3f} "
                f"({alex['weights_removed']:,} weights fewer; paper x{alex['paper']['params_ratio']:.3f}), "
                f"train step x{alex['train_step_time']['ratio']:.3f} (paper x{alex['paper']['train_time_ratio']:.3f}),"
                f" forward x{alex['forward_time']['ratio']:.3f}.",
                f"- `complementary_resnet50_x4` eval over four separate `resnet50` forwards: "
                f"x{ens['eval_time']['ratio']:.3f}.",
                f"- `create_model(..., pretrained=True)` from a warm cache over timm's own load of the same "
                f"safetensors: x{load['time']['ratio']:.3f} (the sha256 check is {load['time']['sha256_seconds']:.3f} s"
                f" of {load['time']['candidate_seconds']:.3f} s for {load['time']['file_mb']} MB)."]
    if throughput:
        out += [f"- `train.py` over a bare accelerate loop, images per second (`{throughput['model']}`, "
                f"{throughput['dataset']}): x{throughput['ratio']:.3f} (range {throughput['ratio_min']:.3f}-"
                f"{throughput['ratio_max']:.3f})."]
    out += ["", END]
    return "\n".join(out)


def write_readme() -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + section() + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="rewrite README.md's results section")
    args = parser.parse_args(argv)
    if args.write:
        write_readme()
    else:
        print(section())
    return 0


if __name__ == "__main__":
    sys.exit(main())
