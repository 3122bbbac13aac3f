"""Loaders for training and evaluation: timm's ``create_loader`` (transforms, collation, prefetcher, random
erasing), with the order of the training samples taken from (seed, epoch) so that an epoch can start anywhere.

timm's loader samples with an unseeded shuffle (or a DistributedSampler) and always starts an epoch at its first
batch. An exact resume needs the epoch's order to be a function of (seed, epoch) and the epoch to continue at the
batch where it stopped, so the DataLoader create_loader made is rebuilt with the same dataset, collation and
worker set-up around a list of batches; timm's PrefetchLoader is kept, its random erasing seeded per batch.
Each sample's own augmentation is seeded from (seed, epoch, index) by ``ImageSamples``.
"""
from __future__ import annotations

import argparse
import functools
import math
import signal
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from ..data import DataBundle, ImageSamples, preserved_rng, sample_key

__all__ = ["train_loader_settings", "make_train_loader", "make_eval_loader", "guarded_batches", "batches_per_epoch"]


def _pick(value, default):
    return default if value is None else value


def train_loader_settings(args: argparse.Namespace, bundle: DataBundle) -> Dict[str, Any]:
    """create_loader's training arguments from the flags; a flag left unset takes the data set's default
    (timm's for image data, no flips or zoom for the built-in digits)."""
    defaults = bundle.augment_defaults
    config = bundle.data_config
    train_interpolation = _pick(args.train_interpolation, defaults.get("train_interpolation"))
    if args.no_aug or not train_interpolation:
        train_interpolation = config["interpolation"]
    return dict(
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode,
        scale=tuple(_pick(args.scale, defaults["scale"])), ratio=tuple(_pick(args.ratio, defaults["ratio"])),
        hflip=_pick(args.hflip, defaults["hflip"]), vflip=_pick(args.vflip, defaults["vflip"]),
        color_jitter=_pick(args.color_jitter, defaults["color_jitter"]), color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob or 0.0, gaussian_blur_prob=args.gaussian_blur_prob or 0.0,
        auto_augment=args.aa, interpolation=train_interpolation, worker_seeding=args.worker_seeding,
    )


def _common(args, bundle: DataBundle, device: torch.device) -> Dict[str, Any]:
    config = bundle.data_config
    return dict(input_size=config["input_size"], mean=config["mean"], std=config["std"],
                num_workers=args.workers, pin_memory=args.pin_mem, device=device,
                use_prefetcher=not args.no_prefetcher, persistent_workers=False)


def batches_per_epoch(length: int, batch_size: int, world: int) -> int:
    """Training batches per process and epoch: the last partial batch is kept, but a last batch of one sample
    joins the one before it (BatchNorm cannot train on one sample)."""
    per_process = math.ceil(length / world)
    count = math.ceil(per_process / batch_size)
    if count > 1 and per_process % batch_size == 1:
        count -= 1
    return count


def _batches(sampler, batch_size: int) -> List[List[int]]:
    batches = [list(b) for b in BatchSampler(sampler, batch_size, drop_last=False)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


class _SeededErasing:
    """timm's batch-level random erasing (the prefetcher's), drawing from (seed, epoch, batch) alone."""

    def __init__(self, erasing, seed: int, epoch: int, first_batch: int, device: torch.device):
        self.erasing, self.seed, self.epoch, self.batch = erasing, seed, epoch, first_batch
        self.devices = [device] if device.type == "cuda" else []

    def __call__(self, images):
        import random

        key = sample_key(self.seed, self.epoch, 1_000_000_007 + self.batch)
        self.batch += 1
        with torch.random.fork_rng(devices=self.devices):
            state = random.getstate()
            random.seed(key)
            torch.random.default_generator.manual_seed(key)
            if self.devices:
                torch.cuda.manual_seed(key)
            try:
                return self.erasing(images)
            finally:
                random.setstate(state)


def _worker_init(worker_id: int, timm_init=None) -> None:
    """timm's worker set-up, and Ctrl-C left to the main process: it stops the run at a step boundary and saves
    a checkpoint, which needs the workers alive until then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if timm_init is not None:
        timm_init(worker_id)


def make_train_loader(dataset, args, bundle: DataBundle, device: torch.device, world: int, rank: int, epoch: int,
                      skip_batches: int = 0) -> Tuple[Any, int]:
    """This process's loader for one epoch of ``dataset``, starting at batch ``skip_batches``; and the number
    of batches in the whole epoch."""
    from timm.data import create_loader
    from timm.data.loader import PrefetchLoader

    settings = train_loader_settings(args, bundle)
    loader = create_loader(dataset, batch_size=args.batch_size, is_training=True, distributed=False,
                           **_common(args, bundle, device), **settings)
    if not isinstance(dataset, ImageSamples):
        # A streamed (iterable) data set shards and shuffles itself; an epoch can only restart from its start.
        return loader, len(loader)
    dataset.set_epoch(epoch, args.seed)
    dataset.rng_guarded = True
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    # The last partial batch is kept (timm drops it): small data sets would otherwise lose images every epoch.
    batches = _batches(sampler, args.batch_size)
    inner = loader.loader if isinstance(loader, PrefetchLoader) else loader
    resumable = DataLoader(inner.dataset, batch_sampler=batches[skip_batches:], num_workers=inner.num_workers,
                           collate_fn=inner.collate_fn, pin_memory=inner.pin_memory,
                           worker_init_fn=functools.partial(_worker_init, timm_init=inner.worker_init_fn),
                           generator=torch.Generator().manual_seed(sample_key(args.seed, epoch, rank)))
    if isinstance(loader, PrefetchLoader):
        loader.loader = resumable
        if loader.random_erasing is not None:
            loader.random_erasing = _SeededErasing(loader.random_erasing, args.seed, epoch, skip_batches, device)
        return loader, len(batches)
    return resumable, len(batches)


def make_eval_loader(dataset, args, bundle: DataBundle, device: torch.device, world: int, rank: int,
                     batch_size: Optional[int] = None):
    """This process's share of ``dataset`` (every world-th image from its rank on), through timm's eval
    transform; no image is repeated to even out the shares, so summed counts are exact."""
    from timm.data import create_loader

    if isinstance(dataset, ImageSamples):
        dataset = dataset.view(list(range(rank, len(dataset), world)))
    config = bundle.data_config
    return create_loader(dataset, batch_size=batch_size or max(args.batch_size, 64), is_training=False,
                         distributed=False, interpolation=config["interpolation"], crop_pct=config.get("crop_pct"),
                         crop_mode=config.get("crop_mode"), **_common(args, bundle, device))


def guarded_batches(loader) -> Iterator:
    """Iterate ``loader`` with the process's random generators restored around each batch's loading, so the
    per-sample seeding of the augmentation never moves the streams the model and mixup draw from."""
    with preserved_rng():
        iterator = iter(loader)
    while True:
        with preserved_rng():
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch

