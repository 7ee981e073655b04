"""Datasets and loaders from the parsed flags, for one process or one rank of a torchrun job."""
from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from dataset.av_dataset import AVDataset
from dataset.device_decode import collate_batch, decode_clips
from dataset.transforms import frames_to_float
from utils.distributed import DistInfo

# Batches each worker keeps ready: a GPU step at 224 px takes a few milliseconds, a worker's batch far longer,
# so a deeper queue absorbs the jitter of decoding (slow JPEGs, page-cache misses).
PREFETCH_BATCHES = 4


def build_dataset(args: argparse.Namespace, split: str, train_transforms: bool | None = None) -> AVDataset:
    """The 'train', 'val' or 'test' split; training transforms on 'train' unless ``train_transforms`` says. The
    test split keeps the class-stratified ``--eval_samples`` subset (of the ``--max_samples`` one) where given."""
    index = {"train": args.list_train, "val": args.list_val, "test": args.list_test}[split]
    train = split == "train" if train_transforms is None else train_transforms
    counts = [args.max_samples, getattr(args, "eval_samples", None) if split == "test" else None]
    subset = min((n for n in counts if n), default=None)
    return AVDataset(index, args.audio_path, args.frame_path, args.categories,
                     num_frames=args.num_frames, stride_frames=args.stride_frames, frame_rate=args.frameRate,
                     img_size=args.imgSize, aud_len=args.audLen, aud_rate=args.audRate, train=train,
                     seed=args.seed, skip_bad=args.skip_bad, max_samples=subset,
                     defer_decode=args.decode_device == "cuda")


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order and without padding, so summed counts over
    ranks cover each evaluation sample exactly once."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: AVDataset, args: argparse.Namespace, info: DistInfo, train: bool) -> DataLoader:
    """Train: shuffled by (seed, epoch) through DistributedSampler (also with one process) — call
    :func:`set_epoch` before each epoch; full batches only. Eval: each rank a shard, in order.

    Workers are persistent (no restart and dataset copy per epoch; the dataset's epoch is shared with them) and
    keep ``PREFETCH_BATCHES`` batches each; batches go to pinned memory when the device is a GPU, so the
    uint8 frames copy asynchronously in :func:`to_device`. The loader's own generator (seeded by ``--seed``) seeds
    the workers, so loading draws nothing from torch's global generator: what draws from it later (attacks
    without a seed) does not depend on ``--workers`` or on how often a loader was iterated."""
    if args.decode_device == "cuda" and info.device.type != "cuda":
        raise ValueError(f"--decode_device cuda decodes frames on the training GPU, but this process runs on "
                         f"{info.device}")
    if train:
        sampler: Sampler[int] = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                                   shuffle=True, seed=args.seed, drop_last=False)
        drop_last = len(dataset) // info.world_size > args.batch_size_per_gpu
    else:
        sampler = ShardSampler(len(dataset), info)
        drop_last = False
    workers = args.workers
    return DataLoader(dataset, batch_size=args.batch_size_per_gpu, sampler=sampler, num_workers=workers,
                      collate_fn=collate_batch, pin_memory=info.device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0, prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
                      generator=torch.Generator().manual_seed(args.seed))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """New shuffling and augmentation for ``epoch``; the same for a resumed run."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames, audio, labels) of a loader batch on ``device``: the one place where frames become the float
    [0, 1] pixels of the Batch interface, after the uint8 copy (or, with deferred decoding, after decoding the
    JPEG bytes on ``device``). Every loop that feeds a model from a loader goes through here. Float frames
    (batches made by hand, e.g. in tests) are taken as already in [0, 1] and only moved."""
    non_blocking = device.type == "cuda"
    if "jpeg" in batch:
        frames = decode_clips(batch["jpeg"], device)
    else:
        frames = batch["frames"].to(device, non_blocking=non_blocking)
    return (frames_to_float(frames) if frames.dtype == torch.uint8 else frames,
            batch["audio"].to(device, non_blocking=non_blocking),
            batch["label"].to(device, non_blocking=non_blocking))
