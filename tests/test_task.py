"""CollabTask driven the way timm's training loop drives a timm.task.TrainingTask, for one model of each method."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import collab_zoo
from collab_zoo.contract import predict_of
from collab_zoo.training.task import CollabTask

from conftest import ROOT, subprocess_env

# One model of each method, small enough for a CPU test: (name, kwargs, input shape).
MODELS = {
    "dks": ("dks_resnet20", dict(num_classes=10, in_chans=1), (1, 16, 16)),
    "cldl": ("cldl_nin_mnist", dict(num_classes=10), (1, 28, 28)),
    "dcl": ("dcl_lenet", dict(num_classes=10, variant="A3S"), (1, 28, 28)),
    "complementary": ("complementary", dict(member="mlp_mnist", tau=2, num_classes=10), (1, 28, 28)),
}


def _model(kind):
    name, kwargs, shape = MODELS[kind]
    torch.manual_seed(0)
    return collab_zoo.create_model(name, **kwargs), shape


def _batch(shape, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _timm_step(task, optimizer, x, y, step):
    """One iteration of timm's train_one_epoch: task forward, backward, optimizer step, EMA update."""
    task.get_trainable_module().train()
    result = task(x, y)
    result["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()
    task.update_ema(step=step)
    return result


@pytest.mark.parametrize("kind", list(MODELS))
def test_task_loss_is_collab_loss_and_the_loop_trains_and_evaluates(kind):
    from timm.optim import create_optimizer_v2

    model, shape = _model(kind)
    task = CollabTask(model, verbose=False)
    assert task.round_index == 0
    task.setup_ema(decay=0.9)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=0.01)
    x, y = _batch(shape)
    module = task.get_trainable_module().train()

    # The task's loss equals the model's own objective on the same batch (same random draws).
    torch.manual_seed(123)
    result = task(x, y)
    torch.manual_seed(123)
    heads = module(x)
    expected, parts = task.round.loss(heads, y)
    assert torch.equal(result["loss"], expected)
    assert {k for k in result if k not in ("loss", "output")} == {k for k in parts if k != "total"}
    for name in parts:
        if name != "total":
            assert torch.equal(result[name].detach(), parts[name].detach()), name
    if task.round.module is model:
        assert torch.equal(result["output"], predict_of(model, heads).detach())
        assert torch.equal(expected, model.collab_loss(heads, y)[0])
    assert result["output"].shape == (8, 10) and not result["output"].requires_grad

    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for step in range(1, 3):
        result = _timm_step(task, optimizer, x, y, step)
        assert torch.isfinite(result["loss"])
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items()), "the step changed nothing"

    # Eval through the task's eval model (and its EMA): [B, C] scores by the method's inference rule.
    eval_model = task.get_eval_model().eval()
    with torch.no_grad():
        scores = eval_model(x)
        ema_scores = task.get_eval_model(ema=True).eval()(x)
    assert scores.shape == ema_scores.shape == (8, 10)
    if task.round.module is model:
        with torch.no_grad():
            assert torch.allclose(scores, predict_of(model, model.forward_heads(x)), atol=1e-5)
    evaluator = task.create_evaluator()
    evaluator.update(scores, y)
    # timm's evaluator counts the method's answers: the share of rows whose highest score is the label.
    assert evaluator.compute()["top1"] == pytest.approx(100.0 * (scores.argmax(-1) == y).float().mean().item())
    # ...and on scores set by hand: 6 of the 8 rows name their label first -> 75 %.
    hand = torch.zeros(8, 10)
    hand[torch.arange(8), torch.where(torch.arange(8) < 6, y, (y + 1) % 10)] = 1.0
    counted = task.create_evaluator()
    counted.update(hand, y)
    assert counted.compute()["top1"] == pytest.approx(75.0)


def test_soft_targets_and_label_smoothing_reach_the_objective():
    from timm.data import Mixup

    model, shape = _model("dks")
    x, y = _batch(shape)
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.4, label_smoothing=0.1, num_classes=10)
    x_mixed, soft = mixup(x, y)
    assert soft.shape == (8, 10)
    task = CollabTask(model, verbose=False)
    task.train()
    torch.manual_seed(0)
    mixed = task(x_mixed, soft)
    torch.manual_seed(0)
    assert torch.equal(mixed["loss"], model.collab_loss(model(x_mixed), soft)[0])

    smoothing = CollabTask(model, smoothing=0.1, verbose=False)
    rows = F.one_hot(y, 10).float() * 0.9 + 0.01
    torch.manual_seed(0)
    smoothed = smoothing(x, y)
    torch.manual_seed(0)
    assert torch.allclose(smoothed["loss"], model.collab_loss(model(x), rows)[0])
    torch.manual_seed(0)
    assert not torch.allclose(smoothed["loss"], model.collab_loss(model(x), y)[0])


