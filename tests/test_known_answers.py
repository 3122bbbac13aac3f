"""Known answers: the numbers users read (top-1, top-5, per-class, per-head, loss), the settings a run starts
from (recipe < -c file < flags), an exact resume's batches, and checkpoint round trips, each compared with an
answer worked out by hand in this file, never with the output of the code under test.

The evaluation model below returns logits looked up from fixed tables, so every expected figure is a count done
on paper (the comments show the count).
"""
import datetime
import hashlib
import json
import random
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from collab_zoo.contract import CollabModel, cross_entropy_loss
from collab_zoo.errors import CorruptCheckpointError, IncompatibleConfigError
from collab_zoo.training.args import RECIPES, parse_args, parse_validate_args
from collab_zoo.training.checkpoint import (
    CheckpointFolder, CheckpointHistory, expand_checkpoint_pattern, find_checkpoint_weights, flatten_state,
    latest_checkpoint, restore_rng_state, rng_state, run_folder_of, save_tensors_and_json, unflatten_state,
    verify_checkpoint, write_checkpoint, write_weights, MANIFEST,
)
from collab_zoo.training.evaluate import EvalResult, evaluate, score_loss
from collab_zoo.training.loader import batches_per_epoch

# --- evaluate(): hand-counted figures ------------------------------------------------------------------------------

NUM_CLASSES = 8  # class 7 has no image: its per-class figure is 0, not a division by zero


def _ranked(order, num_classes):
    """Logits ranking the classes in ``order`` first to last (7, 6, 5, ...), the rest below in index order."""
    order = list(order) + [c for c in range(num_classes) if c not in order]
    row = torch.zeros(num_classes)
    for position, c in enumerate(order):
        row[c] = float(num_classes - 1 - position)
    return row


def _onehot(c, num_classes, value=1.5):
    row = torch.zeros(num_classes)
    row[c] = value
    return row


# (target, main head's ranking, aux head's top class). The method's scores are main + aux: the aux head's class
# (+1.5) moves up exactly one place in the main head's ranking, so the scores' order is known by hand.
SAMPLES = [
    (0, [0, 1, 2, 3, 4, 5, 6], 0),   # scores 0,1,..: top1 hit, top5 hit; main hit, aux hit
    (1, [2, 1, 0, 3, 4, 5, 6], 1),   # scores 1,2,..: top1 hit;             main miss, aux hit
    (2, [2, 0, 1, 3, 4, 5, 6], 0),   # scores 0,2,..: top1 miss, top5 hit;  main hit, aux miss
    (3, [0, 1, 2, 4, 5, 3, 6], 6),   # scores 0,1,2,4,5,6,3: target 7th: top5 miss; main miss, aux miss
    (3, [0, 1, 2, 4, 3, 5, 6], 3),   # scores 0,1,2,3,..: target 4th: top5 hit; main miss, aux hit
    (4, [0, 1, 2, 3, 5, 4, 6], 4),   # scores 0,1,2,3,4: target 5th (6th in main): top5 hit; main miss, aux hit
    (5, [5, 0, 1, 2, 3, 4, 6], 0),   # scores 0,5,..: top1 miss, top5 hit;  main hit, aux miss
    (6, [6, 0, 1, 2, 3, 4, 5], 6),   # top1 hit;                            main hit, aux hit
    (0, [1, 2, 3, 4, 5, 6, 0], 0),   # scores 1,..,5,0,6: target 7th: top5 miss; main miss, aux hit
    (0, [0, 1, 2, 3, 4, 5, 6], 1),   # scores 1,0,..: top1 miss, top5 hit;  main hit, aux miss
]
BATCHES = (4, 4, 2)  # uneven, so a mean of batch means is not the mean over images
# Counted from the table: top-1 hits are samples 0, 1, 7 (3 of 10); top-5 misses are samples 3 and 8 (8 of 10);
# the main head is right on 0, 2, 6, 7, 9 (5), the aux head on 0, 1, 4, 5, 7, 8 (6).
# Per class (hits / images of that class): 0: 1/3 (sample 0 of 0, 8, 9), 1: 1/1, 2: 0/1, 3: 0/2, 4: 0/1, 5: 0/1,
# 6: 1/1, 7: no images.
EXPECTED = dict(count=10, top1=30.0, top5=80.0, head_top1={"aux": 60.0, "main": 50.0},
                per_class=[100 / 3, 100.0, 0.0, 0.0, 0.0, 0.0, 100.0, 0.0])


class TableModel(CollabModel):
    """Two heads whose logits are looked up by the sample number each 'image' carries; scores = main + aux."""

    head_names = ("aux", "main")

    def __init__(self, samples, num_classes=NUM_CLASSES):
        super().__init__()
        self.register_buffer("aux", torch.stack([_onehot(a, num_classes) for _, _, a in samples]))
        self.register_buffer("main", torch.stack([_ranked(order, num_classes) for _, order, _ in samples]))
        self.anchor = nn.Parameter(torch.zeros(()))  # evaluate() takes the device from the parameters
        self.modes_seen = []
        self.layouts_seen = []   # True: the plain NCHW layout

    def forward_heads(self, x):
        self.modes_seen.append(self.training)
        self.layouts_seen.append(x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))
        index = x[:, 0, 0, 0].long()
        return self.aux[index] + self.anchor, self.main[index] + self.anchor

    def predict(self, heads):
        return heads[0] + heads[1]

    def collab_loss(self, outputs, target, sample_weight=None):
        return cross_entropy_loss(outputs, target, sample_weight)


def _loader(samples=SAMPLES, sizes=BATCHES, start=0):
    """Batches of 2x2 two-channel 'images' holding their sample number, with the samples' targets."""
    batches = []
    for size in sizes:
        index = torch.arange(start, start + size)
        images = index.float()[:, None, None, None].expand(-1, 2, 2, 2).contiguous()
        target = torch.tensor([samples[i][0] for i in index.tolist()])
        batches.append((images, target))
        start += size
    assert start <= len(samples)
    return batches


def test_evaluate_gives_the_hand_counted_top1_top5_per_class_and_per_head_figures():
    model = TableModel(SAMPLES)
    model.train()
    result = evaluate(model, _loader(), NUM_CLASSES)
    assert result.count == EXPECTED["count"]
    assert result.top1 == pytest.approx(EXPECTED["top1"])
    assert result.top5 == pytest.approx(EXPECTED["top5"])
    assert result.head_top1 == pytest.approx(EXPECTED["head_top1"])
    assert list(result.head_top1) == ["aux", "main"]
    assert result.per_class == pytest.approx(EXPECTED["per_class"])
    assert result.loss is None
    # Evaluated in eval mode, and the model is left in the mode it was in.
    assert set(model.modes_seen) == {False} and model.training
    model.eval()
    evaluate(model, _loader(), NUM_CLASSES)
    assert not model.training


def test_evaluate_figures_do_not_depend_on_how_the_images_are_batched():
    one_batch = evaluate(TableModel(SAMPLES), _loader(sizes=(10,)), NUM_CLASSES)
    singles = evaluate(TableModel(SAMPLES), _loader(sizes=(1,) * 10), NUM_CLASSES)
    for result in (one_batch, singles):
        assert (result.top1, result.top5) == pytest.approx((EXPECTED["top1"], EXPECTED["top5"]))
        assert result.per_class == pytest.approx(EXPECTED["per_class"])
        assert result.head_top1 == pytest.approx(EXPECTED["head_top1"])


def test_evaluate_loss_is_the_mean_over_images_not_over_batches():
    # A loss that is each image's target number: its mean over the 10 images is 24 / 10 = 2.4
    # (targets 0+1+2+3+3+4+5+6+0+0). The mean of the three batch means would be (1.5 + 4.5 + 0) / 3 = 2.0.
    result = evaluate(TableModel(SAMPLES), _loader(), NUM_CLASSES,
                      loss_fn=lambda heads, scores, target: target.float().mean())
    assert result.loss == pytest.approx(2.4)
    assert result.as_dict("val_") == pytest.approx({"val_loss": 2.4, "val_top1": 30.0, "val_top5": 80.0,
                                                    "val_top1_aux": 60.0, "val_top1_main": 50.0})
    assert list(result.as_dict()) == ["loss", "top1", "top5", "top1_aux", "top1_main"]


def test_evaluate_loss_sees_the_heads_and_the_scores_of_each_batch():
    # The target's score per image, from the table: main's value is 7 - the target's place in the ranking, plus
    # 1.5 where the aux head names the target. Scores: 8.5 7.5 7 2 4.5 3.5 7 8.5 2.5 7 (mean 58 / 10 = 5.8);
    # the main head alone: 7 6 7 2 3 2 7 7 1 7 (mean 4.9).
    def target_value(logits, target):
        return logits.gather(1, target[:, None]).mean()

    by_scores = evaluate(TableModel(SAMPLES), _loader(), NUM_CLASSES,
                         loss_fn=lambda heads, scores, target: target_value(scores, target))
    by_main = evaluate(TableModel(SAMPLES), _loader(), NUM_CLASSES,
                       loss_fn=lambda heads, scores, target: target_value(heads[1], target))
    assert (by_scores.loss, by_main.loss) == pytest.approx((5.8, 4.9))


