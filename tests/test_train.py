"""train.py and validate.py end to end on the built-in data: runs, DDP, exact resume, and bad input."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import collab_zoo
from collab_zoo.training.cli import train_main, validate_main

from conftest import ROOT, subprocess_env

FAST = ["--dataset", "digits", "--input-size", "8", "-b", "64", "--lr", "0.05", "--warmup-epochs", "0",
        "--log-with", "none"]


def _train(tmp_path, *extra, experiment="run"):
    argv = ["--output", str(tmp_path), "--experiment", experiment, *FAST, *extra]
    assert train_main(argv) == 0
    return tmp_path / experiment


def test_train_validate_save_reload_end_to_end(tmp_path, capsys):
    run = _train(tmp_path, "--model", "dks_resnet32", "--epochs", "2", "--baseline", "cifar_resnet32")
    out = capsys.readouterr().out
    assert "dks_resnet32" in out and "cifar_resnet32" in out and "top-1 accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "dks_resnet32" and 0 <= results["top1"] <= 100 and results["eval_images"] == 359
    assert set(results) >= {"top1_aux_stage1", "top1_aux_stage2", "top1_main", "per_class_top1", "top5"}
    for name in ("summary.csv", "training_curves.png", "hub/model.safetensors", "hub/config.json", "hub/README.md",
                 "checkpoints/last/state.json", "checkpoints/best/model.safetensors"):
        assert (run / name).exists(), name
    summary = (run / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "val_top1_aux_stage1" in summary[0] and "train_synergy" in summary[0]
    card = (run / "hub" / "README.md").read_text()
    assert f"{results['top1']:.4g}" in card
    assert (tmp_path / "run-comparison.json").exists()

    # validate.py on the Hub folder reproduces the run's own final evaluation, for several models at once.
    report = tmp_path / "val.json"
    assert validate_main(["--model", f"local-dir:{run / 'hub'}", f"local-dir:{run}-baseline-cifar_resnet32/hub",
                          "--pretrained", "--dataset", "digits", "--input-size", "8", "--results-file",
                          str(report)]) == 0
    validated = json.loads(report.read_text())
    assert validated[0]["top1"] == pytest.approx(results["top1"]) and len(validated) == 2
    assert validated[0]["top1_main"] == pytest.approx(results["top1"])
    assert len(validated[0]["per_class_top1"]) == 10
    # ...and on the training checkpoint, as CSV.
    csv_report = tmp_path / "val.csv"
    assert validate_main(["--model", "dks_resnet32", "--checkpoint", str(run), "--dataset", "digits",
                          "--input-size", "8", "--results-file", str(csv_report)]) == 0
    assert "top1_aux_stage1" in csv_report.read_text().splitlines()[0]

    # The saved model loads back (inference weights only: DKS heads are dropped) with identical outputs.
    model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True).eval()
    assert model.pretrained_cfg["input_size"] == (1, 8, 8) and model.num_classes == 10
    trained = collab_zoo.create_model("dks_resnet32", num_classes=10, in_chans=1)
    trained.load_state_dict(load_file(run / "checkpoints" / "last" / "model.safetensors"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), trained.eval()(x))


def test_per_head_accuracy_and_loss_parts_are_logged_for_every_method(tmp_path):
    run = _train(tmp_path, "--model", "cldl_nin", "--epochs", "1", "--input-size", "16",
                 "--model-kwargs", "num_heads=3")
    header = (run / "summary.csv").read_text().splitlines()[0].split(",")
    results = json.loads((run / "results.json").read_text())
    head_columns = [c for c in header if c.startswith("val_top1_")]
    assert len(head_columns) == 3 and len([k for k in results if k.startswith("top1_")]) == 3


def test_precision_compile_ema_mixup_accumulation_flags_work_together(tmp_path):
    run = _train(tmp_path, "--model", "dks_resnet20", "--epochs", "1", "-b", "32", "--amp", "--torchcompile",
                 "eager", "--model-ema", "--mixup", "0.2", "--cutmix", "0.2", "--smoothing", "0.1",
                 "--grad-accum-steps", "2", "--channels-last", "--clip-grad", "5", experiment="flags")
    header = (run / "summary.csv").read_text().splitlines()[0]
    assert "val_ema_top1" in header and "train_synergy" in header
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["top1"] <= 100 and (run / "hub" / "model.safetensors").exists()


def test_boosting_rounds_run_through_the_same_loop(tmp_path):
    run = _train(tmp_path, "--model", "complementary", "--epochs", "1", "--input-size", "8", "--model-kwargs",
                 "member='cifar_resnet20'", "tau=2", experiment="boost")
    results = json.loads((run / "results.json").read_text())
    assert results["rounds"] == 2 and len(results["rounds_log"]) == 2
    summary = (run / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and "val_top1_member1" in summary[0] and "val_top1_member2" in summary[0]
    assert any(Path(f).name.endswith(".png") and "importance" in Path(f).name for f in results["figures"])
    model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True)
    assert int(model.rounds_completed) == 2 and torch.all(model.gammas < 1)


def _launch(tmp_path, experiment, *extra, processes=1, env_extra=None):
    """train.py in its own process(es), as a user starts it."""
    from collab_zoo.loopback_hub import free_port

    args = ["--output", str(tmp_path), "--experiment", experiment, *FAST, *extra]
    env = subprocess_env(COLLAB_ZOO_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    if processes == 1:
        command = [sys.executable, str(ROOT / "train.py"), *args]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), str(ROOT / "train.py"), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)


def test_two_process_ddp_on_cpu_keeps_ranks_identical(tmp_path):
    proc = _launch(tmp_path, "ddp", "--model", "dks_resnet32", "--epochs", "1", processes=2)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["processes"] == 2
    assert len(results["rank_digests"]) == 2 and results["ranks_in_sync"]
    assert results["eval_images"] == 359  # the sharded evaluation counts every image once


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    common = ["--model", "dks_resnet32", "--epochs", "2", "--checkpoint-interval", "2", "--model-kwargs",
              "head_blocks=[[1,1],[1]]"]
    whole = _launch(tmp_path, "whole", *common)
    output, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, output[-3000:]

    victim = _launch(tmp_path, "killed", *common)
    state = tmp_path / "killed" / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 300
    progress = None
    while time.time() < deadline and victim.poll() is None:
        if state.exists():
            try:
                progress = json.loads(state.read_text())["progress"]
            except (json.JSONDecodeError, KeyError):
                progress = None
            if progress and progress["global_step"] >= 4 and progress["batch"] > 0:
                break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be interrupted"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert progress["epoch"] == 0, "killed inside the first epoch, between two checkpoints"

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(tmp_path / "killed"),
                              "--output", str(tmp_path), "--log-with", "none"],
                             env=subprocess_env(COLLAB_ZOO_NO_PROGRESS="1", OMP_NUM_THREADS="1"),
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    a = load_file(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    # The epoch logs match too: the interrupted epoch's running sums were part of the checkpoint.
    assert (tmp_path / "whole" / "summary.csv").read_text() == (tmp_path / "killed" / "summary.csv").read_text()


def test_resume_refuses_another_model(tmp_path, capsys):
    run = _train(tmp_path, "--model", "cifar_resnet20", "--epochs", "1")
    assert train_main(["--resume", str(run), "--model", "cifar_resnet32", "--log-with", "none"]) == 2
    assert "differs from the checkpoint's" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "nowhere"), "--log-with", "none"]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    run = _train(tmp_path, "--model", "cifar_resnet20", "--epochs", "1")
    before = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    assert train_main(["--output", str(tmp_path), "--experiment", "run", *FAST, "--model", "cifar_resnet20",
                       "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == before


def _image_tree(root: Path, bad: bool = False) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (i * 40, 100 if c == "cat" else 200, 50)).save(folder / f"{i}.png")
    if bad:
        (root / "train" / "dog" / "broken.png").write_bytes(b"not an image at all")
    return root


def test_imagefolder_training_and_its_errors(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree")
    argv = ["--output", str(tmp_path / "runs"), "--log-with", "none", "--model", "cifar_resnet20", "--dataset",
            "imagefolder", "--data-dir", str(tree), "--input-size", "16", "--epochs", "1", "-b", "4"]
    assert train_main(argv + ["--experiment", "ok"]) == 0
    assert train_main(argv[:-10] + ["--model", "cifar_resnet20", "--dataset", "imagefolder", "--data-dir",
                                    str(tmp_path / "missing"), "--experiment", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    assert train_main(["--output", str(tmp_path / "runs"), "--log-with", "none", "--dataset", "imagefolder",
                       "--data-dir", str(empty), "--experiment", "y"]) == 2
    assert "no class folders" in capsys.readouterr().err


def test_unreadable_images_fail_by_name_or_are_skipped_and_counted(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree", bad=True)
    argv = ["--output", str(tmp_path / "runs"), "--log-with", "none", "--model", "cifar_resnet20", "--dataset",
            "imagefolder", "--data-dir", str(tree), "--input-size", "16", "--epochs", "1", "-b", "4"]
    assert train_main(argv + ["--experiment", "strict"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert train_main(argv + ["--experiment", "lenient", "--skip-bad-images"]) == 0
    results = json.loads((tmp_path / "runs" / "lenient" / "results.json").read_text())
    assert results["skipped_images"] == 1


def test_class_count_and_method_option_errors(tmp_path, capsys):
    hub = _train(tmp_path, "--model", "cifar_resnet20", "--epochs", "1") / "hub"
    # A 10-class checkpoint against 100-class data, without --num-classes: say how to fine-tune.
    assert train_main(["--output", str(tmp_path), "--experiment", "multi", "--log-with", "none", "--model",
                       f"local-dir:{hub}", "--pretrained", "--dataset", "multidigit-II", "--input-size", "8",
                       "--md-train-size", "200", "--md-test-size", "100", "--epochs", "1"]) == 2
    assert "--num-classes 100" in capsys.readouterr().err
    assert validate_main(["--model", f"local-dir:{hub}", "--pretrained", "--dataset", "multidigit-II",
                          "--input-size", "8", "--md-test-size", "50"]) == 2
    assert "predicts 10 classes, the data has 100" in capsys.readouterr().err
    assert train_main(["--output", str(tmp_path), "--experiment", "opt", *FAST, "--model", "dks_resnet32",
                       "--model-kwargs", "pairs=sideways"]) == 2
    assert "pairs must be one of" in capsys.readouterr().err
    assert train_main(["--output", str(tmp_path), "--experiment", "opt2", *FAST, "--model", "cifar_resnet20",
                       "--model-kwargs", "pairs=top_down"]) == 2
    assert "do not fit cifar_resnet20" in capsys.readouterr().err
