"""train.py end to end, as users run it: the built-in data and image folders, timm's command line, fine-tuning
from the Hub, DDP, exact resume after a crash or Ctrl-C, extension, and bad input.

Command-line behaviour is tested through real train.py processes; the rest calls the same entry point in-process.
"""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import collab_zoo
from collab_zoo.training.cli import train_main, validate_main

from conftest import ROOT, subprocess_env

FAST = ["--dataset", "digits", "--img-size", "8", "-b", "64", "--lr", "0.05", "--warmup-epochs", "0",
        "--log-with", "none"]


def _train(tmp_path, *extra, experiment="run"):
    argv = ["--output", str(tmp_path), "--experiment", experiment, *FAST, *extra]
    assert train_main(argv) == 0
    return tmp_path / experiment


def _script(name, *args, cwd, env_extra=None, umask=None, **popen):
    """train.py or validate.py in its own process, as a user starts it (stdout is a pipe, not a terminal)."""
    env = subprocess_env(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(ROOT / name), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None, **popen)


def _run_script(name, *args, cwd, timeout=600, **kwargs):
    proc = _script(name, *args, cwd=cwd, **kwargs)
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def _image_tree(root: Path, bad: bool = False, classes=("cat", "dog"), per_class: int = 4) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for k, c in enumerate(classes):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (i * 40, 60 + 70 * k, 50)).save(folder / f"{i}.png")
    if bad:
        (root / "train" / "dog" / "broken.png").write_bytes(b"not an image at all")
    return root


def test_train_validate_save_reload_end_to_end(tmp_path, capsys):
    run = _train(tmp_path, "--model", "dks_resnet20", "--epochs", "2", "--baseline", "cifar_resnet20")
    out = capsys.readouterr().out
    assert "dks_resnet20" in out and "cifar_resnet20" in out and "top-1 accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "dks_resnet20" and results["eval_images"] == 359
    assert set(results) >= {"top1_aux_stage1", "top1_aux_stage2", "top1_main", "per_class_top1", "top5", "best"}
    # The reported figures are the final weights' answers on the 359 test images, recounted here one image at a
    # time without the training loop's loader or evaluate(): the data set's own eval view, argmax against label.
    from collab_zoo.data import DataSpec, build_data

    final = collab_zoo.create_model("dks_resnet20", num_classes=10, in_chans=1)
    final.load_state_dict(load_file(run / "checkpoints" / "last" / "model.safetensors"))
    final.eval()
    test_set = build_data(DataSpec(dataset="digits", input_size=8), need_train=False).eval
    right, per_class = 0, [[0, 0] for _ in range(10)]
    with torch.no_grad():
        for i in range(len(test_set)):
            image, label = test_set[i]
            hit = int(final(image[None]).argmax()) == label
            right += hit
            per_class[label][0] += hit
            per_class[label][1] += 1
    assert len(test_set) == 359
    assert results["top1"] == pytest.approx(100 * right / 359)
    assert results["top1_main"] == pytest.approx(results["top1"])  # DKS infers with its main head
    assert results["per_class_top1"] == pytest.approx([100 * h / n for h, n in per_class])
    for name in ("summary.csv", "training_curves.png", "args.yaml", "hub/model.safetensors", "hub/config.json",
                 "hub/README.md", "checkpoints/last/state.json", "checkpoints/best/model.safetensors"):
        assert (run / name).exists(), name
    # summary.csv is timm's layout (update_summary): epoch, train_*, eval_* with the validation loss, lr.
    lines = (run / "summary.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 3 and header[0] == "epoch" and header[-1] == "lr"
    assert {"train_loss", "train_synergy", "train_top1", "eval_loss", "eval_top1", "eval_top1_aux_stage1"} <= set(header)
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    # The lr column is the mean of the epoch's steps: cosine over 2 epochs from 0.05 lies strictly inside (0, 0.05).
    assert all(0 < float(r["lr"]) < 0.05 for r in rows) and float(rows[0]["lr"]) > float(rows[1]["lr"])
    assert all(float(r["eval_loss"]) > 0 for r in rows)

    # The Hub folder holds the best epoch's weights, and its card that epoch's numbers.
    best = results["best"]
    card = (run / "hub" / "README.md").read_text()
    assert f"{best['eval_top1']:.4g}" in card and f"best epoch ({best['epoch']} of 2" in card
    hub_weights = load_file(run / "hub" / "model.safetensors")
    best_weights = load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(v, best_weights[k]) for k, v in hub_weights.items())
    assert (tmp_path / "run-comparison.json").exists()

    # validate.py on the Hub folder reproduces the best epoch's evaluation, for several models at once.
    report = tmp_path / "val.json"
    assert validate_main(["--model", f"local-dir:{run / 'hub'}", f"local-dir:{run}-baseline-cifar_resnet20/hub",
                          "--pretrained", "--dataset", "digits", "--results-file", str(report)]) == 0
    validated = json.loads(report.read_text())
    assert len(validated) == 2 and validated[0]["top1"] == pytest.approx(best["eval_top1"])
    assert validated[0]["top1_main"] == pytest.approx(best["eval_top1"])
    # A DKS Hub folder carries the main path only: the auxiliary heads would be random, so they are not reported.
    assert "top1_aux_stage1" not in validated[0] and validated[0]["heads_not_in_weights"] == ["aux_stage1",
                                                                                           "aux_stage2"]
    assert len(validated[0]["per_class_top1"]) == 10 and validated[0]["loss"] > 0
    # ...and on the training checkpoint (the run's best, training heads included), as CSV.
    csv_report = tmp_path / "val.csv"
    assert validate_main(["--model", "dks_resnet20", "--checkpoint", str(run), "--dataset", "digits",
                          "--results-file", str(csv_report)]) == 0
    assert "top1_aux_stage1" in csv_report.read_text().splitlines()[0]

    # The saved model loads back (inference weights only: DKS heads are dropped) with identical outputs.
    model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True).eval()
    assert tuple(model.pretrained_cfg["input_size"]) == (1, 8, 8) and model.num_classes == 10
    trained = collab_zoo.create_model("dks_resnet20", num_classes=10, in_chans=1)
    trained.load_state_dict(best_weights)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), trained.eval()(x))