def test_evaluate_hands_the_model_channels_last_images_when_asked():
    model = TableModel(SAMPLES)
    plain = evaluate(model, _loader(), NUM_CLASSES)
    assert model.layouts_seen == [True] * len(BATCHES)
    model.layouts_seen.clear()
    fast = evaluate(model, _loader(), NUM_CLASSES, channels_last=True)
    assert model.layouts_seen == [False] * len(BATCHES)
    assert (fast.top1, fast.top5, fast.per_class) == (plain.top1, plain.top5, plain.per_class)


def test_a_single_image_scores_100_or_0():
    right = evaluate(TableModel(SAMPLES[:1]), _loader(SAMPLES[:1], (1,)), NUM_CLASSES)
    assert (right.count, right.top1, right.top5) == (1, 100.0, 100.0)
    assert right.head_top1 == {"aux": 100.0, "main": 100.0}
    wrong = evaluate(TableModel(SAMPLES[3:4]), _loader(SAMPLES[3:4], (1,)), NUM_CLASSES)
    assert (wrong.count, wrong.top1, wrong.top5) == (1, 0.0, 0.0)


def _sharded_rank(rank, world, store_path, out_path):
    import torch.distributed as dist

    # A bounded wait: a peer that never arrives fails the test in a minute instead of holding the suite.
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # Rank 0 has samples 0-4 (batches of 4 and 1), rank 1 samples 5-9 (batches of 3 and 2).
        shards = {0: ((4, 1), 0), 1: ((3, 2), 5)}
        sizes, start = shards[rank]
        result = evaluate(TableModel(SAMPLES), _loader(SAMPLES, sizes, start), NUM_CLASSES,
                          loss_fn=lambda heads, scores, target: target.float().mean())
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(dict(count=result.count, top1=result.top1, top5=result.top5, heads=result.head_top1,
                           per_class=result.per_class, loss=result.loss), f)
    finally:
        dist.destroy_process_group()


def test_a_sharded_evaluation_sums_to_the_single_process_figures(tmp_path):
    import multiprocessing

    # Rank 1 in a forked process (it inherits the imported modules: no start-up cost), rank 0 in this one.
    peer = multiprocessing.get_context("fork").Process(
        target=_sharded_rank, args=(1, 2, str(tmp_path / "store"), str(tmp_path / "r")))
    peer.start()
    try:
        _sharded_rank(0, 2, str(tmp_path / "store"), str(tmp_path / "r"))
    finally:
        peer.join(120)
    assert peer.exitcode == 0
    for rank in range(2):
        result = json.loads((tmp_path / f"r.{rank}").read_text())
        # Every process reports the whole set's figures, each image counted once.
        assert result["count"] == 10 and result["loss"] == pytest.approx(2.4)
        assert (result["top1"], result["top5"]) == pytest.approx((EXPECTED["top1"], EXPECTED["top5"]))
        assert result["heads"] == pytest.approx(EXPECTED["head_top1"])
        assert result["per_class"] == pytest.approx(EXPECTED["per_class"])


def test_score_loss_is_the_cross_entropy_of_the_methods_scores():
    # Two classes, scores (0, 0) and (ln 3, 0): -ln(1/2) and -ln(3/4); target 0 both times.
    scores = torch.tensor([[0.0, 0.0], [float(np.log(3.0)), 0.0]])
    expected = (np.log(2.0) + np.log(4.0 / 3.0)) / 2
    heads = (torch.zeros(2, 2),)
    assert float(score_loss(heads, scores, torch.tensor([0, 0]))) == pytest.approx(expected)


def test_evaluate_reports_only_the_picked_heads_under_their_own_names():
    result = evaluate(TableModel(SAMPLES), _loader(), NUM_CLASSES, head_indices=[1])
    assert result.head_top1 == pytest.approx({"main": 50.0})
    renamed = evaluate(TableModel(SAMPLES), _loader(), NUM_CLASSES, head_names=["first", "second"], head_indices=[0])
    assert renamed.head_top1 == pytest.approx({"first": 60.0})


def test_top5_is_not_reported_for_five_classes_or_fewer():
    # Five classes: every label is in the top 5, so the figure would always be 100 and is left out.
    samples = [(0, [1, 2, 3, 4, 0], 4), (3, [3, 0, 1, 2, 4], 3)]
    result = evaluate(TableModel(samples, 5), _loader(samples, (2,)), 5)
    # Sample 0: scores 1,2,3,4(+1.5 -> above 3),0: miss. Sample 1: 3 first: hit.
    assert result.top5 is None and "top5" not in result.as_dict()
    assert result.top1 == pytest.approx(50.0)
    assert result.per_class == pytest.approx([0.0, 0.0, 0.0, 100.0, 0.0])
    # Six classes: top-5 is reported and a label ranked 6th is a miss.
    six = [(5, [0, 1, 2, 3, 4, 5], 0), (5, [0, 1, 2, 3, 5, 4], 0)]
    result = evaluate(TableModel(six, 6), _loader(six, (2,)), 6)
    assert result.top5 == pytest.approx(50.0) and result.top1 == 0.0


def test_an_empty_loader_gives_zero_counts_not_a_division_error():
    result = evaluate(TableModel(SAMPLES), [], NUM_CLASSES)
    assert result.count == 0 and result.top1 == 0.0 and result.per_class == [0.0] * NUM_CLASSES


def test_eval_result_as_dict_without_loss_or_top5():
    result = EvalResult(count=3, top1=1.0, top5=None, head_top1={"h": 2.0}, per_class=[])
    assert result.as_dict("x/") == {"x/top1": 1.0, "x/top1_h": 2.0}


# --- recipes, config files and flags: defaults < --recipe < -c FILE < command line ----------------------------------

def test_a_recipe_sets_its_papers_values_and_explicit_flags_win():
    base = parse_args([])
    recipe = parse_args(["--recipe", "dks-cifar-wrn"])
    # The recipe's own values, as its paper states them (Sun et al. 2019 for WRN on CIFAR).
    assert (recipe.batch_size, recipe.weight_decay, recipe.epochs, recipe.lr) == (128, 5e-4, 200, 0.1)
    assert (recipe.sched, recipe.decay_milestones, recipe.decay_rate, recipe.warmup_epochs) == \
        ("multistep", [60, 120, 160], 0.2, 0)
    # What the recipe leaves open stays at the script's default.
    assert (base.batch_size, base.epochs, base.sched, base.decay_rate) == (64, 30, "cosine", 0.1)
    assert recipe.smoothing == base.smoothing == 0.0 and recipe.model == base.model
    # Flags given on the command line win, before or after --recipe.
    flagged = parse_args(["--lr", "0.3", "--recipe", "dks-cifar-wrn", "--epochs", "5", "--decay-rate", "0.5"])
    assert (flagged.lr, flagged.epochs, flagged.decay_rate) == (0.3, 5, 0.5)
    assert (flagged.batch_size, flagged.sched, flagged.decay_milestones) == (128, "multistep", [60, 120, 160])
    assert set(flagged.explicit) == {"lr", "recipe", "epochs", "decay_rate"}


def test_a_config_file_sits_between_the_recipe_and_the_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("recipe: digits\nepochs: 7\nbatch_size: 16\nmomentum: 0.5\n")
    args = parse_args(["-c", str(config), "--epochs", "9"])
    assert args.epochs == 9                       # flag over file
    assert args.batch_size == 16                  # file over recipe (digits: 64)
    assert args.momentum == 0.5
    assert (args.lr, args.sched, args.dataset) == (0.05, "cosine", "digits")   # the file's recipe, where unset
    assert set(args.explicit) == {"config", "epochs", "recipe", "batch_size", "momentum"}
    # A flag's --recipe beats the file's recipe.
    other = parse_args(["-c", str(config), "--recipe", "dks-imagenet"])
    assert (other.lr, other.sched, other.decay_epochs, other.epochs) == (0.1, "step", 30, 7)


# timm's train.py defaults this project keeps (same flag, same meaning, same value)...
TIMM_DEFAULTS_KEPT = dict(
    momentum=0.9, clip_mode="norm", sched="cosine", lr_base_size=256, lr_noise_pct=0.67, lr_noise_std=1.0,
    lr_cycle_mul=1.0, lr_cycle_decay=0.5, lr_cycle_limit=1, lr_k_decay=1.0, warmup_lr=1e-5, min_lr=0.0,
    cooldown_epochs=0, patience_epochs=10, decay_rate=0.1, reprob=0.0, remode="pixel", recount=1, mixup=0.0,
    cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", mixup_off_epoch=0, dist_bn="reduce",
    seed=42, worker_seeding="all", checkpoint_hist=10, eval_metric="top1", grad_accum_steps=1, train_split="train",
    val_split="validation", output="output", sched_on_updates=True, lr=None, opt_eps=None, clip_grad=None)
# ...and the ones it changes for small CPU runs, each stated in the flag's help ("timm's default: ...").
CHANGED_DEFAULTS = dict(
    batch_size=64, opt="momentum", weight_decay=5e-4, lr_base=0.2, epochs=30, warmup_epochs=1, smoothing=0.0,
    workers=0, model_ema_decay=0.998, amp_dtype="bfloat16", decay_milestones=[30, 60], decay_epochs=30,
    log_interval=20, model="dks_resnet32", heldout_frac=0.1, md_level=1, md_train_size=10_000, md_test_size=2_000,
    skip_nonfinite_steps=0, recovery_interval=0, log_with="auto", local_rank=0)


