"""One process per GPU through torchrun, or a single process; helpers that work in both cases.

On CUDA the default group holds two backends, ``cpu:gloo,cuda:nccl``: NCCL for the tensors of the
collectives (which the helpers here put on ``DistInfo.device`` first, since NCCL has no CPU
transport) and gloo for the object collectives (``all_gather_list``) and anything else on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

CUDA_BACKENDS = "cpu:gloo,cuda:nccl"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launch_world_size() -> int:
    """Processes of this launch: torchrun's WORLD_SIZE, 1 for a plain ``python`` run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_flag: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK), if any.

    ``device_flag``: 'auto' uses CUDA when present, else the CPU; 'cpu' / 'cuda' force one.
    On CUDA the group is ``cpu:gloo,cuda:nccl`` bound to this rank's GPU (``device_id``); on the CPU gloo.
    """
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    world_size = launch_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise RuntimeError(f"local rank {local_rank} needs GPU {local_rank} but this machine shows {visible} "
                               f"GPU(s): start at most {visible} processes per node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            dist.init_process_group(backend=CUDA_BACKENDS, device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``tensor`` over processes (itself in a single process), on the device ``tensor`` is on.

    The collective runs on ``info.device`` (NCCL on CUDA takes no CPU tensor); ``tensor`` is not modified.
    """
    if not info.enabled:
        return tensor
    summed = tensor.to(info.device, copy=True)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(tensor.device)


def all_gather_list(values: list, info: DistInfo) -> list:
    """Every process's ``values`` concatenated in rank order (``values`` itself in a single process)."""
    if not info.enabled:
        return values
    parts: list[list] = [[] for _ in range(info.world_size)]
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