@pytest.mark.slow  # heavier; CI runs the slow group too
def test_per_head_accuracy_and_loss_parts_are_logged_for_every_method(tmp_path):
    run = _train(tmp_path, "--model", "cldl_nin", "--epochs", "1", "--model-kwargs", "num_heads=3")
    header = (run / "summary.csv").read_text().splitlines()[0].split(",")
    results = json.loads((run / "results.json").read_text())
    head_columns = [c for c in header if c.startswith("eval_top1_")]
    assert len(head_columns) == 3 and len([k for k in results if k.startswith("top1_")]) == 3
    assert any(c.startswith("train_t_aux") for c in header)


@pytest.mark.slow  # heavier; CI runs the slow group too
def test_precision_compile_ema_mixup_accumulation_flags_work_together(tmp_path):
    run = _train(tmp_path, "--model", "dks_resnet20", "--epochs", "1", "-b", "30", "--amp", "--torchcompile",
                 "eager", "--model-ema", "--mixup", "0.2", "--cutmix", "0.2", "--smoothing", "0.1",
                 "--grad-accum-steps", "2", "--channels-last", "--clip-grad", "5", "--clip-mode", "value",
                 experiment="flags")
    header = (run / "summary.csv").read_text().splitlines()[0]
    assert "eval_ema_top1" in header and "train_synergy" in header
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["top1"] <= 100 and (run / "hub" / "model.safetensors").exists()
    # With --model-ema the best epoch is chosen on the EMA's numbers and the Hub folder gets the EMA weights.
    assert results["best"]["weights"] == "ema"
    assert (run / "checkpoints" / "best" / "ema.safetensors").exists()