def test_the_default_settings_are_timms_or_the_stated_ones():
    args = vars(parse_args([]))
    for name, value in {**TIMM_DEFAULTS_KEPT, **CHANGED_DEFAULTS}.items():
        assert args[name] == value and type(args[name]) is type(value), name
    # Everything a run changes when asked is off unless asked.
    for switch in ("pretrained", "no_resume_opt", "channels_last", "grad_checkpointing", "cpu", "amp", "no_ddp_bb",
                   "warmup_prefix", "no_aug", "resplit", "sync_bn", "model_ema", "model_ema_warmup", "pin_mem",
                   "no_prefetcher", "log_wandb", "keep_training_heads", "dataset_download", "skip_bad_images"):
        assert args[switch] is False, switch
    for unset in ("dataset", "data_dir", "recipe", "experiment", "img_size", "in_chans", "input_size", "mean",
                  "std", "crop_pct", "num_classes", "scale", "ratio", "hflip", "vflip", "color_jitter", "aa", "drop",
                  "drop_path", "torchcompile", "push_to_hub", "baseline", "pretrained_path"):
        assert args[unset] is None, unset
    assert args["model_kwargs"] == {} and args["opt_kwargs"] == {} and args["explicit"] == []
    validate = vars(parse_validate_args(["--model", "m"]))
    assert (validate["batch_size"], validate["workers"], validate["log_freq"], validate["seed"], validate["split"],
            validate["amp_dtype"]) == (128, 0, 10, 42, "validation", "bfloat16")
    assert validate["use_ema"] is False and validate["checkpoint"] == "" and validate["model"] == ["m"]


def test_flag_values_arrive_with_their_types():
    args = parse_args(["--lr", "0.25", "--epochs", "4", "--decay-milestones", "2", "3", "--decay-epochs", "2.5",
                       "--momentum", "0.5", "--mean", "0.5", "--std", "0.25", "--scale", "0.5", "1", "--opt-betas",
                       "0.8", "0.9", "--model-kwargs", "tau=4", "pairs=top_down", "--opt-kwargs", "foo=1.5",
                       "--torchcompile", "--warmup-prefix", "--no-sched-on-updates", "--dr", "0.5",
                       "--pretrained-file", "w.safetensors", "--checkpoint-interval", "3", "-vb", "7", "-j", "2"])
    assert (args.lr, args.epochs, args.decay_milestones, args.decay_epochs, args.momentum) == (0.25, 4, [2, 3], 2.5, 0.5)
    assert (args.mean, args.std, args.scale, args.opt_betas) == ([0.5], [0.25], [0.5, 1.0], [0.8, 0.9])
    assert args.model_kwargs == {"tau": 4, "pairs": "top_down"} and args.opt_kwargs == {"foo": 1.5}
    assert args.torchcompile == "inductor" and args.warmup_prefix and not args.sched_on_updates
    assert (args.decay_rate, args.pretrained_path, args.recovery_interval) == (0.5, "w.safetensors", 3)
    assert (args.validation_batch_size, args.workers) == (7, 2)
    assert type(args.epochs) is int and type(args.decay_epochs) is float


