"""DDP under torchrun: joining the process group, sums over ranks, and one model on every rank."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, device): under torchrun join the process group, otherwise a single process."""
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over DDP ranks (a no-op in a single process)."""
    if not dist.is_initialized():
        return list(values)
    stacked = torch.stack([v.float() for v in values])
    dist.all_reduce(stacked)
    return list(stacked)


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Each flag set where it is set on any rank, so that all ranks take the same branch (a no-op alone)."""
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def average_batchnorm_statistics(model: torch.nn.Module, world_size: int) -> None:
    """Average the ranks' running batch-norm statistics, so that every rank holds the same model, fit to all shards.

    Each rank's saw only its own shard (DDP does not broadcast buffers here: wrap_for_ddp). The running means and
    variances are moving averages, linear in their inputs, so averaging them at a mid-epoch save and again at the
    epoch's end gives what averaging at the end alone gives: a resumed epoch ends with the statistics of one that ran
    straight through.
    """
    if world_size == 1:
        return
    for _, buffer in model.named_buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


def wrap_for_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """`model` under DistributedDataParallel, its batch norms synchronised across ranks if asked.

    Buffers are not broadcast from rank 0 before each forward (DDP's default): that would throw away every other
    rank's batch-norm statistics each step; average_batchnorm_statistics combines them instead, where they are used.
    """
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