def test_boosting_rounds_run_through_the_same_loop(tmp_path):
    run = _train(tmp_path, "--model", "complementary", "--epochs", "1", "--model-kwargs",
                 "member='cifar_resnet20'", "tau=2", experiment="boost")
    results = json.loads((run / "results.json").read_text())
    assert results["rounds"] == 2 and len(results["rounds_log"]) == 2
    lines = (run / "summary.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 3 and "train_round" in header
    # Each round's own loss part gets its column (the file is rewritten when round 2 brings one).
    assert "train_member1_weighted_ce" in header and "train_member2_weighted_ce" in header
    assert [line.split(",")[header.index("train_round")] for line in lines[1:]] == ["1", "2"]
    assert any(Path(f).name.endswith(".png") and "importance" in Path(f).name for f in results["figures"])
    model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True)
    assert int(model.rounds_completed) == 2 and torch.all(model.gammas < 1)


def _accelerate(tmp_path, experiment, *extra, processes=2):
    from collab_zoo.loopback_hub import free_port

    args = ["--output", str(tmp_path), "--experiment", experiment, *FAST, *extra]
    env = subprocess_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(ROOT / "train.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_two_process_ddp_on_cpu_keeps_ranks_identical(tmp_path):
    proc = _accelerate(tmp_path, "ddp", "--model", "dks_resnet20", "--epochs", "1", "--model-ema")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["processes"] == 2
    assert len(results["rank_digests"]) == 2 and results["ranks_in_sync"]
    assert results["eval_images"] == 359  # the sharded evaluation counts every image once


def _wait_for_progress(state: Path, proc, min_step: int, deadline_s: float = 300):
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                progress = json.loads(state.read_text())["progress"]
            except (json.JSONDecodeError, KeyError):
                progress = None
            if progress and progress["global_step"] >= min_step and progress["batch"] > 0:
                return progress
        time.sleep(0.05)
    return None


def test_a_killed_or_interrupted_run_resumes_to_the_same_weights(tmp_path):
    # Augmentation from timm (RandAugment, random erasing on the prefetcher) is part of what must replay exactly.
    common = ["--output", tmp_path, *FAST, "--model", "dks_resnet20", "--epochs", "2", "--recovery-interval", "2",
              "--aa", "rand-m9-mstd0.5", "--reprob", "0.5", "--log-interval", "5"]
    whole = _script("train.py", *common, "--experiment", "whole", cwd=tmp_path)

    victim = _script("train.py", *common, "--experiment", "killed", cwd=tmp_path)
    progress = _wait_for_progress(tmp_path / "killed" / "checkpoints" / "last" / "state.json", victim, 4)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert progress["epoch"] == 0, "killed inside the first epoch, between two checkpoints"

    # Ctrl-C: the run saves where it is and says so in one line. This one loads its data in a worker process,
    # which must neither die of the Ctrl-C nor change what the samples look like.
    interrupted = _script("train.py", *common, "-j", "1", "--experiment", "ctrlc", cwd=tmp_path,
                          start_new_session=True)
    assert _wait_for_progress(tmp_path / "ctrlc" / "checkpoints" / "last" / "state.json", interrupted, 2)
    os.killpg(interrupted.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
    output, _ = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("interrupted: saved") and "--resume" in last_line
    saved = json.loads((tmp_path / "ctrlc" / "checkpoints" / "last" / "state.json").read_text())["progress"]
    assert saved["epoch"] == 0 and saved["batch"] > 0

    output, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, output[-3000:]
    # Progress in a log is one line per interval, never carriage-return redraws.
    assert "\r" not in output and "epoch 1/2 [5/23]" in output and "epoch 1/2 [10/23]" in output
    for experiment, workers in (("killed", "0"), ("ctrlc", "1")):
        code, output = _run_script("train.py", "--resume", tmp_path / experiment, "--output", tmp_path,
                                   "--log-with", "none", "-j", workers, cwd=tmp_path)
        assert code == 0, output[-3000:]
        a = load_file(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors")
        b = load_file(tmp_path / experiment / "checkpoints" / "last" / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{experiment}: resumed weights differ from the whole run's"
        # The epoch logs match too: the interrupted epoch's running sums were part of the checkpoint.
        assert (tmp_path / "whole" / "summary.csv").read_text() == (tmp_path / experiment / "summary.csv").read_text()


def test_resume_with_more_epochs_extends_the_run_and_reports_all_of_it(tmp_path):
    run = _train(tmp_path, "--model", "cifar_resnet20", "--epochs", "1")
    first = json.loads((run / "results.json").read_text())
    # (--no-resume-opt: the extension starts a fresh optimizer, as timm's flag says.)
    code, output = _run_script("train.py", "--resume", run, "--epochs", "2", "--no-resume-opt", "--output", tmp_path,
                               cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert "Extending the run from 1 to 2 epochs" in output
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and results["train_seconds"] > first["train_seconds"]
    assert [line.split(",")[0] for line in (run / "summary.csv").read_text().splitlines()[1:]] == ["0", "1"]
    header = (run / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss") and ",eval_loss," in header


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A finished one-epoch run of a plain network, for the tests that only read it."""
    return _train(tmp_path_factory.mktemp("plain"), "--model", "cifar_resnet20", "--epochs", "1")


def test_resume_refuses_another_model(plain_run, tmp_path, capsys):
    run = plain_run
    assert train_main(["--resume", str(run), "--model", "cifar_resnet32", "--log-with", "none"]) == 2
    assert "differs from the checkpoint's" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "nowhere"), "--log-with", "none"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path), "--log-with", "none"]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
    assert train_main(["--resume", str(run), "--epochs", "0", "--log-with", "none"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_an_existing_run_is_never_overwritten(plain_run, capsys):
    run = plain_run
    before = (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    assert train_main(["--output", str(run.parent), "--experiment", run.name, *FAST, "--model", "cifar_resnet20",
                       "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == before


def test_the_timm_users_command_runs_unchanged(tmp_path):
    """timm's train.py command line, -c YAML included, on an image folder (no --dataset), in a real process
    started with a group-writable umask."""
    tree = _image_tree(tmp_path / "data")
    (tmp_path / "cfg.yaml").write_text(
        "epochs: 5\nbatch_size: 4\nlr_base: 0.05\nsched: plateau\neval_metric: loss\ncheckpoint_hist: 1\n"
        "opt: sgd\nweight_decay: 2.0e-5\nsmoothing: 0.1\ninterpolation: bicubic\ncrop_pct: 0.9\nhflip: 0.5\n"
        "vflip: 0.1\ncolor_jitter: 0.3\nscale: [0.5, 1.0]\nratio: [0.8, 1.25]\ntrain_interpolation: bilinear\n"
        "remode: pixel\nrecount: 2\ndrop: 0.1\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n"
        "naflex_loader: false\nlog_wandb: true\n")
    code, output = _run_script(
        "train.py", "--model", "resnet18", "--data-dir", "data", "--input-size", "3", "64", "64", "--aa",
        "rand-m9-mstd0.5", "--reprob", "0.25", "--drop-path", "0.05", "-c", "cfg.yaml", "--epochs", "2",
        "--experiment", "timm-user", "--log-with", "none", cwd=tmp_path, umask=0o002)
    assert code == 0, output[-3000:]
    run = tmp_path / "output" / "timm-user"
    settings = (run / "args.yaml").read_text()
    assert "epochs: 2\n" in settings and "sched: plateau\n" in settings  # the flag won over the file's epochs: 5
    assert "ignored: naflex_loader" in output and "wandb is not installed" in output
    assert "Data: folder" in output and "input (3, 64, 64)" in output
    # --lr-base scaling (no --lr): 0.05 * 4 / 256.
    assert "Learning rate 0.00078" in output and "from --lr-base 0.05" in output
    lines = (run / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,train_loss")
    # --checkpoint-hist 1 with --eval-metric loss: one epoch checkpoint kept, the one with the lowest loss.
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch-*"))
    header = lines[0].split(",")
    losses = [float(line.split(",")[header.index("eval_loss")]) for line in lines[1:]]
    assert kept == [f"epoch-{losses.index(min(losses))}"]
    cfg = json.loads((run / "hub" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 64, 64] and cfg["mean"] == [0.5, 0.5, 0.5] and cfg["crop_pct"] == 0.9
    assert cfg["interpolation"] == "bicubic"
    # Everything in the run folder follows the umask (0o002: group-writable), safetensors files included.
    for path in [run, *run.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o775 if path.is_dir() else 0o664), f"{path}: {oct(mode)}"


def _push_small_model(tmp_path) -> tuple:
    """A model trained here (1 epoch of dks_resnet20 on 8x8 digits) and pushed to the loopback Hub."""
    run = _train(tmp_path, "--model", "dks_resnet20", "--epochs", "1", experiment="source")
    model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True)
    repo = f"tester/digits-dks-{uuid.uuid4().hex[:8]}"
    info = collab_zoo.push_to_hub(model, repo)
    return run, repo, info


def test_fine_tuning_from_the_hub_a_folder_or_a_tag_with_another_class_count(tmp_path, hub):
    source, repo, info = _push_small_model(tmp_path)
    tree = _image_tree(tmp_path / "data", classes=("cat", "dog", "owl"))
    common = ["--data-dir", tree, "--epochs", "1", "-b", "4", "--lr", "0.01", "--log-with", "none",
              "--num-classes", "3", "--pretrained", "--output", tmp_path / "runs"]

    # hf-hub:, in a real process: the data config comes from the loaded model (8x8 grey digits), new heads logged.
    code, output = _run_script("train.py", "--model", f"hf-hub:{repo}", *common, "--experiment", "from-hub",
                               cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert "new heads for 3 classes (initialised fresh): aux_stage1, aux_stage2, main" in output
    assert "input (1, 8, 8)" in output
    run = tmp_path / "runs" / "from-hub"
    config = json.loads((run / "hub" / "config.json").read_text())
    source_cfg = json.loads((source / "hub" / "config.json").read_text())["pretrained_cfg"]
    assert config["pretrained_cfg"]["input_size"] == [1, 8, 8] and config["num_classes"] == 3
    assert config["pretrained_cfg"]["mean"] == source_cfg["mean"]
    assert config["pretrained_cfg"]["label_names"] == ["cat", "dog", "owl"]
    assert config["collab_zoo"]["base_model"] == repo
    card = (run / "hub" / "README.md").read_text()
    assert f"base_model: {repo}" in card
    hub_model = collab_zoo.create_model(f"local-dir:{run / 'hub'}", pretrained=True)
    assert hub_model.num_classes == 3

    # local-dir: and a registered tag (pointing at the same Hub repo), in this process.
    argv = [str(v) for v in common]
    assert train_main(["--model", f"local-dir:{source / 'hub'}", *argv, "--experiment", "from-dir"]) == 0
    # A local folder is named in config.json and the card's text (Hub metadata takes repo ids only).
    folder_run = tmp_path / "runs" / "from-dir" / "hub"
    assert json.loads((folder_run / "config.json").read_text())["collab_zoo"]["base_model"] == str(
        (source / "hub").resolve())
    assert f"Fine-tuned from: `{(source / 'hub').resolve()}`" in (folder_run / "README.md").read_text()
    sha = json.loads((source / "hub" / "config.json").read_text())["collab_zoo"]["sha256"]
    tag = f"t{uuid.uuid4().hex[:6]}"
    collab_zoo.register_hub_config({
        "model": f"dks_resnet20.{tag}", "hf_hub_id": repo, "revision": info.oid, "filename": "model.safetensors",
        "sha256": sha, "num_classes": 10, "label_names_source": "digits 0-9", "dataset": "digits",
        "input_size": [1, 8, 8], "interpolation": "bilinear",
        "crop_pct": 1.0, "crop_mode": "center", "mean": source_cfg["mean"], "std": source_cfg["std"],
        "license": "apache-2.0", "paper": {"title": "Deeply-supervised Knowledge Synergy", "id": "arXiv:1906.00675"},
        "reported_metrics": {}, "origin": {"url": "loopback test"}})
    assert train_main(["--model", f"dks_resnet20.{tag}", *argv, "--in-chans", "1", "--experiment", "from-tag"]) == 0
    config = json.loads((tmp_path / "runs" / "from-tag" / "hub" / "config.json").read_text())
    # A tag pins a revision of its repo: the parent is named with it (the card's metadata takes the repo id).
    assert config["collab_zoo"]["base_model"] == f"{repo}@{info.oid}" and config["num_classes"] == 3
    assert f"base_model: {repo}" in (tmp_path / "runs" / "from-tag" / "hub" / "README.md").read_text()


@pytest.mark.slow  # heavier; CI runs the slow group too
def test_push_to_hub_uploads_the_best_checkpoint(tmp_path, hub):
    from huggingface_hub import hf_hub_download

    repo = f"tester/best-{uuid.uuid4().hex[:8]}"
    run = _train(tmp_path, "--model", "cifar_resnet20", "--epochs", "2", "--lr", "0.5", "--push-to-hub", repo)
    results = json.loads((run / "results.json").read_text())
    pushed = load_file(hf_hub_download(repo, "model.safetensors", revision=results["pushed"]["revision"]))
    best = load_file(run / "checkpoints" / "best" / "model.safetensors")
    last = load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.equal(v, best[k]) for k, v in pushed.items())
    if results["best"]["epoch"] != 2:
        assert not all(torch.equal(v, last[k]) for k, v in pushed.items())
    card = open(hf_hub_download(repo, "README.md", revision=results["pushed"]["revision"])).read()
    assert f"best epoch ({results['best']['epoch']} of 2" in card


def test_folder_tar_and_timm_sources_feed_the_same_loop(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree")
    base = ["--output", str(tmp_path / "runs"), "--log-with", "none", "--model", "cifar_resnet20", "--img-size", "16",
            "--epochs", "1", "-b", "4"]
    # --data-dir alone is a folder data set (not the built-in digits).
    assert train_main(base + ["--data-dir", str(tree), "--experiment", "folder"]) == 0
    results = json.loads((tmp_path / "runs" / "folder" / "results.json").read_text())
    assert results["eval_images"] == 8 and len(results["per_class_top1"]) == 2
    # The old spelling still works.
    assert train_main(base + ["--dataset", "imagefolder", "--data-dir", str(tree), "--experiment", "old"]) == 0
    # A split may be a .tar of its class folders.
    tars = tmp_path / "tars"
    tars.mkdir()
    for split in ("train", "val"):
        with tarfile.open(tars / f"{split}.tar", "w") as tar:
            tar.add(tree / split, arcname=".")
    assert train_main(base + ["--data-dir", str(tars), "--experiment", "tar"]) == 0
    assert json.loads((tmp_path / "runs" / "tar" / "results.json").read_text())["eval_images"] == 8
    # timm's create_dataset sources: torch/image_folder (torchvision's ImageFolder) needs no download.
    assert train_main(base + ["--dataset", "torch/image_folder", "--data-dir", str(tree), "--experiment", "tv"]) == 0
    assert json.loads((tmp_path / "runs" / "tv" / "results.json").read_text())["eval_images"] == 8


def test_imagefolder_errors(tmp_path, capsys):
    base = ["--output", str(tmp_path / "runs"), "--log-with", "none", "--model", "cifar_resnet20", "--epochs", "1"]
    assert train_main(base + ["--data-dir", str(tmp_path / "missing"), "--experiment", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    assert train_main(base + ["--data-dir", str(empty), "--experiment", "y"]) == 2
    assert "no class folders" in capsys.readouterr().err
    flat = _image_tree(tmp_path / "flat")
    (flat / "val").rename(flat / "elsewhere")
    assert train_main(base + ["--data-dir", str(flat), "--experiment", "z"]) == 2
    assert "no 'validation' split" in capsys.readouterr().err


def test_unreadable_images_fail_by_name_or_are_skipped_and_counted(tmp_path, capsys):
    tree = _image_tree(tmp_path / "tree", bad=True)
    argv = ["--output", str(tmp_path / "runs"), "--log-with", "none", "--model", "cifar_resnet20", "--data-dir",
            str(tree), "--img-size", "16", "--epochs", "1", "-b", "4"]
    assert train_main(argv + ["--experiment", "strict"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert train_main(argv + ["--experiment", "lenient", "--skip-bad-images"]) == 0
    results = json.loads((tmp_path / "runs" / "lenient" / "results.json").read_text())
    assert results["skipped_images"] == 1


def test_class_count_and_option_errors(plain_run, tmp_path, capsys):
    hub = plain_run / "hub"
    # A 10-class checkpoint against 100-class data, without --num-classes: say how to fine-tune.
    assert train_main(["--output", str(tmp_path), "--experiment", "multi", "--log-with", "none", "--model",
                       f"local-dir:{hub}", "--pretrained", "--dataset", "multidigit-II", "--img-size", "8",
                       "--md-train-size", "200", "--md-test-size", "100", "--epochs", "1"]) == 2
    assert "--num-classes 100" in capsys.readouterr().err
    assert validate_main(["--model", f"local-dir:{hub}", "--pretrained", "--dataset", "multidigit-II",
                          "--img-size", "8", "--md-test-size", "50"]) == 2
    assert "predicts 10 classes, the data has 100" in capsys.readouterr().err
    assert train_main(["--output", str(tmp_path), "--experiment", "opt", *FAST, "--model", "dks_resnet20",
                       "--model-kwargs", "pairs=sideways"]) == 2
    assert "pairs must be one of" in capsys.readouterr().err
    assert train_main(["--output", str(tmp_path), "--experiment", "opt2", *FAST, "--model", "cifar_resnet20",
                       "--model-kwargs", "pairs=top_down"]) == 2
    assert "do not fit cifar_resnet20" in capsys.readouterr().err
    assert train_main(["--output", str(tmp_path), "--experiment", "opt3", *FAST, "--model", "cifar_resnet20",
                       "--drop-path", "0.1"]) == 2
    assert "--drop-path is not an option of cifar_resnet20" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    assert train_main(["-c", str(tmp_path / "bad.yaml"), "--log-with", "none"]) == 2
    assert "lr must be float" in capsys.readouterr().err


def test_every_flag_has_help_text_and_timm_helpers_are_used():
    import timm.utils

    from collab_zoo.training import args as train_args

    for parser in (train_args.build_parser(), train_args.build_validate_parser()):
        silent = [a.option_strings or a.dest for a in parser._actions if a.dest != "help" and not a.help]
        assert not silent, f"{parser.prog}: flags without help: {silent}"
    assert train_args.ParseKwargs is timm.utils.ParseKwargs
    parsed = train_args.parse_args(["--model-kwargs", "tau=3", "member='resnet18'", "--input-size", "3", "32", "48"])
    assert parsed.model_kwargs == {"tau": 3, "member": "resnet18"} and parsed.input_size == (3, 32, 48)
    assert train_args.parse_args(["--input-size", "16"]).img_size == 16
