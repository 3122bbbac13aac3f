"""The measurement machinery of benchmarks/: paired-ratio statistics, what a results file records, partial and
resumed runs, the target report, the tables, and gpu.py without a GPU. Tiny models and 2 repeats; no test
here asserts anything about a measured time."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import cost  # noqa: E402
import gpu  # noqa: E402
import tables  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))

# Everything a results file must say about how its numbers were made (issue 15).
RUN_FIELDS = ("commit", "dirty", "command", "load_average", "python", "torch", "timm", "accelerate",
              "huggingface_hub", "safetensors", "cpu_model", "cores", "repeats", "quick")
TIMING_FIELDS = ("ratio", "ratio_q1", "ratio_q3", "iqr", "repeats", "number", "baseline_seconds",
                 "candidate_seconds", "flops_ratio", "time_over_flops")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny(out, *extra):
    """A smoke run of one cheap row: dcl_lenet over lenet, 2 repeats, batch 4."""
    return cost.main(["--quick", "--repeats", "2", "--batch", "4", "--out", str(out), *extra])


# --- statistics ------------------------------------------------------------------------------------------------------

def test_paired_stats_odd_count_by_hand():
    # ratios 1.0, 1.2, 1.1, 1.4, 1.3 -> sorted 1.0 1.1 1.2 1.3 1.4: median 1.2; quartiles at positions 1 and 3.
    st = common.paired_stats([1.0] * 5, [1.0, 1.2, 1.1, 1.4, 1.3])
    assert (st["ratio"], st["ratio_q1"], st["ratio_q3"], st["iqr"], st["repeats"]) == (1.2, 1.1, 1.3, 0.2, 5)


def test_paired_stats_interpolates_and_reports_seconds_per_call():
    # ratios 2/2=1, 2/1=2, 12/4=3, 4/1=4: median 2.5; q1 at position 0.75 -> 1.75, q3 at 2.25 -> 3.25.
    st = common.paired_stats([2.0, 1.0, 4.0, 1.0], [2.0, 2.0, 12.0, 4.0], number=2)
    assert (st["ratio"], st["ratio_q1"], st["ratio_q3"], st["iqr"]) == (2.5, 1.75, 3.25, 1.5)
    # medians of the samples (1.5 s and 3.0 s), per call of the two calls each sample made
    assert (st["baseline_seconds"], st["candidate_seconds"], st["number"]) == (0.75, 1.5, 2)


def test_paired_stats_pairs_each_candidate_with_its_own_baseline():
    # Unpaired medians would give 1.0; the pairs all say the candidate took twice as long.
    st = common.paired_stats([1.0, 3.0, 5.0], [2.0, 6.0, 10.0])
    assert st["ratio"] == st["ratio_q1"] == st["ratio_q3"] == 2.0


def test_paired_stats_rejects_unpaired_input():
    with pytest.raises(ValueError):
        common.paired_stats([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        common.paired_stats([], [])


def test_paired_ratio_warms_up_then_alternates_the_order():
    calls = []
    st = common.paired_ratio(lambda: calls.append("B"), lambda: calls.append("C"), repeats=4, warmup=2,
                             sync=lambda: None)
    assert "".join(calls) == "BCBC" + "BC" + "CB" + "BC" + "CB"
    assert st["repeats"] == 4 and st["number"] == 1


def test_with_flops_puts_the_flop_ratio_next_to_the_time_ratio():
    st = common.with_flops(common.paired_stats([1.0, 1.0], [2.2, 2.2]), 2.0)
    assert (st["flops_ratio"], st["time_over_flops"]) == (2.0, 1.1)
    assert common.with_flops(st, None)["time_over_flops"] is None


def test_run_metadata_records_commit_command_machine_and_libraries():
    meta = common.run_metadata(repeats=20, quick=False)
    for key in RUN_FIELDS:
        assert key in meta, key
    assert re.fullmatch(r"[0-9a-f]{40}", meta["commit"])
    assert isinstance(meta["dirty"], bool) and len(meta["load_average"]) == 3
    assert "pytest" in meta["command"] or "py.test" in meta["command"]


# --- cost.py: rows, partial files, resume, the report ----------------------------------------------------------------

def test_only_writes_one_row_with_its_provenance(tmp_path, keep_threads):
    out = tmp_path / "cost.json"
    assert _tiny(out, "--only", "dcl_lenet", "--threads", "1") == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == cost.FORMAT
    assert list(doc["configs"]) == ["threads=1"] and doc["configs"]["threads=1"]["settings"]["threads"] == 1
    rows = doc["configs"]["threads=1"]["rows"]
    assert list(rows) == ["dcl_lenet"]
    row = rows["dcl_lenet"]
    assert (row["method"], row["baseline"], row["batch"], row["input"]) == ("dcl_lenet", "lenet", 4, 28)
    for key in ("train_step_time", "eval_time"):
        for field in TIMING_FIELDS:
            assert field in row[key], (key, field)
        assert row[key]["repeats"] == 2
    assert row["train_step_time"]["flops_ratio"] == row["train_flops_ratio"]
    assert row["eval_time"]["flops_ratio"] == row["eval_flops_ratio"]
    assert len(row["load_average_at_start"]) == 3
    run = doc["runs"][row["run"]]
    for key in RUN_FIELDS:
        assert key in run, key
    assert run["threads"] == [1] and run["rows"] == ["dcl_lenet"] and run["failed_rows"] == []
    assert "--only dcl_lenet" in run["command"]


def test_runs_merge_resume_skips_what_is_there_and_fresh_starts_over(tmp_path, keep_threads):
    out = tmp_path / "cost.json"
    assert _tiny(out, "--only", "dcl_lenet", "--threads", "1") == 0
    first = json.loads(out.read_text())["configs"]["threads=1"]["rows"]["dcl_lenet"]["run"]
    assert _tiny(out, "--only", "dcl_lenet", "--threads", "2") == 0  # another thread count joins the file
    doc = json.loads(out.read_text())
    assert set(doc["configs"]) == {"threads=1", "threads=2"} and len(doc["runs"]) == 2
    assert doc["configs"]["threads=1"]["rows"]["dcl_lenet"]["run"] == first
    assert _tiny(out, "--resume", "--only", "dcl_lenet", "--threads", "1", "2") == 0  # nothing left to measure
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 3 and doc["configs"]["threads=1"]["rows"]["dcl_lenet"]["run"] == first
    assert _tiny(out, "--fresh", "--only", "dcl_lenet", "--threads", "1") == 0  # starts over
    doc = json.loads(out.read_text())
    assert list(doc["configs"]) == ["threads=1"] and len(doc["runs"]) == 1


def test_a_failing_row_keeps_the_rows_measured_before_it(tmp_path, keep_threads):
    out = tmp_path / "cost.json"
    s = cost.Settings(quick=True, repeats=2, warmup=1, batch=4)
    failed = cost.run_rows(["dcl_lenet", "no_such_row"], cost.thread_configs([1]), s, out)
    assert failed == 1
    doc = json.loads(out.read_text())
    assert list(doc["configs"]["threads=1"]["rows"]) == ["dcl_lenet"]
    assert next(iter(doc["runs"].values()))["failed_rows"] == ["threads=1/no_such_row"]


def test_unknown_rows_are_refused_with_the_list(tmp_path):
    with pytest.raises(SystemExit, match="dcl_lenet"):
        cost.main(["--quick", "--only", "dcl_lenett", "--out", str(tmp_path / "c.json")])
    assert cost.parse_rows(["pairs"]) == [p[0] for p in cost.PAIRS]


def test_check_reports_every_target_and_why_smoke_numbers_are_not_citable(tmp_path, capsys, keep_threads):
    out = tmp_path / "cost.json"
    assert cost.main(["--check", "--out", str(out)]) == 2  # nothing measured yet: says so
    assert _tiny(out, "--only", "dcl_lenet", "--threads", "1") == 0
    capsys.readouterr()
    assert cost.main(["--check", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    lines = [line.strip() for line in report.splitlines()]
    verdict = {line[6:].split(":")[0]: line[:4] for line in lines if line[:4] in ("PASS", "FAIL", "----")}
    for label in ("dcl_lenet eval <= 1.20x lenet", "dcl_lenet eval <= 1.10x its FLOP ratio over lenet",
                  "dcl_lenet train step <= 1.10x its FLOP ratio over lenet"):
        assert verdict[label] in ("PASS", "FAIL")  # measured, whichever way it went
    assert verdict["cldl_nin eval <= 1.25x nin"] == "----"  # not measured in this file
    assert verdict["every timed comparison has >= 20 paired repeats"] == "FAIL"
    assert verdict["no row comes from a --quick smoke run"] == "FAIL"
    assert verdict["every row records its commit"] == "PASS"


def test_targets_apply_the_issues_limits():
    def timing(ratio, flops):
        return common.with_flops(dict(ratio=ratio, ratio_q1=ratio, ratio_q3=ratio, repeats=20), flops)

    rows = {"dcl_lenet": dict(eval_time=timing(1.19, 1.0), train_step_time=timing(1.04, 0.94)),
            "dks_resnet32": dict(train_step_time=timing(3.0, 2.79), exported_eval_time=timing(1.031, 1.0)),
            "cldl_nin": dict(eval_time=timing(1.25, 1.37)),
            "complementary_resnet50_x4": dict(eval_time=timing(1.04, 1.0))}
    verdict = {label: passed for passed, label, _ in cost.targets(rows)}
    assert verdict["dcl_lenet eval <= 1.20x lenet"] is True
    assert verdict["dcl_lenet eval <= 1.10x its FLOP ratio over lenet"] is False  # 1.19 > 1.10 x 1.0
    assert verdict["dcl_lenet train step <= 1.10x its FLOP ratio over lenet"] is False  # 1.04 > 1.034
    assert verdict["dks_resnet32 train step <= 1.10x its FLOP ratio over cifar_resnet32"] is True  # 3.0 <= 3.069
    assert verdict["dks_resnet32 exported eval 1.00x +-3% of cifar_resnet32"] is False
    assert verdict["cldl_nin eval <= 1.25x nin"] is True
    assert verdict["complementary_resnet50_x4 eval <= 1.05x four resnet50 forwards"] is True
    assert verdict["dks_resnet18 train step <= 1.10x its FLOP ratio over resnet18"] is None


def test_a_row_is_busy_when_the_load_exceeds_its_own_threads():
    doc = dict(runs={"r": dict(commit="abc", dirty=False, quick=False, cores=2)})
    rows = {"own_two_threads": dict(run="r", load_average_at_start=[2.4, 0, 0]),
            "something_else_too": dict(run="r", load_average_at_start=[2.6, 0, 0])}
    quiet = {label.split(" (")[0]: (passed, detail) for passed, label, detail in cost.provenance(doc, rows, 2)}
    assert quiet["the machine was quiet at each row's start"] == (False, "busy before ['something_else_too']")
    one = {label.split(" (")[0]: passed for passed, label, _ in cost.provenance(doc, rows, 1)}
    assert one["the machine was quiet at each row's start"] is False  # 2.4 > 1 + 0.5 as well


# --- tables.py on the new files --------------------------------------------------------------------------------------

def test_tables_quote_the_new_file_with_iqr_threads_and_commit(tmp_path, keep_threads):
    out = tmp_path / "cost.json"
    assert _tiny(out, "--only", "dcl_lenet", "--threads", "1") == 0
    doc = json.loads(out.read_text())
    text = "\n".join(tables.cost_section(doc))
    row = doc["configs"]["threads=1"]["rows"]["dcl_lenet"]
    run = doc["runs"][row["run"]]
    st = row["eval_time"]
    assert f"x{st['ratio']:.2f} ({st['ratio_q1']:.2f}-{st['ratio_q3']:.2f})" in text
    assert f"{st['time_over_flops']:.2f}" in text
    load = row["load_average_at_start"][0]
    assert f"Time at 1 thread (1-minute load {load:.2f}-{load:.2f} at the rows' starts):" in text
    assert "at 1 thread of torch" in text
    assert f"`{run['commit'][:12]}`" in text and run["command"] in text
    # and section() takes it from a results folder, the way the README's section is made
    assert "`dcl_lenet` / `lenet`" in tables.section(tmp_path)


def _seeds(*values):
    return dict(mean=sum(values) / len(values), std=0.5, values=list(values))


def test_dks_heads_table_pairs_ds_with_dks_per_kind_beside_the_papers_accuracy():
    doc = dict(data="--dataset digits", seeds=[0, 1], quick=True, complete=True, table={
        "baseline": dict(model="cifar_resnet32", top1=_seeds(90.0, 92.0)),
        "ap_2fc DS": dict(head_parameters=12_900, top1=_seeds(80.0, 82.0)),
        "ap_2fc DKS": dict(head_parameters=12_900, top1=_seeds(77.0, 78.0)),
    })
    lines = tables.dks_heads_table(doc)
    # DS mean 81.00, DKS mean 77.50: -3.50; the paper's AP+2FC errors 31.85 / 35.09 as accuracy
    assert "| AP+2FC | 12,900 | 81.00 ± 0.50 | 77.50 ± 0.50 | -3.50 | 68.15 / 64.91 |" in lines
    assert lines[-1].startswith("| none (plain `cifar_resnet32`) | 0 | 91.00 ± 0.50 |") and "70.03" in lines[-1]
    assert not any("blocks" in line for line in lines)  # a kind that was not run gets no row


def test_section_leaves_out_a_head_table_whose_run_stopped_part_way(tmp_path):
    doc = dict(data="--dataset digits", seeds=[0], quick=True, complete=False,
               table={"baseline": dict(model="cifar_resnet32", top1=_seeds(90.0))})
    (tmp_path / "dks_heads_quick.json").write_text(json.dumps(doc))
    assert "Table 3 in miniature" not in tables.section(tmp_path)
    (tmp_path / "dks_heads_quick.json").write_text(json.dumps(dict(doc, complete=True)))
    assert "Table 3 in miniature" in tables.section(tmp_path)
    # every scale that ran to the end gets its table, the longer first
    (tmp_path / "dks_heads_medium.json").write_text(json.dumps(dict(doc, complete=True, scale="medium")))
    text = tables.section(tmp_path)
    assert 0 < text.index("*medium scale*") < text.index("*quick scale*")


def test_dcl_fair_table_shows_the_sweep_the_chosen_rate_and_training_accuracy(tmp_path):
    row = dict(model="lenet", lr=0.04, sweep={"0.01": dict(top1=30.64), "0.04": dict(top1=46.8)},
               top1=_seeds(50.0, 51.0), final_train_top1=_seeds(64.0, 66.0))
    doc = dict(scale="medium", common="--epochs 10", datasets={
        "MNIST-II-01": dict(table={"baseline (LeNet)": row}, figure="/x/repro_dcl_fair_MNIST-II-01_medium.png")})
    text = "\n".join(tables.dcl_fair_tables(doc))
    # the paper's MNIST-II-01 baseline error 1.96 as accuracy
    assert "| baseline (LeNet) | 0.01: 30.6, 0.04: 46.8 | 0.04 | 50.50 ± 0.50 | 65.00 ± 0.50 | 98.04 |" in text
    assert "(benchmarks/results/repro_dcl_fair_MNIST-II-01_medium.png)" in text
    (tmp_path / "repro_dcl_fair_medium.json").write_text(json.dumps(doc))
    assert "the medium scale" in tables.section(tmp_path)


# --- gpu.py ----------------------------------------------------------------------------------------------------------

def test_gpu_script_says_no_gpu_and_exits_0_without_one(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert "no GPU" in run.stdout and not out.exists()


def test_gpu_script_measures_the_same_way_on_the_cpu(tmp_path, keep_threads):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--only", "dcl_lenet", "--repeats", "2", "--batch", "4",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    config = doc["configs"]["cpu,amp=bfloat16"]
    assert config["settings"]["amp_dtype"] == "bfloat16"
    row = config["rows"]["dcl_lenet"]
    for key in ("train_step_time", "eval_time"):
        assert all(field in row[key] for field in TIMING_FIELDS)
    assert doc["runs"][row["run"]]["amp_dtype"] == "bfloat16"
    assert "Time at cpu, bfloat16:" in "\n".join(tables.gpu_section(doc))


def test_gpu_script_refuses_float16_on_the_cpu(tmp_path):
    with pytest.raises(SystemExit, match="float16"):
        gpu.main(["--device", "cpu", "--amp-dtype", "float16", "--out", str(tmp_path / "g.json")])
