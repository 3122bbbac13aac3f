"""Bad input and faults, table-driven: every case ends with the exit code of its kind, one paragraph saying what is
wrong (never a traceback), and nothing already on disk damaged or replaced by a non-finite file.

Exit codes (collab_zoo.training.cli): 2 bad input, 3 non-finite, 4 a write failed, 130 Ctrl-C, 143 SIGTERM.

Most cases call train.py's and validate.py's entry points in this process (the scripts only call them and
sys.exit with the code) and fail before any training. Faults that need a process of their own (signals, a file-size
limit, another user's permissions, two runs at once) start the real scripts. Every case shares one tiny image folder
and one finished run, which the cases may only read; a case that changes a run works on its own copy.

After every case: each file that was on disk before (the case's own folder, the shared data and run) is
byte-identical unless the case says it may change; every safetensors file is finite; every checkpoint folder with a
manifest matches it.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from collab_zoo.training.checkpoint import WRITE_DELAY_ENV, CheckpointFolder, verify_checkpoint
from collab_zoo.training.cli import train_main, validate_main

from conftest import ROOT, subprocess_env

SIZE = ["--img-size", "8"]
# Training on the tiny folder: 12 images, batches of 4, no schedule warm-up, no trackers.
TINY = ["--model", "cifar_resnet20", *SIZE, "-b", "4", "--lr", "0.05", "--warmup-epochs", "0", "--log-with", "none",
        "--epochs", "1"]


# --- shared inputs ------------------------------------------------------------------------------------------------

def image_tree(root: Path, classes=("cat", "dog"), train: int = 6, val: int = 2, mode: str = "RGB",
               suffix: str = "png", size: int = 8) -> Path:
    """A tiny image folder: root/{train,val}/<class>/<n>.<suffix>, distinct colours per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for k, c in enumerate(classes):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = rng.integers(0, 60, (size, size, 3)) + 120 * k
                if mode == "I;16":
                    Image.fromarray((base[..., 0] * 200).astype(np.uint16)).save(folder / f"{i}.{suffix}")
                    continue
                image = Image.fromarray(base.astype(np.uint8), "RGB")
                if mode == "P":
                    image = image.convert("P", palette=Image.ADAPTIVE, colors=8)
                elif mode != "RGB":
                    image = image.convert(mode)
                image.save(folder / f"{i}.{suffix}")
    return root


@dataclass
class Shared:
    data: Path   # the tiny image folder
    run: Path    # a finished one-epoch run on it


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    base = tmp_path_factory.mktemp("reliability")
    data = image_tree(base / "data")
    assert train_main(["--data-dir", str(data), *TINY, "--output", str(base), "--experiment", "finished"]) == 0
    return Shared(data, base / "finished")


@dataclass
class Ctx:
    tmp: Path
    data: Path
    run: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def copy_run(self, name: str = "copy") -> Path:
        target = self.tmp / name
        if not target.exists():
            shutil.copytree(self.run, target)
        return target

    def tree(self, name: str = "tree", **kwargs) -> Path:
        return image_tree(self.tmp / name, **kwargs)

    def train(self, *args, data: Optional[Path] = None, experiment: str = "case") -> List[str]:
        return ["--data-dir", str(data or self.data), *TINY, "--output", str(self.out), "--experiment", experiment,
                *map(str, args)]


# --- running a case -----------------------------------------------------------------------------------------------