def test_config_files_are_checked_value_by_value(tmp_path, caplog):
    import logging

    from collab_zoo.training.args import ConfigFileError

    def config(text, name="c.yaml"):
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    # Accepted: an int where a float is wanted, a single value for a list flag, a map for --model-kwargs, a
    # switch as a YAML boolean, a choice from the list; timm's own settings this script lacks are named and ignored.
    with caplog.at_level(logging.WARNING, logger="collab_zoo.train"):
        args = parse_args(["-c", config("lr: 1\ndecay_milestones: 5\nmodel_kwargs: {tau: 3}\namp: true\n"
                                        "amp_dtype: float16\nmean: [0.5]\nunknown_flag: 3\nconfig: other.yaml\n"
                                        "drop-path: 0.1\n")])
    assert (args.lr, type(args.lr), args.decay_milestones, args.model_kwargs) == (1, int, [5], {"tau": 3})
    assert args.amp is True and args.amp_dtype == "float16" and args.mean == [0.5] and args.drop_path == 0.1
    assert f"-c/--config {tmp_path / 'c.yaml'}: settings train.py does not have, ignored: unknown_flag, config" in [
        r.getMessage() for r in caplog.records]
    assert parse_args(["-c", config("lr: null\nepochs: 3\n")]).lr is None   # null leaves the default
    for text, words in (("epochs: 2.5\n", "epochs must be int, got 2.5."),
                        ("lr: true\n", "lr must be float, got True."),
                        ("epochs: true\n", "epochs must be int, got True."),
                        ("a: [\n", "while parsing a flow node"),
                        ("amp: 1\n", "amp is a switch and must be true or false, got 1."),
                        ("amp_dtype: float8\n", "amp_dtype must be one of bfloat16, float16, got 'float8'."),
                        ("model_kwargs: [1]\n", "model_kwargs must map option names to values"),
                        ("decay_milestones: {a: 1}\n", "decay_milestones must be a list, got {'a': 1}."),
                        ("decay_milestones: [1, x]\n", "decay_milestones must be int, got 'x'."),
                        ("- 1\n", "must map setting names to values"),
                        ("a: [\n", "is not valid YAML: "),
                        (b"lr: \xff\n", "is not UTF-8 text; save the YAML file as UTF-8.")):
        path = config(text)
        with pytest.raises(ConfigFileError) as e:
            parse_args(["-c", path])
        assert str(e.value).startswith(f"-c/--config {path}") and words in str(e.value), (text, str(e.value))
    with pytest.raises(ConfigFileError, match="no such file"):
        parse_args(["-c", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigFileError, match="is a folder; give the YAML file"):
        parse_args(["-c", str(tmp_path)])


def test_every_recipe_names_only_real_flags():
    defaults = vars(parse_args([]))
    for name, values in RECIPES.items():
        unknown = set(values) - set(defaults)
        assert not unknown, f"recipe {name} sets {unknown}, which no flag has"
        args = parse_args(["--recipe", name])
        for key, value in values.items():
            assert getattr(args, key) == value, (name, key)


def test_validation_rules_accept_their_bounds_and_refuse_just_beyond(capsys):
    # Bounds as the help says: momentum in [0, 1], smoothing in [0, 1), batch at least 1, lr_base above 0.
    for ok in (["--momentum", "0"], ["--momentum", "1"], ["--smoothing", "0"], ["-b", "1"], ["--lr", "0"],
               ["--warmup-epochs", "0"], ["--seed", "0"], ["--seed", str(2 ** 32 - 1)],
               ["--scale", "0.5", "0.5"], ["--cutmix-minmax", "0.2", "0.8"], ["--input-size", "3", "8", "8"]):
        parse_args(ok)
    for bad, words in ((["--momentum", "1.01"], "--momentum must be between 0 and 1, got 1.01"),
                       (["--smoothing", "1"], "--smoothing must be in [0, 1), got 1.0"),
                       (["-b", "0"], "-b/--batch-size must be at least 1, got 0"),
                       (["--lr-base", "0"], "--lr-base must be greater than 0, got 0.0"),
                       (["--lr", "nan"], "--lr must be a finite number, got nan"),
                       (["--seed", str(2 ** 32)], "--seed must be between 0 and 4294967295"),
                       (["--scale", "0.9", "0.1"], "--scale takes min then max, got 0.9 > 0.1"),
                       (["--scale", "0.9"], "--scale takes two numbers"),
                       (["--input-size", "3", "8"], "--input-size takes C H W"),
                       (["--cutmix-minmax", "0.2"], "--cutmix-minmax takes two numbers"),
                       (["--lr-noise", "0.1", "0.2", "0.3"], "--lr-noise takes one or two"),
                       (["--clip-mode", "l2"], "--clip-mode 'l2' is not one of norm, value, agc"),
                       (["--opt", "adamww"], "did you mean"),
                       (["--experiment", "a/b"], "must be a plain folder name"),
                       (["--experiment", ".hidden"], "must be a plain folder name")):
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert words in err, (bad, err)


def test_a_config_file_value_is_named_as_coming_from_the_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("momentum: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["-c", str(config)])
    assert "--momentum (set in the -c/--config file) must be between 0 and 1, got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["-c", str(config), "--momentum", "2"])
    err = capsys.readouterr().err
    assert "--momentum must be between 0 and 1, got 2.0" in err and "config file" not in err


def test_sizes_and_device_flags_are_normalised():
    args = parse_args(["--input-size", "16", "--device", "cpu:0", "--opt", "lookahead_adamw"])
    assert (args.img_size, args.input_size, args.cpu) == (16, None, True)
    full = parse_args(["positional_dir", "--input-size", "1", "12", "12"])
    assert full.input_size == (1, 12, 12) and full.data_dir == "positional_dir" and not full.cpu
    v = parse_validate_args(["somewhere", "--model", "a", "b", "--input-size", "20", "--device", "cpu"])
    assert (v.model, v.img_size, v.cpu, v.data_dir) == (["a", "b"], 20, True, "somewhere")
    both = parse_validate_args(["old", "--data-dir", "new", "--model", "m", "--device", "cpu:0"])
    assert both.data_dir == "new" and both.cpu
    assert parse_args(["old", "--data-dir", "new"]).data_dir == "new"
    assert not parse_validate_args(["--model", "m", "--device", "cuda:0"]).cpu


def test_validate_py_checks_its_numbers_and_sizes(capsys):
    for bad, words in ((["-b", "0"], "-b/--batch-size must be at least 1, got 0"),
                       (["--input-size", "3", "8"], "--input-size takes C H W"),
                       (["--crop-pct", "0"], "--crop-pct must be greater than 0, got 0.0")):
        with pytest.raises(SystemExit) as e:
            parse_validate_args(["--model", "m", *bad])
        assert e.value.code == 2 and words in capsys.readouterr().err


# --- resume: the next batches and their augmentation are those of the uninterrupted epoch ---------------------------

def test_a_resumed_epoch_draws_the_same_batches_with_the_same_augmentation():
    from collab_zoo.data import DataSpec, build_data
    from collab_zoo.training.loader import make_train_loader

    args = parse_args(["--dataset", "digits", "--img-size", "8", "-b", "24", "--seed", "3",
                       "--aa", "rand-m9-mstd0.5", "--reprob", "0.5"])
    bundle = build_data(DataSpec(dataset="digits", input_size=8, seed=3))
    train = bundle.train.view(list(range(97)))   # 24 + 24 + 24 + 25 (a last batch of one joins the one before)
    device = torch.device("cpu")

    def batches(epoch, skip=0, seed=3, count=None):
        args.seed = seed
        loader, total = make_train_loader(train, args, bundle, device, 1, 0, epoch, skip_batches=skip)
        torch.manual_seed(1234 + skip)   # the process's own generators must not matter: the run restores them
        random.seed(skip)
        out = []
        for x, y, *_ in loader:
            out.append((x.clone(), y.clone()))
            if len(out) == count:
                break
        return out, total

    whole, total = batches(1)
    assert total == len(whole) == 4 and [len(y) for _, y in whole] == [24, 24, 24, 25]
    assert sorted(torch.cat([y for _, y in whole]).tolist()) == sorted(train[i][1] for i in range(97))
    resumed, total_resumed = batches(1, skip=2)
    assert total_resumed == 4 and len(resumed) == 2
    for (x, y), (rx, ry) in zip(whole[2:], resumed):
        assert torch.equal(y, ry) and torch.equal(x, rx)
    # Another epoch (or seed) is another order: the order is a function of (seed, epoch), not fixed.
    other, _ = batches(2, count=1)
    assert not torch.equal(whole[0][1], other[0][1])
    reseeded, _ = batches(1, seed=4, count=1)
    assert not torch.equal(whole[0][1], reseeded[0][1])


def test_batches_per_epoch_counts():
    # 10 images, batch 4: 4 + 4 + 2 = 3 batches; 9 images: 4 + 5 (a last batch of one joins the one before).
    assert batches_per_epoch(10, 4, 1) == 3
    assert batches_per_epoch(9, 4, 1) == 2
    assert batches_per_epoch(8, 4, 1) == 2
    assert batches_per_epoch(1, 4, 1) == 1
    # Two processes: 5 images each (ceil(9 / 2)), batch 4: 4 + 1 -> one batch of 5.
    assert batches_per_epoch(9, 4, 2) == 1
    assert batches_per_epoch(11, 2, 2) == 3   # 6 each: 2 + 2 + 2


def test_rng_state_round_trips_through_a_checkpoint_folder(tmp_path):
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    saved = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_tensors_and_json(folder, "rank0", {"rng": saved})
    # Other draws in between, then a restore from the files (JSON turns the tuples into lists).
    random.random(), np.random.rand(), torch.rand(3)
    state = json.loads((folder / "rank0.json").read_text())
    assert isinstance(state, dict)
    from safetensors.torch import load_file

    restore_rng_state(unflatten_state(state, load_file(folder / "rank0.safetensors"))["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# --- checkpoint round trips --------------------------------------------------------------------------------------

def test_flatten_and_unflatten_give_back_the_same_nested_state():
    state = {"a": torch.arange(3.0), 1: [torch.ones(2, 2), (2, "x", None)], "n": np.arange(4, dtype=np.uint8),
             "f": np.float32(0.5), "i": np.int64(3), "b": True, "nested": {"t": (torch.zeros(1), 1.5)},
             "e": {}, "l": []}
    tree, tensors = flatten_state(state)
    assert sorted(tensors) == ["1.0", "a", "n", "nested.t.0"]
    assert tensors["n"].dtype == torch.int64
    # Through JSON, as it is stored.
    back = unflatten_state(json.loads(json.dumps(tree)), tensors)
    assert list(back) == list(state)        # int keys stay ints (JSON objects would make them strings)
    assert torch.equal(back["a"], torch.arange(3.0))
    assert torch.equal(back[1][0], torch.ones(2, 2)) and back[1][1] == (2, "x", None)
    assert isinstance(back[1][1], tuple)
    assert back["n"].dtype == np.uint8 and back["n"].tolist() == [0, 1, 2, 3]
    assert back["f"] == 0.5 and type(back["f"]) is float and back["i"] == 3 and back["b"] is True
    assert isinstance(back["nested"]["t"], tuple) and back["nested"]["t"][1] == 1.5
    assert back["e"] == {} and back["l"] == []
    prefixed, named = flatten_state({"w": torch.ones(1)}, "opt")
    assert list(named) == ["opt.w"] and prefixed == {"__dict__": [["w", {"__tensor__": "opt.w"}]]}
    with pytest.raises(TypeError, match="neither str nor int"):
        flatten_state({(1, 2): 0})
    with pytest.raises(TypeError, match="cannot store set"):
        flatten_state({"s": {1}})


def _weights(value=1.0):
    return {"w": torch.full((2, 3), value), "b": torch.arange(3.0)}


def test_weight_checkpoint_round_trip_and_manifest(tmp_path):
    folder = write_weights(tmp_path / "checkpoints" / "best", _weights(2.0), {"top1": 55.5}, _weights(3.0),
                           {"model": "m"})
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors", "metrics.json", "run.json"}
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    checked = CheckpointFolder(folder)
    assert not checked.legacy and checked.has("ema.safetensors") and not checked.has("state.json")
    assert torch.equal(checked.tensors("model.safetensors")["w"], torch.full((2, 3), 2.0))
    assert checked.json("metrics.json") == {"top1": 55.5}
    path, run = find_checkpoint_weights(tmp_path)      # a run folder: its best checkpoint
    assert path == folder / "model.safetensors" and run["args"] == {"model": "m"} and run["format"] == 3
    ema, _ = find_checkpoint_weights(folder, use_ema=True)
    assert ema == folder / "ema.safetensors"
    assert run_folder_of(folder) == tmp_path
    # One byte changed: refused, saying what is wrong in the message's own words.
    data = bytearray((folder / "metrics.json").read_bytes())
    data[0] ^= 1
    (folder / "metrics.json").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="sha256 differs from the one its manifest recorded"):
        verify_checkpoint(folder)
    (folder / "metrics.json").write_bytes(b"{}")
    with pytest.raises(CorruptCheckpointError, match="has 2 bytes, its manifest says"):
        verify_checkpoint(folder)


def test_resumable_state_round_trip(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last"
    last.mkdir(parents=True)
    entries = save_tensors_and_json(last, "optimizer", {"state": {0: {"momentum": torch.ones(2)}}, "lr": 0.1})
    state = {"format": 3, "progress": {"epoch": 1}, "args": {"model": "m"}, "world_size": 1, "experiment": "run"}
    body = json.dumps(state).encode()
    entries["state.json"] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    (last / "state.json").write_bytes(body)
    (last / MANIFEST).write_text(json.dumps({"files": entries}))
    found = latest_checkpoint(tmp_path / "run")
    assert found.path == last and found.run_state() == state
    optimizer = found.state("optimizer")
    assert optimizer["lr"] == 0.1 and torch.equal(optimizer["state"][0]["momentum"], torch.ones(2))
    # A state.json lacking what resuming needs is refused by name.
    partial = {k: v for k, v in state.items() if k != "progress"}
    body = json.dumps(partial).encode()
    entries["state.json"] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    (last / "state.json").write_bytes(body)
    (last / MANIFEST).write_text(json.dumps({"files": entries}))
    with pytest.raises(CorruptCheckpointError, match="it lacks progress"):
        latest_checkpoint(tmp_path / "run").run_state()
    # A manifest naming a path outside the folder is refused.
    (last / MANIFEST).write_text(json.dumps({"files": {"../x": {"size": 1, "sha256": "0"}}}))
    with pytest.raises(CorruptCheckpointError, match="not a file of the folder"):
        verify_checkpoint(last)
    with pytest.raises(IncompatibleConfigError, match="no such folder"):
        latest_checkpoint(tmp_path / "nowhere")


def test_checkpoint_history_keeps_the_best_n_by_the_metric(tmp_path):
    history = CheckpointHistory(tmp_path, max_history=2, decreasing=False)
    kept = [history.offer(f"epoch-{i}", metric, _weights(), {"top1": metric})
            for i, metric in enumerate([50.0, 70.0, 60.0, 40.0, 80.0])]
    # 50 kept, 70 kept, 60 beats 50 (dropped), 40 beats nothing, 80 beats 60 (dropped).
    assert kept == [True, True, True, False, True]
    assert history.entries == [[80.0, "epoch-4"], [70.0, "epoch-1"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1", "epoch-4"]
    losses = CheckpointHistory(tmp_path / "loss", max_history=2, decreasing=True)
    for i, metric in enumerate([0.5, 0.7, 0.3, 0.6]):
        losses.offer(f"epoch-{i}", metric, _weights(), {})
    assert losses.entries == [[0.3, "epoch-2"], [0.5, "epoch-0"]]
    assert not CheckpointHistory(tmp_path / "none", 0, False).offer("epoch-0", 1.0, _weights(), {})
    assert not (tmp_path / "none").exists()
    # A resumed run's history (entries read back from JSON as lists) carries on with the same set.
    resumed = CheckpointHistory(tmp_path, 2, False, entries=json.loads(json.dumps(history.entries)))
    assert not resumed.offer("epoch-5", 75.0 - 10, _weights(), {})
    assert resumed.offer("epoch-5", 75.0, _weights(), {})
    assert resumed.entries == [[80.0, "epoch-4"], [75.0, "epoch-5"]]


def test_checkpoint_patterns_skip_staging_and_previous_twins(tmp_path):
    for name in ("epoch-10", "epoch-2", ".incoming-epoch-3", "epoch-2.previous", "epoch-7.previous"):
        (tmp_path / name).mkdir()
    found = [p.rsplit("/", 1)[-1] for p in expand_checkpoint_pattern(str(tmp_path / "*"))]
    # natural order (2 before 10); a .previous whose folder exists is left out; one without its folder stays.
    assert found == ["epoch-2", "epoch-7.previous", "epoch-10"]
    assert expand_checkpoint_pattern("plain/path") == ["plain/path"]
    with pytest.raises(FileNotFoundError, match="the pattern matches nothing"):
        expand_checkpoint_pattern(str(tmp_path / "nothing-*"))


# --- checkpoints: every part written, read back, and refused when damaged ------------------------------------------

def _checkpoint_parts(scale=1.0):
    return dict(
        model_state={"w": torch.full((2, 2), scale), "bn.running_var": torch.ones(2)},
        optimizer_state={"state": {0: {"momentum_buffer": torch.full((2, 2), 0.5 * scale)}},
                         "param_groups": [{"lr": 0.1, "params": [0]}]},
        scheduler_state={"last_epoch": 3, "base_lrs": [0.1]},
        scaler_state={"scale": 1024.0},
        ema_state={"w": torch.full((2, 2), 2 * scale), "bn.running_var": torch.ones(2)},
        state={"progress": {"epoch": 1, "batch": 4}, "args": {"model": "m"}, "world_size": 2, "experiment": "run"})


def _two_ranks(root, parts, big=None):
    """write_checkpoint as two processes call it: two threads meeting at the same barriers. Rank 1's own files
    are hashed into the manifest from disk by rank 0."""
    import threading

    meeting = threading.Barrier(2, timeout=60)
    errors = []

    def rank(r):
        try:
            rank_state = {"rank": r, "sums": {"loss": 1.5 * r}, "big": big if r == 1 else torch.zeros(1)}
            write_checkpoint(root, rank=r, is_main=r == 0, barrier=meeting.wait, rank_state=rank_state,
                             **(parts if r == 0 else {}))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            meeting.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def test_a_resumable_checkpoint_holds_every_part_and_each_ranks_own_state(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    big = torch.arange(400_000, dtype=torch.float32)  # 1.6 MB: hashed from disk in more than one read
    _two_ranks(root, _checkpoint_parts(), big)
    last = latest_checkpoint(tmp_path / "run")
    assert last.path == root / "last" and sorted(p.name for p in root.iterdir()) == ["last"]
    assert set(last.manifest["files"]) == {
        "model.safetensors", "ema.safetensors", "optimizer.json", "optimizer.safetensors", "scheduler.json",
        "scaler.json", "state.json", "rank0.json", "rank0.safetensors", "rank1.json", "rank1.safetensors"}
    assert last.manifest["files"]["rank1.safetensors"]["size"] == (root / "last" / "rank1.safetensors").stat().st_size
    assert last.run_state() == {"format": 3, **_checkpoint_parts()["state"]}
    assert torch.equal(last.tensors("model.safetensors")["w"], torch.full((2, 2), 1.0))
    assert torch.equal(last.tensors("ema.safetensors")["w"], torch.full((2, 2), 2.0))
    optimizer = last.state("optimizer")
    assert torch.equal(optimizer["state"][0]["momentum_buffer"], torch.full((2, 2), 0.5))
    assert optimizer["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert last.state("scheduler") == {"last_epoch": 3, "base_lrs": [0.1]} and last.state("scaler") == {"scale": 1024.0}
    assert last.state("rank1")["sums"] == {"loss": 1.5} and torch.equal(last.state("rank1")["big"], big)
    assert last.state("rank0")["rank"] == 0
    # The next checkpoint replaces it whole; nothing is left beside it.
    _two_ranks(root, _checkpoint_parts(3.0), big)
    again = latest_checkpoint(tmp_path / "run")
    assert torch.equal(again.tensors("model.safetensors")["w"], torch.full((2, 2), 3.0))
    assert sorted(p.name for p in root.iterdir()) == ["last"]


@pytest.mark.parametrize("part,words", [("model_state", "checkpoints/last: the model's weights and buffers"),
                                        ("ema_state", "checkpoints/last: the EMA weights"),
                                        ("optimizer_state", "checkpoints/last: the optimizer's state")])
def test_a_non_finite_part_writes_no_checkpoint(tmp_path, part, words):
    from collab_zoo.errors import NonFiniteError

    parts = _checkpoint_parts()
    if part == "optimizer_state":
        parts[part]["state"][0]["momentum_buffer"][0, 0] = float("nan")
    else:
        parts[part]["w"][1, 1] = float("inf")
    with pytest.raises(NonFiniteError) as e:
        write_checkpoint(tmp_path / "checkpoints", rank=0, is_main=True, barrier=lambda: None, rank_state={},
                         **parts)
    assert str(e.value).startswith(words) and "NaN or infinity" in str(e.value)
    assert not (tmp_path / "checkpoints").exists()
    weights = _weights()
    weights["b"][0] = float("nan")
    with pytest.raises(NonFiniteError, match="^checkpoints/best: the model's weights and buffers"):
        write_weights(tmp_path / "checkpoints" / "best", weights, {})
    with pytest.raises(NonFiniteError, match="^checkpoints/best: the EMA weights"):
        write_weights(tmp_path / "checkpoints" / "best", _weights(), {}, ema_state=weights)
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_that_cannot_be_written_says_so_and_replaces_nothing(tmp_path):
    from collab_zoo.errors import RunWriteError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunWriteError) as e:
        write_checkpoint(blocker / "checkpoints", rank=0, is_main=True, barrier=lambda: None, rank_state={},
                         **_checkpoint_parts())
    message = str(e.value)
    assert message.startswith("Could not write the checkpoint last (Not a directory, ENOTDIR, at ")
    assert str(blocker) in message.split(", at ", 1)[1].split("). ", 1)[0]
    assert "Nothing was replaced" in message and "--resume" in message
    with pytest.raises(RunWriteError, match="^Could not write the checkpoint best"):
        write_weights(blocker / "best", _weights(), {})


def test_readers_use_the_previous_version_only_while_the_folder_is_missing(tmp_path):
    from collab_zoo.training.checkpoint import publish_folder

    best = tmp_path / "checkpoints" / "best"
    write_weights(best, _weights(1.0), {"n": 1})
    # Between the two renames of a non-atomic publish: only best.previous exists.
    best.rename(best.with_name("best.previous"))
    path, _ = find_checkpoint_weights(tmp_path)
    assert path == tmp_path / "checkpoints" / "best.previous" / "model.safetensors"
    # Once best exists again, it is the one read, and the next publish removes the leftover.
    write_weights(best, _weights(2.0), {"n": 2})
    assert find_checkpoint_weights(tmp_path)[0] == best / "model.safetensors"
    incoming = tmp_path / "checkpoints" / ".incoming-best"
    incoming.mkdir()
    (incoming / "x").write_text("new")
    publish_folder(incoming, best)
    assert (best / "x").read_text() == "new" and not incoming.exists()
    assert sorted(p.name for p in best.parent.iterdir()) == ["best"]


def test_verify_checkpoint_says_what_is_wrong(tmp_path, caplog):
    import logging

    def folder(name, files):
        f = tmp_path / name
        f.mkdir()
        for file, text in files.items():
            (f / file).write_text(text)
        return f

    # No manifest: a folder that says it is format 3 is incomplete, from its state.json or its run.json.
    for name, file in (("s3", "state.json"), ("r3", "run.json")):
        with pytest.raises(CorruptCheckpointError, match="is incomplete: it has no manifest.json, which every "
                                                         "checkpoint of format 3 has"):
            verify_checkpoint(folder(name, {file: '{"format": 3}'}))
    # Format 2 (before manifests): used as it is, with one warning per folder.
    legacy = folder("legacy", {"state.json": '{"format": 2}', "model.safetensors": "x"})
    with caplog.at_level(logging.WARNING, logger="collab_zoo.train"):
        assert verify_checkpoint(legacy) is None and verify_checkpoint(legacy) is None
    assert [r.getMessage() for r in caplog.records].count(
        f"{legacy} was written before checkpoints had a manifest (format 2): its files cannot be checked for "
        "damage. It is used as it is.") == 1
    assert CheckpointFolder(legacy).legacy and CheckpointFolder(legacy).has("model.safetensors")
    assert not CheckpointFolder(legacy).has("ema.safetensors")
    with pytest.raises(CorruptCheckpointError, match="has no ema.safetensors: it is not a complete checkpoint"):
        CheckpointFolder(legacy).file("ema.safetensors")
    # A Hub folder is not a checkpoint; a folder with neither state nor weights is not one either.
    with pytest.raises(IncompatibleConfigError, match="is a Hub folder, not a training checkpoint: load it with "
                                                      "--model local-dir:"):
        verify_checkpoint(folder("hub", {"config.json": "{}", "model.safetensors": "x"}))
    assert verify_checkpoint(folder("old-best", {"config.json": "{}", "model.safetensors": "x",
                                                 "metrics.json": "{}"})) is None
    with pytest.raises(CorruptCheckpointError, match="is not a checkpoint folder \\(no manifest.json, state.json or "
                                                     "model.safetensors\\)"):
        verify_checkpoint(folder("empty", {"notes.txt": "x"}))
    # Damaged manifests.
    for i, manifest in enumerate(('{"files": {"a": {"size": "1", "sha256": "x"}}}', '[]', '{"files": []}',
                                  '{"files": {"a": {"size": 1}}}', '{"files": {"a": {"sha256": "x"}}}',
                                  '{"files": {"a": 3}}')):
        with pytest.raises(CorruptCheckpointError, match="does not list files with their size and sha256"):
            verify_checkpoint(folder(f"bad{i}", {MANIFEST: manifest}))
    with pytest.raises(CorruptCheckpointError, match="manifest.json is damaged: manifest.json is not valid JSON"):
        verify_checkpoint(folder("notjson", {MANIFEST: "{"}))
    for i, name in enumerate(("", "a/b", "a\\b", ".", "..")):
        bad = folder(f"name{i}", {MANIFEST: json.dumps({"files": {name: {"size": 0, "sha256": "x"}}})})
        with pytest.raises(CorruptCheckpointError, match="which is not a file of the folder"):
            verify_checkpoint(bad)
    listed = folder("listed", {MANIFEST: json.dumps({"files": {"gone.json": {"size": 2, "sha256": "x"}}})})
    with pytest.raises(CorruptCheckpointError, match="is torn or damaged: gone.json is missing \\(the manifest lists"):
        verify_checkpoint(listed)


def test_checkpoint_folder_reads_only_consistent_state(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    entries = save_tensors_and_json(folder, "opt", {"m": torch.ones(1)})
    (folder / "opt.json").write_text(json.dumps({"m": {"__tensor__": "other"}}))
    body = (folder / "opt.json").read_bytes()
    entries["opt.json"] = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    for name, text in (("list.json", "[1]"), ("badargs.json", json.dumps(
            {"progress": {}, "args": [], "world_size": 1, "experiment": "e"}))):
        (folder / name).write_text(text)
        entries[name] = {"size": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps({"files": entries}))
    checked = CheckpointFolder(folder)
    with pytest.raises(CorruptCheckpointError, match="opt.json does not match its tensors"):
        checked.state("opt")
    assert checked.json("list.json") == [1]
    # A plain JSON object (no markers) is read as a dict, its values unflattened too.
    assert unflatten_state({"a": {"__tensor__": "t"}, "b": [1]}, {"t": torch.ones(1)})["a"].tolist() == [1.0]


def test_run_state_and_resume_errors(tmp_path):
    def last_with(state):
        f = tmp_path / "r" / "checkpoints" / "last"
        shutil.rmtree(f, ignore_errors=True)
        f.mkdir(parents=True)
        body = json.dumps(state)
        (f / "state.json").write_text(body)
        (f / MANIFEST).write_text(json.dumps({"files": {"state.json": {
            "size": len(body), "sha256": hashlib.sha256(body.encode()).hexdigest()}}}))
        return latest_checkpoint(tmp_path / "r")

    good = {"progress": {}, "args": {}, "world_size": 1, "experiment": "e"}
    assert last_with(good).run_state() == good
    for broken, words in (([1], "it lacks progress, args, world_size, experiment"),
                          ({**good, "args": []}, "it lacks well-formed fields"),
                          ({**good, "progress": 3}, "it lacks well-formed fields"),
                          ({k: v for k, v in good.items() if k != "world_size"}, "it lacks world_size.")):
        with pytest.raises(CorruptCheckpointError, match=f"state.json is damaged: {re.escape(words)}"):
            last_with(broken).run_state()
    best = write_weights(tmp_path / "r" / "checkpoints" / "best", _weights(), {})
    with pytest.raises(IncompatibleConfigError, match="holds weights only \\(a best or epoch checkpoint\\)"):
        latest_checkpoint(best)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(IncompatibleConfigError, match="no checkpoint there \\(expected a folder with state.json"):
        latest_checkpoint(tmp_path / "nothing")
    with pytest.raises(IncompatibleConfigError, match="this checkpoint is not inside a run folder"):
        run_folder_of(tmp_path / "loose")


def test_find_checkpoint_weights_answers_and_refusals(tmp_path, caplog):
    import logging

    run = tmp_path / "run"
    last = run / "checkpoints" / "last"
    last.mkdir(parents=True)
    (last / "state.json").write_text(json.dumps({"format": 2, "args": {"model": "from-last"}}))
    (last / "model.safetensors").write_text("x")
    # No best yet: the last checkpoint, with a warning saying so.
    with caplog.at_level(logging.WARNING, logger="collab_zoo.train"):
        path, settings = find_checkpoint_weights(run)
    assert path == last / "model.safetensors" and settings["args"] == {"model": "from-last"}
    assert any(r.getMessage() == f"{run} has no checkpoints/best (no epoch of the run finished its evaluation): "
                                 "using checkpoints/last, where the run stopped." for r in caplog.records)
    # A best written without settings takes the run's from checkpoints/last/state.json.
    best = write_weights(run / "checkpoints" / "best", _weights(), {})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="collab_zoo.train"):
        path, settings = find_checkpoint_weights(run)
    assert path == best / "model.safetensors" and settings == {"format": 2, "args": {"model": "from-last"}}
    assert not any("has no checkpoints/best" in r.getMessage() for r in caplog.records)
    (last / "state.json").write_text("{")
    assert find_checkpoint_weights(best)[1] is None
    (last / "state.json").write_text("[]")
    assert find_checkpoint_weights(best)[1] is None
    loose = write_weights(tmp_path / "elsewhere" / "best", _weights(), {})
    assert find_checkpoint_weights(loose)[1] is None
    # Refusals, in their own words.
    pickle = tmp_path / "w.pth"
    pickle.write_bytes(b"\x80")
    with pytest.raises(IncompatibleConfigError, match="is not a safetensors file; only safetensors weights are read"):
        find_checkpoint_weights(pickle)
    file = best / "model.safetensors"
    assert find_checkpoint_weights(file) == (file, None)
    with pytest.raises(IncompatibleConfigError, match="--use-ema needs a checkpoint folder \\(with ema.safetensors\\)"):
        find_checkpoint_weights(file, use_ema=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint_weights(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors there \\(nor in checkpoints/best or last\\)"):
        find_checkpoint_weights(tmp_path / "bare")
    with pytest.raises(IncompatibleConfigError, match="has no EMA weights \\(ema.safetensors\\): the run was trained "
                                                      "without --model-ema"):
        find_checkpoint_weights(best, use_ema=True)
    state_only = tmp_path / "state-only"
    state_only.mkdir()
    body = b"{}"
    (state_only / "state.json").write_bytes(body)
    (state_only / MANIFEST).write_text(json.dumps({"files": {"state.json": {
        "size": 2, "sha256": hashlib.sha256(body).hexdigest()}}}))
    with pytest.raises(CorruptCheckpointError, match="has no model.safetensors: it is not a complete checkpoint"):
        find_checkpoint_weights(state_only)


def test_checkpoint_history_ties_single_slot_and_what_each_kept_folder_holds(tmp_path):
    # A tie with the worst kept one is not better: it is not written.
    history = CheckpointHistory(tmp_path / "a", max_history=2, decreasing=False)
    assert history.offer("e0", 50.0, _weights(), {}) and history.offer("e1", 60.0, _weights(), {})
    assert not history.offer("e2", 50.0, _weights(), {})
    losses = CheckpointHistory(tmp_path / "b", max_history=2, decreasing=True)
    assert losses.offer("e0", 0.5, _weights(), {}) and losses.offer("e1", 0.4, _weights(), {})
    assert not losses.offer("e2", 0.5, _weights(), {})
    # One slot: kept while it improves.
    single = CheckpointHistory(tmp_path / "c", max_history=1, decreasing=False)
    assert [single.offer(f"e{i}", m, _weights(), {}) for i, m in enumerate([1.0, 3.0, 2.0])] == [True, True, False]
    assert single.entries == [[3.0, "e1"]] and sorted(p.name for p in (tmp_path / "c").iterdir()) == ["e1"]
    # Three slots: a newcomer is compared with the worst kept (the last), not the best or the second.
    three = CheckpointHistory(tmp_path / "d", max_history=3, decreasing=False)
    for i, m in enumerate([10.0, 30.0, 20.0]):
        three.offer(f"e{i}", m, _weights(), {})
    assert three.offer("e3", 15.0, _weights(float(15)), {"top1": 15.0}, ema_state=_weights(2.0), run={"model": "m"})
    assert three.entries == [[30.0, "e1"], [20.0, "e2"], [15.0, "e3"]]
    kept = CheckpointFolder(tmp_path / "d" / "e3")
    assert kept.json("metrics.json") == {"top1": 15.0} and kept.json("run.json")["args"] == {"model": "m"}
    assert torch.equal(kept.tensors("ema.safetensors")["w"], torch.full((2, 3), 2.0))
    assert torch.equal(kept.tensors("model.safetensors")["w"], torch.full((2, 3), 15.0))


def test_flatten_keeps_numpy_floats_and_names_the_root(tmp_path):
    tree, tensors = flatten_state({"f": np.array([0.25, 0.5], dtype=np.float32), "i": np.array([3], dtype=np.int32)})
    assert tensors["f"].dtype == torch.float32 and tensors["i"].dtype == torch.int64
    back = unflatten_state(json.loads(json.dumps(tree)), tensors)
    assert back["f"].dtype == np.float32 and back["f"].tolist() == [0.25, 0.5] and back["i"].dtype == np.int32
    with pytest.raises(TypeError, match="^state key \\(1, 2\\) at <root> is neither str nor int$"):
        flatten_state({(1, 2): 0})
    with pytest.raises(TypeError, match="^cannot store set at <root> in a checkpoint$"):
        flatten_state({1, 2})
    with pytest.raises(TypeError, match="^cannot store object at a.0 in a checkpoint$"):
        flatten_state({"a": [object()]})


# --- checkpoints: the files' layout, what a failed or interrupted write leaves, and folders without a manifest -----

def test_checkpoint_json_files_are_indented_by_two_spaces_for_people_to_read(tmp_path):
    best = write_weights(tmp_path / "best", _weights(), {"top1": 55.5}, run={"model": "m"})
    assert (best / "metrics.json").read_text() == '{\n  "top1": 55.5\n}'
    assert (best / "run.json").read_text() == '{\n  "format": 3,\n  "args": {\n    "model": "m"\n  }\n}'
    # manifest.json: format first, then the files by name, each with its size and sha256; a newline at the end.
    sizes = {"metrics.json": 18, "model.safetensors": (best / "model.safetensors").stat().st_size, "run.json": 51}
    listed = ",\n".join(
        f'    "{name}": {{\n      "size": {size},\n      "sha256": "{hashlib.sha256((best / name).read_bytes()).hexdigest()}"'
        "\n    }" for name, size in sizes.items())
    assert (best / MANIFEST).read_text() == '{\n  "format": 3,\n  "files": {\n' + listed + "\n  }\n}\n"
    last = write_checkpoint(tmp_path, rank=0, is_main=True, barrier=lambda: None, rank_state={},
                            model_state=_weights(), optimizer_state={"state": {}},
                            state={"progress": {"epoch": 1}, "args": {"model": "m"}})
    assert (last / "state.json").read_text() == (
        '{\n  "format": 3,\n  "progress": {\n    "epoch": 1\n  },\n  "args": {\n    "model": "m"\n  }\n}')


def test_a_non_finite_optimizer_tensor_is_named_by_its_place_in_the_optimizer_state(tmp_path):
    from collab_zoo.errors import NonFiniteError

    parts = _checkpoint_parts()
    parts["optimizer_state"]["state"][0]["momentum_buffer"][0, 1] = float("nan")
    with pytest.raises(NonFiniteError) as e:
        write_checkpoint(tmp_path, rank=0, is_main=True, barrier=lambda: None, rank_state={}, **parts)
    assert "1 tensor holds NaN or infinity: optimizer.state.0.momentum_buffer (1 NaN of 4 values)" in str(e.value)
    # An optimizer state without a "state" entry holds no tensor to check: it is written.
    parts = _checkpoint_parts()
    parts["optimizer_state"] = {"param_groups": [{"lr": 0.1}]}
    last = write_checkpoint(tmp_path, rank=0, is_main=True, barrier=lambda: None, rank_state={}, **parts)
    assert CheckpointFolder(last).state("optimizer") == {"param_groups": [{"lr": 0.1}]}


def test_missing_parent_folders_are_made_and_a_killed_writes_staging_folder_is_emptied(tmp_path):
    # write_weights makes every folder above the checkpoint.
    best = write_weights(tmp_path / "new" / "run" / "checkpoints" / "best", _weights(1.0), {})
    assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), 1.0))
    # A write killed half-way left .incoming-best with a file of its own; the next write empties it first.
    stale = best.with_name(".incoming-best")
    stale.mkdir()
    (stale / "stale.json").write_text("{}")
    write_weights(best, _weights(2.0), {})
    assert set(CheckpointFolder(best).manifest["files"]) == {"model.safetensors", "metrics.json", "run.json"}
    assert sorted(p.name for p in best.iterdir()) == ["manifest.json", "metrics.json", "model.safetensors", "run.json"]
    assert sorted(p.name for p in best.parent.iterdir()) == ["best"]
    stale = tmp_path / "ck" / ".incoming-last"
    stale.mkdir(parents=True)
    (stale / "rank7.json").write_text("{}")
    last = write_checkpoint(tmp_path / "ck", rank=0, is_main=True, barrier=lambda: None, rank_state={},
                            **_checkpoint_parts())
    assert "rank7.json" not in CheckpointFolder(last).manifest["files"] and not (last / "rank7.json").exists()
    assert sorted(p.name for p in last.parent.iterdir()) == ["last"]


def test_a_write_that_fails_half_way_removes_its_staging_folder_and_keeps_the_old_version(tmp_path):
    """A file too large for the process's file size limit fails as a full disk does: EFBIG instead of ENOSPC."""
    import resource
    import signal

    from collab_zoo.errors import RunWriteError

    best = write_weights(tmp_path / "checkpoints" / "best", _weights(1.0), {})
    last = write_checkpoint(tmp_path / "checkpoints", rank=0, is_main=True, barrier=lambda: None, rank_state={},
                            **_checkpoint_parts(1.0))
    big = {"w": torch.zeros(16384)}   # 64 KiB: model.safetensors goes past the 16 KiB limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write fails instead of the process being killed
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
        with pytest.raises(RunWriteError) as weights_error:
            write_weights(best, big, {})
        with pytest.raises(RunWriteError) as checkpoint_error:
            write_checkpoint(tmp_path / "checkpoints", rank=0, is_main=True, barrier=lambda: None, rank_state={},
                             **{**_checkpoint_parts(2.0), "model_state": big})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert str(weights_error.value).startswith("Could not write the checkpoint best (File too large, EFBIG, at ")
    assert str(checkpoint_error.value).startswith("Could not write the checkpoint last (File too large, EFBIG, at ")
    assert str(weights_error.value).endswith("Nothing was replaced: the previous best, if there was one, is whole and "
                                             "unchanged. Free disk space or fix the folder's permissions, then "
                                             "continue the run with --resume.")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "last"]
    assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), 1.0))
    assert torch.equal(latest_checkpoint(tmp_path).tensors("model.safetensors")["w"], torch.full((2, 2), 1.0))
    assert last == tmp_path / "checkpoints" / "last"


def test_the_write_delay_setting_sleeps_after_each_file_and_a_bad_value_means_none(tmp_path, monkeypatch):
    from collab_zoo.training import checkpoint
    from collab_zoo.training.checkpoint import WRITE_DELAY_ENV

    # The sleeps are recorded, not timed: write_weights writes four files (model.safetensors, metrics.json,
    # run.json, manifest.json), each followed by the delay asked for.
    import types

    slept = []
    # The module's own name for the time module: the process's time.sleep (the loopback Hub's threads) is untouched.
    monkeypatch.setattr(checkpoint, "time", types.SimpleNamespace(sleep=slept.append))
    monkeypatch.setenv(WRITE_DELAY_ENV, "0.1")
    write_weights(tmp_path / "slow", _weights(), {})
    assert slept == [0.1] * 4
    for value in ("", "soon", "-1", "0"):
        slept.clear()
        monkeypatch.setenv(WRITE_DELAY_ENV, value)
        write_weights(tmp_path / "quick", _weights(), {})
        assert slept == [], value


def test_publishing_a_missing_folder_over_a_checkpoint_fails_with_enoent_and_moves_nothing(tmp_path, monkeypatch):
    from collab_zoo.training import checkpoint
    from collab_zoo.training.checkpoint import publish_folder

    monkeypatch.setattr(checkpoint, "_libc", None)   # the C library is looked up afresh, as in a new process
    best = write_weights(tmp_path / "best", _weights(1.0), {})
    # The atomic exchange itself fails: nothing is renamed (a fallback would have moved best to best.previous).
    with pytest.raises(FileNotFoundError) as e:
        publish_folder(tmp_path / ".incoming-best", best)
    assert (e.value.errno, e.value.strerror, e.value.filename) == (2, "No such file or directory", str(best))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), 1.0))


