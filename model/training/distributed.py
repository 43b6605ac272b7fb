"""Data-parallel training under `torchrun` (PyTorch DDP: gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 -m stream.cli train --model srgnn --data PATH --out DIR

Every process loads the same data, seeds the same way and so draws the same shuffled batch order; process
r trains on batches r, r + world, r + 2 world, ... (every process the same number of steps, as DDP's
gradient all-reduce needs), so one epoch costs 1/world of the batches per process with the same
effective data. Validation runs on every process over the same samples, so early stopping decides the
same everywhere. Only rank 0 evaluates on the test split and writes the checkpoint, which is the same
kind of checkpoint a single process writes.

Supported for the models trained by `model.models.neural` (SR-GNN and MTAW). GRU4Rec's session-parallel
mini-batches and sparse optimiser do not shard this way; it refuses with a clear error.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def shutdown() -> None:
    """Leave the group together: every rank waits at a barrier first. A rank that destroyed the group
    while another still held its gloo connection died with SIGABRT ('terminate called without an active
    exception') in about one run in ten here."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class LossOf(nn.Module):
    """net.loss as a module's forward, so that DDP sees the call and all-reduces the gradients."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, seq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net.loss(seq, labels)


def data_parallel_loss(net: nn.Module, device: torch.device) -> nn.Module:
    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    return nn.parallel.DistributedDataParallel(LossOf(net), device_ids=ids)


def shard(batches: list, world: int, rank_: int) -> list:
    """This process's share of the batch order: equal step counts everywhere (the tail is dropped)."""
    usable = len(batches) // world * world
    return batches[rank_:usable:world]