def _in_process(script: str, argv: Sequence, capsys) -> Tuple[int, str]:
    capsys.readouterr()
    code = (train_main if script == "train" else validate_main)([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _spawn(script: str, *args, env_extra=None, preexec=None, cwd=None) -> subprocess.Popen:
    env = subprocess_env(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, str(ROOT / f"{script}.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd or ROOT,
                            preexec_fn=preexec)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> Tuple[int, str]:
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended first:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting")


_ERROR_STARTS = ("error:", "train.py: error:", "validate.py: error:")


def _paragraph(output: str, code: int) -> str:
    """The message the run ended with: one paragraph (at most two lines, no blank line)."""
    lines = output.rstrip().splitlines()
    starts = ("interrupted", "terminated") if code in (130, 143) else _ERROR_STARTS
    found = [i for i, line in enumerate(lines) if line.startswith(starts)]
    assert found, f"no closing message in:\n{output[-3000:]}"
    paragraph = lines[found[-1]:]
    assert len(paragraph) <= 2 and all(line.strip() for line in paragraph), paragraph
    return " ".join(paragraph)


def _files(roots: Sequence[Path]) -> Dict[Path, str]:
    hashes = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not any(part.startswith(".incoming-") for part in path.parts):
                hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _assert_nothing_damaged(before: Dict[Path, str], may_change: Sequence[Path]) -> None:
    for path, digest in before.items():
        if any(path == p or p in path.parents for p in may_change):
            continue
        assert path.is_file(), f"{path} was removed"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed"


def _assert_finite_and_whole(written: Sequence[Path]) -> None:
    """Every safetensors file among ``written`` is finite; every checkpoint folder holding one of them matches its
    manifest. (A case's planted inputs, damaged or non-finite on purpose, are not among them.)"""
    for path in written:
        if path.suffix == ".safetensors":
            for name, tensor in load_file(path).items():
                if tensor.is_floating_point():
                    assert torch.isfinite(tensor).all(), f"{path}: {name} is not finite"
    for folder in {p.parent for p in written if (p.parent / "manifest.json").is_file()}:
        verify_checkpoint(folder)


def _written(before: Dict[Path, str], roots: Sequence[Path]) -> List[Path]:
    """The files the case created or changed (staging folders of interrupted writes left out)."""
    after = _files(roots)
    return [p for p, digest in after.items() if before.get(p) != digest]


@dataclass
class Case:
    name: str
    code: int
    words: Tuple[str, ...] = ()
    argv: Optional[Callable[[Ctx], List]] = None          # in-process run of `script`
    script: str = "train"
    setup: Optional[Callable[[Ctx], None]] = None
    runner: Optional[Callable[[Ctx, "object"], Tuple[int, str]]] = None   # a case that needs its own process(es)
    may_change: Callable[[Ctx], List[Path]] = field(default=lambda ctx: [])
    check: Optional[Callable[[Ctx, str], None]] = None
    marks: Tuple = ()


# --- setups -------------------------------------------------------------------------------------------------------

def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _last(ctx: Ctx) -> Path:
    return ctx.copy_run() / "checkpoints" / "last"


def _best(ctx: Ctx) -> Path:
    return ctx.copy_run() / "checkpoints" / "best"


def _nonfinite_weights(ctx: Ctx) -> Path:
    state = load_file(ctx.run / "checkpoints" / "best" / "model.safetensors")
    key = next(k for k in state if k.endswith("running_var"))
    state[key][0] = float("inf")
    path = ctx.tmp / "poisoned.safetensors"
    save_file(state, path)
    return path


def _legacy(folder: Path) -> Path:
    """Make a checkpoint folder look like one written before manifests (format 2)."""
    (folder / "manifest.json").unlink()
    for name in ("run.json", "state.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            if name == "run.json":
                path.unlink()
            else:
                data["format"] = 2
                path.write_text(json.dumps(data))
    return folder


def _truncated_jpeg_tree(ctx: Ctx) -> Path:
    from PIL import Image

    tree = image_tree(ctx.tmp / "jpeg", suffix="jpg", size=16)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3)).astype(np.uint8))
    image.save(tree / "train" / "cat" / "truncated.jpg", quality=95)
    _truncate(tree / "train" / "cat" / "truncated.jpg", 0.5)
    return tree


def _mixed_modes_tree(ctx: Ctx) -> Path:
    """One folder whose images are 8-bit grey, RGBA, palette and 16-bit grey PNGs, all converted to RGB."""
    root = ctx.tmp / "modes"
    for mode in ("L", "RGBA", "P", "I;16"):
        part = image_tree(ctx.tmp / f"part-{mode}", mode=mode, train=2, val=1)
        for path in part.rglob("*.png"):
            target = root / path.relative_to(part).with_name(f"{mode.replace(';', '')}-{path.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        shutil.rmtree(part)
    return root


def _grayscale_16bit_is_scaled(ctx: Ctx, output: str) -> None:
    from PIL import Image

    from collab_zoo.data import to_mode

    ramp = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    assert ramp.mode.startswith("I;16")
    values = np.asarray(to_mode(ramp, "RGB"))[..., 0].reshape(-1)
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) == 256  # not clipped to white


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# --- cases that need processes of their own -------------------------------------------------------------------------

def _without_root_overrides():
    """For a child of a root test process: drop the capabilities that let root write where the permission bits say
    no (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from its bounding set, so a 0555 folder is really read-only to it."""
    if os.geteuid() != 0:
        return None

    def drop():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def run_read_only_output(ctx: Ctx, capsys) -> Tuple[int, str]:
    read_only = ctx.tmp / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        code, output = _finish(_spawn("train", "--dataset", "digits", *SIZE, "--epochs", "1", "--log-with", "none",
                                      "--output", read_only, preexec=_without_root_overrides()))
        assert list(read_only.iterdir()) == []
        return code, output
    finally:
        read_only.chmod(0o755)


def run_full_disk(ctx: Ctx, capsys) -> Tuple[int, str]:
    """A resumed run whose every write beyond 64 kB fails (a real file-size limit set in the child: EFBIG)."""
    run = ctx.copy_run()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    return _finish(_spawn("train", "--resume", run, "--epochs", "2", "--log-with", "none", preexec=limit))


def _slow_writer(ctx: Ctx, *extra, epochs: int = 3) -> Tuple[subprocess.Popen, Path]:
    """A training whose checkpoint files each take 0.15 s more to write, so that a signal lands mid-save."""
    run = ctx.out / "victim"
    proc = _spawn("train", *ctx.train("--recovery-interval", "1", "--epochs", epochs, *extra, experiment="victim"),
                  env_extra={WRITE_DELAY_ENV: "0.15"})
    return proc, run


def _saving(run: Path, name: str, after_first: bool = True) -> Callable[[], bool]:
    ckpt = run / "checkpoints"
    return lambda: (ckpt / f".incoming-{name}").is_dir() and (not after_first or (ckpt / name / "manifest.json").is_file())


def run_sigkill_mid_last(ctx: Ctx, capsys) -> Tuple[int, str]:
    proc, run = _slow_writer(ctx)
    _wait_for(_saving(run, "last"), proc)
    proc.send_signal(signal.SIGKILL)
    code, output = _finish(proc)
    assert code == -signal.SIGKILL
    # checkpoints/last is the previous whole version; validate.py and --resume use it, the leftover is ignored.
    CheckpointFolder(run / "checkpoints" / "last")
    assert validate_main(["--model", "cifar_resnet20", "--checkpoint", str(run), "--data-dir", str(ctx.data),
                          *SIZE]) == 0
    resumed = train_main(["--resume", str(run), "--log-with", "none"])
    assert resumed == 0 and not (run / "checkpoints" / ".incoming-last").exists()
    return 0, output


def run_sigkill_mid_best(ctx: Ctx, capsys) -> Tuple[int, str]:
    proc, run = _slow_writer(ctx)
    _wait_for(_saving(run, "best", after_first=False), proc)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    best = run / "checkpoints" / "best"
    if best.exists():
        CheckpointFolder(best)  # the previous best, whole
    capsys.readouterr()
    code = validate_main(["--model", "cifar_resnet20", "--checkpoint", str(run), "--data-dir", str(ctx.data), *SIZE])
    output = capsys.readouterr().err
    assert code == 0
    if not best.exists():  # the first best was being written: validate says which checkpoint it used instead
        assert "has no checkpoints/best" in output and "using checkpoints/last" in output
    return code, output


def run_sigterm_mid_save(ctx: Ctx, capsys) -> Tuple[int, str]:
    proc, run = _slow_writer(ctx, epochs=20)
    _wait_for(_saving(run, "last"), proc)
    proc.send_signal(signal.SIGTERM)  # the save under way finishes, the run stops at the next step and saves
    code, output = _finish(proc)
    state = CheckpointFolder(run / "checkpoints" / "last").run_state()
    assert state["progress"]["global_step"] >= 3
    return code, output


def run_two_at_once(ctx: Ctx, capsys) -> Tuple[int, str]:
    argv = ctx.train("--epochs", "2", experiment="same")
    procs = [_spawn("train", *argv) for _ in range(2)]
    results = sorted((_finish(p) for p in procs), key=lambda r: r[0])
    (ok, _), (code, output) = results
    assert ok == 0, results[0][1][-3000:]
    assert (ctx.out / "same" / "hub" / "model.safetensors").is_file()
    # Which message depends on timing: the other run is still writing, or has already finished.
    message = _paragraph(output, code)
    assert "being written by another train.py" in message or "already holds a run" in message, message
    return code, output


def run_resume_while_locked(ctx: Ctx, capsys) -> Tuple[int, str]:
    import fcntl

    run = ctx.copy_run()
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a train.py writing this run holds it
        return _in_process("train", ["--resume", run, "--epochs", "2", "--log-with", "none"], capsys)
    finally:
        os.close(fd)


def run_copied_run_resumes_in_the_copy(ctx: Ctx, capsys) -> Tuple[int, str]:
    copy = ctx.copy_run("copy")
    code, output = _in_process("train", ["--resume", copy, "--epochs", "2", "--log-with", "none"], capsys)
    assert code == 0, output[-3000:]
    assert (copy / "checkpoints" / "epoch-1").is_dir() and _results(copy)["epochs"] == 2
    assert json.loads((copy / "checkpoints" / "last" / "state.json").read_text())["progress"]["epoch"] == 2
    for path in (copy / "results.json", copy / "checkpoints" / "last" / "state.json"):
        assert str(ctx.run) not in path.read_text() and str(copy) not in path.read_text()  # no absolute path inside
    return code, output


def run_lr50_then_resume_with_skips(ctx: Ctx, capsys) -> Tuple[int, str]:
    """The issue's repro: --lr 50. The run stops at the first non-finite step; the last checkpoint is the last
    finite state, and nothing is published. Resumed with --skip-nonfinite-steps, it finishes, every bad step
    skipped and reported."""
    run = ctx.out / "lr50"
    argv = ctx.train("--lr", "50", "--epochs", "5", "--recovery-interval", "2", experiment="lr50")
    code, output = _in_process("train", argv, capsys)
    assert code == 3, output[-3000:]
    assert not (run / "hub").exists() and not (run / "results.json").exists()
    saved = CheckpointFolder(run / "checkpoints" / "last").run_state()["progress"]
    assert saved["global_step"] >= 2
    message = _paragraph(output, code)
    assert f"after optimizer step {saved['global_step']}" in message  # it says which checkpoint is kept
    # Resumed with too few skips allowed: two bad steps are undone and logged, the third stops the run; a
    # checkpoint written between them holds the state the skips restored, and says they were skipped.
    few, few_output = _in_process("train", ["--resume", run, "--skip-nonfinite-steps", "2", "--log-with", "none"],
                                  capsys)
    assert few == 3 and "already skipped, the most --skip-nonfinite-steps 2 allows" in _paragraph(few_output, few)
    assert few_output.count("Skipped epoch") == 2
    assert len(CheckpointFolder(run / "checkpoints" / "last").run_state()["progress"]["nonfinite_skips"]) <= 2
    resumed, resumed_output = _in_process(
        "train", ["--resume", run, "--skip-nonfinite-steps", "1000", "--log-with", "none"], capsys)
    assert resumed == 0, resumed_output[-3000:]
    results = _results(run)
    assert results["nonfinite_steps_skipped"] > 0 and "Skipped epoch" in resumed_output
    assert all(s["problem"] for s in results["nonfinite_skips"])
    return code, output


# --- the table ------------------------------------------------------------------------------------------------------

def _v(ctx: Ctx, *args) -> List:
    return ["--model", "cifar_resnet20", "--data-dir", ctx.data, *SIZE, *args]


CASES: List[Case] = [
    # Flags: argparse's exit code 2 before anything is loaded.
    Case("epochs-0", 2, ("--epochs must be at least 1",), lambda c: c.train("--epochs", "0")),
    Case("batch-0", 2, ("-b/--batch-size must be at least 1",), lambda c: c.train("-b", "0")),
    Case("grad-accum-0", 2, ("--grad-accum-steps must be at least 1",), lambda c: c.train("--grad-accum-steps", "0")),
    Case("negative-lr", 2, ("--lr must be at least 0",), lambda c: c.train("--lr", "-0.1")),
    Case("nan-lr", 2, ("--lr must be a finite number",), lambda c: c.train("--lr", "nan")),
    Case("input-size-zero", 2, ("--input-size must be at least 1",), lambda c: c.train("--input-size", "3", "0", "8")),
    Case("input-size-two-numbers", 2, ("--input-size takes C H W",), lambda c: c.train("--input-size", "3", "8")),
    Case("img-size-negative", 2, ("--img-size must be at least 1",), lambda c: c.train("--img-size", "-4")),
    Case("weight-decay-negative", 2, ("--weight-decay must be at least 0",), lambda c: c.train("--weight-decay", "-1")),
    Case("smoothing-above-one", 2, ("--smoothing must be in [0, 1)",), lambda c: c.train("--smoothing", "1.5")),
    Case("ema-decay-above-one", 2, ("--model-ema-decay must be in [0, 1)",),
         lambda c: c.train("--model-ema", "--model-ema-decay", "1.5")),
    Case("seed-negative", 2, ("--seed must be between 0",), lambda c: c.train("--seed", "-1")),
    Case("workers-negative", 2, ("-j/--workers must be at least 0",), lambda c: c.train("-j", "-1")),
    Case("scale-reversed", 2, ("--scale takes min then max",), lambda c: c.train("--scale", "0.9", "0.1")),
    Case("unknown-optimizer", 2, ("not one of timm's optimizers", "adamax"), lambda c: c.train("--opt", "adamx")),
    Case("unknown-scheduler", 2, ("--sched 'cosin' is not one of",), lambda c: c.train("--sched", "cosin")),
    Case("experiment-escapes-output", 2, ("must be a plain folder name",), lambda c: c.train("--experiment", "../x")),
    Case("skip-steps-negative", 2, ("--skip-nonfinite-steps must be at least 0",),
         lambda c: c.train("--skip-nonfinite-steps", "-1")),
    Case("unknown-eval-metric", 2, ("--eval-metric 'top9' is not measured",), lambda c: c.train("--eval-metric", "top9")),
    Case("md-level-out-of-range", 2, ("has levels 1 to 5",),
         lambda c: ["--dataset", "multidigit-II", "--md-level", "9", *SIZE, "--output", c.out]),
    Case("batch-of-one-with-batchnorm", 2, ("cannot train on batches of one",), lambda c: c.train("-b", "1")),
    # -c YAML files of the wrong shape.
    Case("config-a-list", 2, ("must map setting names to values",),
         lambda c: c.train("-c", _write(c.tmp / "list.yaml", "- lr\n- 0.1\n"))),
    Case("config-wrong-type", 2, ("epochs must be int",),
         lambda c: c.train("-c", _write(c.tmp / "type.yaml", "epochs: many\n"))),
    Case("config-model-kwargs-not-a-map", 2, ("must map option names to values",),
         lambda c: c.train("-c", _write(c.tmp / "kw.yaml", "model_kwargs: 5\n"))),
    Case("config-not-utf8", 2, ("is not UTF-8 text",),
         lambda c: c.train("-c", _write(c.tmp / "latin.yaml", "experiment: caf\xe9\n".encode("latin-1")))),
    Case("config-a-folder", 2, ("is a folder",), lambda c: c.train("-c", c.tmp)),
    Case("config-bad-yaml", 2, ("is not valid YAML",),
         lambda c: c.train("-c", _write(c.tmp / "bad.yaml", "lr: [0.1\n"))),
    Case("config-value-out-of-range", 2, ("--epochs (set in the -c/--config file) must be at least 1",),
         lambda c: ["-c", _write(c.tmp / "zero.yaml", "epochs: 0\n"), "--data-dir", c.data]),
    Case("config-switch-not-bool", 2, ("is a switch",),
         lambda c: c.train("-c", _write(c.tmp / "sw.yaml", "amp: 3\n"))),
    # Data.
    Case("data-dir-missing", 2, ("does not exist",), lambda c: c.train(data=c.tmp / "missing")),
    Case("data-dir-is-a-file", 2, ("is a file",), lambda c: c.train(data=_write(c.tmp / "file", "x"))),
    Case("empty-data-folder", 2, ("has no class folders",),
         lambda c: c.train(data=(c.tmp / "empty" / "train").mkdir(parents=True) or c.tmp / "empty")),
    Case("class-folders-without-images", 2, ("no images in them",),
         lambda c: c.train(data=[(c.tmp / "noimg" / s / "a").mkdir(parents=True) for s in ("train", "val")]
                           and c.tmp / "noimg")),
    Case("one-image-folder", 2, ("needs batches of two or more",),
         lambda c: c.train(data=c.tree("one", classes=("only",), train=1, val=1))),
    Case("no-validation-split", 2, ("has no 'validation' split",),
         lambda c: c.train(data=(c.tree("noval"), shutil.rmtree(c.tmp / "noval" / "val"))[0])),
    Case("validation-classes-differ", 2, ("classes the training split lacks",),
         lambda c: c.train(data=(c.tree("differ"), image_tree(c.tmp / "differ", classes=("owl",), train=0))[0])),
    Case("truncated-jpeg", 2, ("Cannot read image", "--skip-bad-images"),
         lambda c: c.train(data=_truncated_jpeg_tree(c))),
    Case("truncated-jpeg-in-a-worker", 2, ("Cannot read image", "--skip-bad-images"),
         lambda c: c.train("-j", "1", data=_truncated_jpeg_tree(c))),
    Case("truncated-jpeg-and-empty-file-skipped-and-counted", 0, (),
         lambda c: c.train("--skip-bad-images",
                           data=(_truncated_jpeg_tree(c), _write(c.tmp / "jpeg/val/dog/empty.jpg", b""))[0]),
         check=lambda c, out: _results(c.out / "case")["skipped_images"] == 2 or pytest.fail(out[-2000:])),
    Case("grayscale-rgba-palette-and-16-bit-pngs-work", 0, (), lambda c: c.train(data=_mixed_modes_tree(c)),
         check=_grayscale_16bit_is_scaled),
    Case("unknown-dataset", 2, ("Unknown --dataset",), lambda c: ["--dataset", "cifar", "--output", c.out]),
    Case("unknown-model", 2, ("Unknown model",), lambda c: c.train("--model", "dks_resnet21")),
    Case("output-is-a-file", 2, ("is a file, not a folder",), lambda c: c.train("--output", _write(c.tmp / "f", "x"))),
    # An existing run, and resuming one that is damaged.
    Case("existing-run-not-overwritten", 2, ("already holds a run",),
         lambda c: ["--data-dir", c.data, *TINY, "--output", c.copy_run().parent, "--experiment", "copy"]),
    Case("resume-missing-folder", 2, ("no such folder",), lambda c: ["--resume", c.tmp / "nowhere"]),
    Case("resume-damaged-state-json", 2, ("state.json's sha256 differs",),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: _flip_byte(_last(c) / "state.json", 10)),
    Case("resume-truncated-weights", 2, ("model.safetensors has", "its manifest says"),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: _truncate(_last(c) / "model.safetensors")),
    Case("resume-flipped-byte", 2, ("optimizer.safetensors's sha256 differs",),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: _flip_byte(_last(c) / "optimizer.safetensors")),
    Case("resume-missing-file", 2, ("rank0.json is missing",),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: (_last(c) / "rank0.json").unlink()),
    Case("resume-torn-no-manifest", 2, ("has no manifest.json",),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: (_last(c) / "manifest.json").unlink()),
    Case("resume-damaged-manifest", 2, ("manifest.json is not valid JSON",),
         lambda c: ["--resume", c.copy_run()], setup=lambda c: _write(_last(c) / "manifest.json", "{")),
    Case("resume-legacy-state-not-json", 2, ("state.json is not valid JSON",),
         lambda c: ["--resume", c.copy_run()],
         setup=lambda c: _write(_legacy(_last(c)) / "state.json", "not json")),
    Case("resume-legacy-state-without-progress", 2, ("state.json is damaged", "progress"),
         lambda c: ["--resume", c.copy_run()],
         setup=lambda c: _write(_legacy(_last(c)) / "state.json", json.dumps({"format": 2, "args": {}}))),
    Case("resume-a-weights-only-checkpoint", 2, ("holds weights only",), lambda c: ["--resume", _best(c)]),
    Case("resume-while-another-run-writes-it", 2, ("being written by another train.py",),
         runner=run_resume_while_locked),
    Case("initial-checkpoint-damaged", 2, ("sha256 differs",), lambda c: c.train("--initial-checkpoint", _best(c)),
         setup=lambda c: _flip_byte(_best(c) / "model.safetensors")),
    Case("initial-checkpoint-non-finite", 3, ("holds NaN or infinity", "running_var"),
         lambda c: c.train("--initial-checkpoint", c.tmp / "poisoned.safetensors"), setup=_nonfinite_weights),
    Case("initial-checkpoint-a-pickle", 2, ("never pickles",),
         lambda c: c.train("--initial-checkpoint", _write(c.tmp / "w.pth", b"\x80\x04pickle"))),
    # validate.py.
    Case("validate-batch-0", 2, ("-b/--batch-size must be at least 1",), lambda c: _v(c, "-b", "0"), script="validate"),
    Case("validate-img-size-0", 2, ("--img-size must be at least 1",), lambda c: _v(c, "--img-size", "0"),
         script="validate"),
    Case("validate-num-classes-0", 2, ("--num-classes must be at least 1",), lambda c: _v(c, "--num-classes", "0"),
         script="validate"),
    Case("validate-torn-best", 2, ("is incomplete", "manifest.json"),
         lambda c: _v(c, "--checkpoint", c.copy_run()), script="validate",
         setup=lambda c: (_best(c) / "manifest.json").unlink()),
    Case("validate-damaged-best", 2, ("model.safetensors's sha256 differs",),
         lambda c: _v(c, "--checkpoint", c.copy_run()), script="validate",
         setup=lambda c: _flip_byte(_best(c) / "model.safetensors")),
    Case("validate-damaged-epoch-checkpoint", 2, ("metrics.json has 2 bytes", "its manifest says"),
         lambda c: _v(c, "--checkpoint", str(c.copy_run() / "checkpoints" / "epoch-*")), script="validate",
         setup=lambda c: _write(c.copy_run() / "checkpoints" / "epoch-0" / "metrics.json", "{}")),
    Case("validate-legacy-checkpoint-loads", 0, ("before checkpoints had a manifest",),
         lambda c: _v(c, "--checkpoint", _best(c)), script="validate", setup=lambda c: _legacy(_best(c))),
    Case("validate-legacy-non-finite", 3, ("holds NaN or infinity",),
         lambda c: _v(c, "--checkpoint", _best(c)), script="validate",
         setup=lambda c: (_legacy(_best(c)), shutil.copy(_nonfinite_weights(c), _best(c) / "model.safetensors"))),
    Case("validate-a-hub-folder-as-checkpoint", 2, ("is a Hub folder", "local-dir:"),
         lambda c: _v(c, "--checkpoint", c.run / "hub"), script="validate"),
    Case("validate-results-file-unwritable", 4, ("--results-file", "could not write"),
         lambda c: _v(c, "--checkpoint", c.run, "--results-file", _write(c.tmp / "file", "x") / "r.json"),
         script="validate"),
    Case("validate-checkpoint-missing", 2, ("does not exist",),
         lambda c: _v(c, "--checkpoint", c.tmp / "none"), script="validate"),
    # Faults while running.
    Case("lr-50-stops-keeps-last-finite-publishes-nothing", 3, ("went non-finite", "running_var",
                                                                 "--skip-nonfinite-steps"),
         runner=run_lr50_then_resume_with_skips, may_change=lambda c: [c.out]),
    Case("copied-run-resumes-in-the-copy", 0, (), runner=run_copied_run_resumes_in_the_copy,
         may_change=lambda c: [c.tmp / "copy"]),
    Case("read-only-output", 4, ("is not writable",), runner=run_read_only_output),
    Case("disk-full-while-checkpointing", 4, ("Could not write the checkpoint", "File too large"),
         runner=run_full_disk, may_change=lambda c: [c.tmp / "copy" / "summary.csv"],
         check=lambda c, out: (c.tmp / "copy" / "summary.csv").read_text().startswith("epoch,")
         or pytest.fail("summary.csv damaged")),
    Case("sigkill-while-last-is-written", 0, (), runner=run_sigkill_mid_last, may_change=lambda c: [c.out]),
    Case("sigkill-while-best-is-written", 0, (), runner=run_sigkill_mid_best, may_change=lambda c: [c.out]),
    Case("sigterm-while-last-is-written", 143, ("terminated (SIGTERM): saved", "--resume"),
         runner=run_sigterm_mid_save, may_change=lambda c: [c.out]),
    Case("two-runs-same-output", 2, (), runner=run_two_at_once, may_change=lambda c: [c.out],
         marks=(pytest.mark.slow,)),  # two trainings at once on the test machine's two cores; CI runs it
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_bad_input_or_fault(case: Case, shared: Shared, tmp_path, capsys):
    ctx = Ctx(tmp_path, shared.data, shared.run)
    if case.setup is not None:
        case.setup(ctx)
    before = _files([tmp_path, shared.data, shared.run])
    if case.runner is not None:
        code, output = case.runner(ctx, capsys)
    else:
        code, output = _in_process(case.script, case.argv(ctx), capsys)
    assert code == case.code, output[-3000:]
    assert "Traceback" not in output
    if case.code != 0:
        message = _paragraph(output, code)
        for words in case.words:
            assert words in message, message
    else:
        for words in case.words:
            assert words in output, output[-3000:]
    _assert_nothing_damaged(before, case.may_change(ctx))
    _assert_finite_and_whole(_written(before, [tmp_path, shared.data, shared.run]))
    if case.check is not None:
        case.check(ctx, output)


def test_the_shared_run_is_still_whole_and_finite(shared: Shared):
    _assert_finite_and_whole(list(_files([shared.run])))


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
