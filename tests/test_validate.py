"""validate.py as users run it: a run's checkpoints by wildcard, their EMA weights, other input channels."""
import csv
import json
import subprocess
import sys

import pytest

from collab_zoo.training.cli import train_main, validate_main

from conftest import ROOT, subprocess_env

FAST = ["--dataset", "digits", "--img-size", "8", "-b", "64", "--lr", "0.05", "--warmup-epochs", "0",
        "--log-with", "none"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """Two epochs of dks_resnet20 with an EMA, every epoch's checkpoint kept."""
    out = tmp_path_factory.mktemp("runs")
    assert train_main(["--output", str(out), "--experiment", "ema", *FAST, "--model", "dks_resnet20", "--epochs",
                       "2", "--model-ema", "--model-ema-decay", "0.9"]) == 0
    return out / "ema"


def _summary(run):
    with open(run / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_wildcard_checkpoints_and_their_ema_weights_reproduce_the_runs_own_evaluation(ema_run, tmp_path):
    report = tmp_path / "ema.json"
    proc = subprocess.run([sys.executable, str(ROOT / "validate.py"), "--model", "dks_resnet20", "--checkpoint",
                           str(ema_run / "checkpoints" / "epoch-*"), "--use-ema", "--dataset", "digits",
                           "--results-file", str(report)],
                          env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads(report.read_text())
    summary = _summary(ema_run)
    assert [r["checkpoint"].rsplit("/", 1)[-1] for r in rows] == ["epoch-0", "epoch-1"]
    for row, epoch in zip(rows, summary):
        assert row["weights"] == "ema" and row["images"] == 359
        assert row["top1"] == pytest.approx(float(epoch["eval_ema_top1"]))
        assert row["top1_main"] == pytest.approx(float(epoch["eval_ema_top1_main"]))
    assert "Traceback" not in proc.stdout + proc.stderr
    # Without --use-ema the same checkpoints give the model's own numbers.
    plain = tmp_path / "plain.json"
    assert validate_main(["--model", "dks_resnet20", "--checkpoint", str(ema_run / "checkpoints" / "epoch-*"),
                          "--dataset", "digits", "--results-file", str(plain)]) == 0
    for row, epoch in zip(json.loads(plain.read_text()), summary):
        assert row["top1"] == pytest.approx(float(epoch["eval_top1"]))


def test_three_channel_input_for_a_one_channel_checkpoint_adapts_the_first_conv(ema_run, tmp_path, capsys):
    gray, rgb = tmp_path / "gray.json", tmp_path / "rgb.json"
    assert validate_main(["--model", "dks_resnet20", "--checkpoint", str(ema_run), "--results-file", str(gray)]) == 0
    assert validate_main(["--model", "dks_resnet20", "--checkpoint", str(ema_run), "--in-chans", "3",
                          "--results-file", str(rgb)]) == 0
    assert "backbone.stem.0.weight: 1 -> 3 input channels" in capsys.readouterr().err
    # Grey digits replicated to RGB through the adapted filters give the grey results.
    a, b = json.loads(gray.read_text())[0], json.loads(rgb.read_text())[0]
    assert b["top1"] == pytest.approx(a["top1"]) and b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_checkpoint_errors_say_what_to_do(ema_run, tmp_path, capsys):
    assert validate_main(["--model", "dks_resnet20", "--checkpoint", str(tmp_path / "none-*")]) == 2
    assert "matches nothing" in capsys.readouterr().err
    assert validate_main(["--model", "cifar_resnet20", "--checkpoint", str(ema_run)]) == 2
    assert "was trained as dks_resnet20" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert train_main(["--output", str(tmp_path), "--experiment", "plain", *FAST, "--model", "cifar_resnet20",
                       "--epochs", "1"]) == 0
    assert validate_main(["--model", "cifar_resnet20", "--checkpoint", str(plain), "--use-ema"]) == 2
    assert "trained without --model-ema" in capsys.readouterr().err
    (tmp_path / "weights.pth").write_bytes(b"pickle")
    assert validate_main(["--model", "cifar_resnet20", "--checkpoint", str(tmp_path / "weights.pth")]) == 2
    assert "never pickles" in capsys.readouterr().err


def test_initial_checkpoint_starts_a_run_from_given_weights(ema_run, tmp_path, capsys):
    assert train_main(["--output", str(tmp_path), "--experiment", "warm", *FAST, "--model", "dks_resnet20",
                       "--epochs", "1", "--initial-checkpoint", str(ema_run)]) == 0
    err = capsys.readouterr().err
    assert f"Loaded --initial-checkpoint {ema_run / 'checkpoints' / 'best' / 'model.safetensors'}" in err
    config = json.loads((tmp_path / "warm" / "hub" / "config.json").read_text())
    assert config["collab_zoo"]["base_model"] == str(ema_run.resolve())
    # Weights that do not fit are refused with the flag that would adapt them.
    assert train_main(["--output", str(tmp_path), "--experiment", "cold", *FAST, "--model", "dks_resnet20",
                       "--epochs", "1", "--num-classes", "10", "--img-size", "8",
                       "--initial-checkpoint", str(tmp_path / "warm" / "hub" / "model.safetensors")]) == 2
    assert "--pretrained-path" in capsys.readouterr().err