def test_boosting_rounds_run_one_task_per_round():
    from timm.optim import create_optimizer_v2

    model, shape = _model("complementary")
    x, y = _batch(shape, n=40, seed=3)
    heldout = [(x[:20], y[:20]), (x[20:], y[20:])]
    for expected_round in range(2):
        task = CollabTask(model, verbose=False)  # picks the first unfinished round
        assert task.round_index == expected_round and task.needs_heldout
        assert task.get_trainable_module() is model.members[expected_round]
        assert "round" in task.describe() and "complete_round" in task.describe()
        optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=0.05)
        member_before = {k: v.clone() for k, v in model.members[expected_round].state_dict().items()}
        others_before = {k: v.clone() for k, v in model.members[1 - expected_round].state_dict().items()}
        _timm_step(task, optimizer, x, y, 1)
        assert any(not torch.equal(member_before[k], v) for k, v in model.members[expected_round].state_dict().items())
        assert all(torch.equal(others_before[k], v) for k, v in model.members[1 - expected_round].state_dict().items())
        with pytest.raises(ValueError, match="held-out"):
            task.complete_round()
        info = task.complete_round(heldout)
        assert info["round"] == expected_round + 1 and 0 < info["gamma"] < 1
        assert int(model.rounds_completed) == expected_round + 1
        # A checkpoint of the round (timm's get_checkpoint_state) carries the whole ensemble as task state.
        state = task.get_checkpoint_state()
        assert set(state) == {"state_dict", "task_state"} and "gammas" in state["task_state"]["model"]
    with torch.no_grad():
        assert model.eval()(x).shape == (40, 10)


def test_one_round_task_checkpoint_is_the_model():
    model, _ = _model("cldl")
    task = CollabTask(model, verbose=False)
    state = task.get_checkpoint_state()
    assert set(state) == {"state_dict"} and state["state_dict"].keys() == model.state_dict().keys()


def test_compile_gives_an_eval_model_with_the_inference_rule():
    model, shape = _model("dks")
    x, y = _batch(shape)
    task = CollabTask(model, verbose=False)
    task.compile(backend="eager")
    task.get_trainable_module().train()
    assert torch.isfinite(task(x, y)["loss"])
    eval_model = task.get_eval_model().eval()
    with torch.no_grad():
        assert torch.allclose(eval_model(x), model.eval()(x), atol=1e-6)


def test_plain_timm_model_is_one_round_of_cross_entropy():
    model = collab_zoo.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    x, y = _batch((1, 16, 16))
    task = CollabTask(model, verbose=False).train()
    torch.manual_seed(0)
    result = task(x, y)
    torch.manual_seed(0)
    assert torch.equal(result["loss"], F.cross_entropy(model(x), y)) and set(result) == {"loss", "output", "ce"}


def test_an_older_timm_without_the_task_api_gets_a_message_naming_the_version():
    # Hide timm.task, as timm < 1.0.23 lacks it (and < 1.0.31 lacks hooks the task needs), in a fresh interpreter.
    code = textwrap.dedent("""
        import sys
        sys.modules["timm.task"] = None
        import collab_zoo  # the package itself does not need the task API
        print("ACCELERATE IMPORTED:", "accelerate" in sys.modules)
        try:
            collab_zoo.CollabTask
        except ImportError as e:
            print("MESSAGE:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert "MESSAGE:" in out.stdout, out.stdout + out.stderr
    assert "timm >= 1.0.31" in out.stdout and "pip install -U" in out.stdout
    assert "ACCELERATE IMPORTED: False" in out.stdout


def test_the_package_exports_the_task():
    assert collab_zoo.CollabTask is CollabTask


_DDP_SCRIPT = textwrap.dedent("""
    import gc, hashlib, json, sys
    import torch, torch.distributed as dist
    import collab_zoo
    from collab_zoo.training.task import CollabTask
    from timm.optim import create_optimizer_v2

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = {}
    for kind, (name, kwargs, shape) in json.loads(sys.argv[2]).items():
        torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
        model = collab_zoo.create_model(name, **kwargs)
        task = CollabTask(model, verbose=rank == 0)
        task.setup_ema(decay=0.9)
        task.prepare_distributed()
        module = task.get_trainable_module()
        optimizer = create_optimizer_v2(module, opt="sgd", lr=0.05, momentum=0.9)
        torch.manual_seed(100 + rank)  # each rank its own data (and its own stochastic branches)
        for step in range(1, 4):
            x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
            module.train()
            result = task(x, y)
            result["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            task.update_ema(step=step)
        digest = hashlib.sha256()
        for key, value in sorted(task.round.module.named_parameters()):
            digest.update(value.detach().numpy().tobytes())
        digests = [None] * world
        dist.all_gather_object(digests, digest.hexdigest())
        report[kind] = dict(digests=digests, find_unused=module.find_unused_parameters)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    # The DDP wrapper holds the process group: left alive, it was freed during interpreter shutdown, where gloo
    # aborted one rank in about 1 run of 10 ("terminate called without an active exception"; 0 of 40 this way).
    del task, module, optimizer
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
""")


def test_two_process_ddp_through_the_task_keeps_ranks_identical(tmp_path):
    script = tmp_path / "ddp_task.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "result.json"
    kinds = {kind: MODELS[kind] for kind in ("dcl", "dks")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(out), json.dumps(kinds)]
    proc = subprocess.run(command, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    for kind, result in report.items():
        assert len(result["digests"]) == 2 and result["digests"][0] == result["digests"][1], kind
        # DCL's stochastic branches leave parameters unused in a step: DDP was told to look for them.
        assert result["find_unused"] is (kind == "dcl"), kind