def test_a_leftover_previous_folder_is_removed_by_the_next_publish_with_or_without_an_atomic_exchange(
        tmp_path, monkeypatch):
    from collab_zoo.training import checkpoint

    best = write_weights(tmp_path / "best", _weights(1.0), {})
    # A publish without an exchange was killed after its second rename: best and a stale best.previous.
    shutil.copytree(best, tmp_path / "best.previous")
    write_weights(best, _weights(2.0), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    # Where the system cannot exchange two folders (no renameat2: the state _exchange records when the C library
    # cannot be loaded), the old version is renamed to best.previous, the new one to best, then best.previous goes.
    monkeypatch.setattr(checkpoint, "_libc", False)
    write_weights(best, _weights(3.0), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), 3.0))
    shutil.copytree(best, tmp_path / "best.previous")
    write_weights(best, _weights(4.0), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), 4.0))
    # The reader's view between the two renames (best missing, best.previous whole) is checked above, in
    # test_readers_use_the_previous_version_only_while_the_folder_is_missing; the writer that follows clears it.
    best.rename(tmp_path / "best.previous")
    write_weights(best, _weights(5.0), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "renames"])
def test_a_plain_file_where_a_checkpoint_goes_is_replaced_once_and_blocks_no_later_write(tmp_path, monkeypatch,
                                                                                         exchange):
    """A file standing at checkpoints/best (or a file or link at a killed write's staging name) is replaced by the
    checkpoint folder; nothing of it is left to make the next write fail."""
    from collab_zoo.training import checkpoint

    if not exchange:
        monkeypatch.setattr(checkpoint, "_libc", False)
    best = tmp_path / "best"
    best.write_text("not a checkpoint")
    (tmp_path / ".incoming-last").write_text("left by a killed write")
    # A link at a staging name is removed, never followed: the folder it points to keeps its files.
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("someone else's")
    (tmp_path / ".incoming-other").symlink_to(elsewhere, target_is_directory=True)
    for value in (1.0, 2.0):
        write_weights(best, _weights(value), {})
        write_weights(tmp_path / "last", _weights(value), {})
        write_weights(tmp_path / "other", _weights(value), {})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "other"]
        assert torch.equal(CheckpointFolder(best).tensors("model.safetensors")["w"], torch.full((2, 3), value))
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_tied_kept_checkpoints_rank_in_the_order_they_came_and_a_dropped_one_already_gone_is_no_error(tmp_path):
    # A stable sort on the metric alone, as timm's CheckpointSaver: of two ties the earlier stays ahead and is kept.
    history = CheckpointHistory(tmp_path / "a", max_history=2, decreasing=False)
    assert history.offer("e1", 50.0, _weights(), {}) and history.offer("e2", 50.0, _weights(), {})
    assert history.entries == [[50.0, "e1"], [50.0, "e2"]]
    assert history.offer("e3", 60.0, _weights(), {})
    assert history.entries == [[60.0, "e3"], [50.0, "e1"]]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["e1", "e3"]
    losses = CheckpointHistory(tmp_path / "b", max_history=3, decreasing=True)
    for name in ("epoch-9", "epoch-10"):
        assert losses.offer(name, 0.5, _weights(), {})
    assert losses.entries == [[0.5, "epoch-9"], [0.5, "epoch-10"]]
    # A resumed run lists epoch-0, which was removed before the run stopped; dropping it again is no error.
    resumed = CheckpointHistory(tmp_path / "c", max_history=1, decreasing=False, entries=[[50.0, "epoch-0"]])
    assert resumed.offer("epoch-1", 60.0, _weights(), {})
    assert resumed.entries == [[60.0, "epoch-1"]] and sorted(p.name for p in (tmp_path / "c").iterdir()) == ["epoch-1"]


