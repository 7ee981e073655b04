"""Datasets and loaders from the parsed flags, for one process or one rank of a torchrun job."""
from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from dataset.av_dataset import AVDataset
from utils.distributed import DistInfo


def build_dataset(args: argparse.Namespace, split: str, train_transforms: bool | None = None) -> AVDataset:
    """The 'train', 'val' or 'test' split; training transforms on 'train' unless ``train_transforms`` says."""
    index = {"train": args.list_train, "val": args.list_val, "test": args.list_test}[split]
    train = split == "train" if train_transforms is None else train_transforms
    return AVDataset(index, args.audio_path, args.frame_path, args.categories,
                     num_frames=args.num_frames, stride_frames=args.stride_frames, frame_rate=args.frameRate,
                     img_size=args.imgSize, aud_len=args.audLen, aud_rate=args.audRate, train=train,
                     seed=args.seed, skip_bad=args.skip_bad, max_samples=args.max_samples)


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
    :func:`set_epoch` before each epoch (workers are not persistent, so they see the new epoch); full batches
    only. Eval: each rank a shard, in order."""
    if train:
        sampler: Sampler[int] = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                                   shuffle=True, seed=args.seed, drop_last=False)
        drop_last = len(dataset) // info.world_size > args.batch_size_per_gpu
    else:
        sampler = ShardSampler(len(dataset), info)
        drop_last = False
    return DataLoader(dataset, batch_size=args.batch_size_per_gpu, sampler=sampler, num_workers=args.workers,
                      pin_memory=info.device.type == "cuda", drop_last=drop_last)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """New shuffling and augmentation for ``epoch``; the same for a resumed run."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return (batch["frames"].to(device, non_blocking=non_blocking),
            batch["audio"].to(device, non_blocking=non_blocking),
            batch["label"].to(device, non_blocking=non_blocking))
