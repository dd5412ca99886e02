"""Distributed training helpers: where this process stands among those torchrun started, the
process group, and the few collectives the training loop needs (all no-ops in a plain run).

`torchrun --nproc-per-node N -m asr.training <arguments of asr train>` starts N processes (ranks);
see asr/training/__init__.py for how they share the work.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# How long ranks wait for each other, e.g. while rank 0 validates and saves (torch's NCCL default
# is 10 minutes, too short for a large dev set).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass
class DistributedSetup:
    """Where this process stands among those torchrun started (a plain run: rank 0 of 1, inactive)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this machine: the GPU index it uses
    active: bool = False  # started by torchrun: a process group connects the ranks (also with 1 of them)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_setup_from_env(env: dict[str, str] | None = None) -> DistributedSetup:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK), or a plain run when WORLD_SIZE is unset."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return DistributedSetup()
    try:
        world_size, rank, local_rank = (int(env.get(key, "0")) for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise ValueError(f"torchrun environment: WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r} and "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r} must be integers") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"torchrun environment: RANK={rank} and LOCAL_RANK={local_rank} do not fit "
                         f"WORLD_SIZE={world_size}")
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise ValueError("WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not: start distributed training with "
                         "torchrun --nproc-per-node N -m asr.training ...")
    return DistributedSetup(rank, world_size, local_rank, active=True)


def rank_device(setup: DistributedSetup, device: torch.device) -> torch.device:
    """The device this rank trains on: under torchrun on CUDA one GPU per rank (its local rank),
    whatever train.device names; otherwise `device`."""
    if not (setup.active and device.type == "cuda"):
        return device
    if setup.local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {setup.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                           "start at most one process per GPU")
    device = torch.device("cuda", setup.local_rank)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(setup: DistributedSetup, device: torch.device | str,
                  timeout: timedelta = PROCESS_GROUP_TIMEOUT) -> Iterator[None]:
    """The process group connecting the ranks, for the duration of the block (started here unless
    one already is; NCCL on CUDA, gloo on the CPU), whose collectives wait at most `timeout` for a
    rank. Nothing in a plain run."""
    started = setup.active and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo", timeout=timeout)
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """`module` under DistributedDataParallel. Buffers (normalizer statistics, filterbank) never
    change: sent once by broadcast_weights, not every step (newer torch calls the option
    forward_sync_buffers)."""
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_buffer_sync)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's dropout and SpecAugment draws (rank 0: `seed` itself)."""
    return seed + 1_000_003 * rank


def broadcast_weights(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank, in place."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def gather_to_main(value: Any, setup: DistributedSetup) -> list[Any]:
    """[value of rank 0, of rank 1, ...] on rank 0 (an empty list elsewhere); [value] without ranks."""
    if setup.world_size == 1:
        return [value]
    gathered: list[Any] | None = [None] * setup.world_size if setup.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, setup: DistributedSetup, device: torch.device) -> bool:
    """True on every rank when `flag` holds on any rank."""
    if setup.world_size == 1:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def all_reduce_max(value: torch.Tensor, setup: DistributedSetup) -> None:
    """`value` <- its maximum over the ranks, in place (nothing with one rank)."""
    if setup.world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)


def all_reduce_sum(value: torch.Tensor, setup: DistributedSetup) -> None:
    """`value` <- its sum over the ranks, in place (nothing with one rank)."""
    if setup.world_size > 1:
        dist.all_reduce(value)