def test_manifest_less_folders_are_judged_by_the_files_they_hold(tmp_path, caplog):
    import logging

    def folder(name, files):
        f = tmp_path / name
        f.mkdir(parents=True)
        for file, text in files.items():
            (f / file).write_text(text)
        return f

    # The format comes from state.json, else run.json: a damaged state.json does not hide run.json's format 3.
    with pytest.raises(CorruptCheckpointError, match="is incomplete: it has no manifest.json, which every "
                                                     "checkpoint of format 3 has"):
        verify_checkpoint(folder("torn", {"state.json": "{", "run.json": '{"format": 3}'}))
    with caplog.at_level(logging.WARNING, logger="collab_zoo.train"):
        # A state.json without a format, or not an object, says no format: an older folder, used as it is.
        for name, text in (("no-format", "{}"), ("list", "[]"), ("text-format", '{"format": "3"}')):
            assert verify_checkpoint(folder(name, {"state.json": text, "model.safetensors": "x"})) is None
        # config.json beside state.json or run.json is a training checkpoint's, not a Hub folder's.
        for name, file in (("with-state", "state.json"), ("with-run", "run.json")):
            assert verify_checkpoint(folder(name, {"config.json": "{}", file: '{"format": 2}',
                                                   "model.safetensors": "x"})) is None
        # state.json alone is a resumable checkpoint (format 2), found by --resume.
        state_only = folder("state-only", {"state.json": '{"format": 2, "args": {"model": "m"}}'})
        assert verify_checkpoint(state_only) is None
        assert latest_checkpoint(state_only).path == state_only
        # model.safetensors alone is a weights checkpoint: its own file, no settings.
        weights_only = folder("weights-only", {"model.safetensors": "x"})
        assert find_checkpoint_weights(weights_only) == (weights_only / "model.safetensors", None)
    # run.json alone (format 3) is a checkpoint folder that lost its other files.
    with pytest.raises(CorruptCheckpointError, match="is incomplete: it has no manifest.json"):
        find_checkpoint_weights(folder("run-only", {"run.json": '{"format": 3}'}))


def test_resume_and_checkpoint_paths_name_a_run_its_checkpoints_or_a_copied_folder(tmp_path):
    last = write_checkpoint(tmp_path / "run" / "checkpoints", rank=0, is_main=True, barrier=lambda: None,
                            rank_state={}, **_checkpoint_parts())
    # --resume takes the run folder, its checkpoints folder, or the checkpoint itself.
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", last):
        assert latest_checkpoint(path).path == last
    # A checkpoint copied out of its run keeps its own settings (state.json)...
    copy = tmp_path / "copied-last"
    shutil.copytree(last, copy)
    assert find_checkpoint_weights(copy)[1]["args"] == {"model": "m"}
    # ...but a weights folder outside a run's checkpoints/ does not borrow a neighbouring last's settings.
    loose = write_weights(tmp_path / "elsewhere" / "best", _weights(), {})
    shutil.copytree(last, tmp_path / "elsewhere" / "last")
    assert find_checkpoint_weights(loose)[1] is None
    # A plain path (no *, ? or [) is given back as it is, existing or not, whatever its letters.
    assert expand_checkpoint_pattern("runs/X1/checkpoints/best") == ["runs/X1/checkpoints/best"]


def test_each_checkpoint_refusal_ends_with_what_to_do(tmp_path):
    def refusal(error, call, *args, **kwargs):
        with pytest.raises(error) as e:
            call(*args, **kwargs)
        return str(e.value)

    assert refusal(IncompatibleConfigError, latest_checkpoint, tmp_path / "nowhere").endswith(
        ": no such folder. Give a run folder (it holds checkpoints/last) or a checkpoint folder.")
    (tmp_path / "empty").mkdir()
    assert refusal(IncompatibleConfigError, latest_checkpoint, tmp_path / "empty").endswith(
        ": no checkpoint there (expected a folder with state.json, or a run folder with checkpoints/last). "
        "Checkpoints are written every --recovery-interval steps and at each epoch end.")
    assert refusal(IncompatibleConfigError, run_folder_of, tmp_path / "loose").endswith(
        "), so there is no run to continue. Resume the run folder, or keep checkpoints in their run's checkpoints/ "
        "folder.")
    best = write_weights(tmp_path / "run" / "checkpoints" / "best", _weights(), {})
    (best / "metrics.json").unlink()
    assert refusal(CorruptCheckpointError, verify_checkpoint, best).endswith(
        "metrics.json is missing (the manifest lists it). Resume from or evaluate another checkpoint of the run "
        "(checkpoints/last, checkpoints/best, checkpoints/epoch-*), or restore the folder from a backup; never edit "
        "a checkpoint's files by hand.")
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    assert refusal(IncompatibleConfigError, verify_checkpoint, hub).endswith(
        " --pretrained (its config.json holds the model's settings and the weights' sha256).")
    pickle = tmp_path / "w.pth"
    pickle.write_bytes(b"\x80")
    assert refusal(IncompatibleConfigError, find_checkpoint_weights, pickle).endswith(
        " is not a safetensors file; only safetensors weights are read (never pickles). Convert it once with "
        "safetensors.torch.save_file, or python -m collab_zoo.convert for the papers' files.")
    plain = write_weights(tmp_path / "plain", _weights(), {})
    assert refusal(IncompatibleConfigError, find_checkpoint_weights, plain, use_ema=True).endswith(
        " has no EMA weights (ema.safetensors): the run was trained without --model-ema. Drop --use-ema to evaluate "
        "its weights.")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "state.json").write_text('{"format": 2, "args": {}}')
    (legacy / "metrics.json").write_text("{")
    assert refusal(CorruptCheckpointError, latest_checkpoint(legacy).run_state).endswith(
        "/state.json is damaged: it lacks progress, world_size, experiment. Resume from another copy of the run, or "
        "start a new run (--initial-checkpoint takes the weights).")
    assert " is damaged: metrics.json is not valid JSON (Expecting " in refusal(
        CorruptCheckpointError, CheckpointFolder(legacy).json, "metrics.json")
