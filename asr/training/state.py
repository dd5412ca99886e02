"""What a training run carries across a restart besides its weights: its counters (`TrainState`,
last.pt's "state") and the random number generators' states (last.pt's "rng", per rank "rng_ranks"),
which a resumed run restores so that it draws exactly as an uninterrupted one would."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .distributed import DistributedSetup


@dataclass
class TrainState:
    """The run's counters, saved as last.pt's "state" and restored by `--resume`."""

    step: int = 0  # optimizer updates done (on CUDA: attempted, skipped ones included; see skipped_batches)
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of the current epoch already trained on (by each rank)
    best_wer: float = math.inf
    best_cer: float = math.inf
    elapsed: float = 0.0  # training seconds over all sessions of this run
    skipped_batches: int = 0  # batches with a non-finite loss or gradient, not applied
    oom_splits: int = 0  # CUDA out-of-memory events, each answered by retrying the batch in more parts
    audio_seconds: float = 0.0  # training audio seen (by all ranks), over all epochs
    clipped_total: int = 0  # updates whose gradient norm exceeded train.grad_clip, over the run
    cpu_seconds: float = 0.0  # CPU time of the training process over all sessions of this run
    world_size: int = 1  # processes the run trains with (torchrun --nproc-per-node)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state(specaug_rng: torch.Generator, device: torch.device | None = None) -> dict:
    """The RNG states as plain data (tuples, numbers, tensors), so that checkpoints load with
    torch.load(weights_only=True): numpy's key array (uint32) is kept as an int64 tensor."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "specaug": specaug_rng.get_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)  # this rank's GPU only
    return state


def set_rng_state(state: dict, specaug_rng: torch.Generator, device: torch.device | None = None) -> None:
    """Restore the states get_rng_state returned (on CUDA: also this rank's GPU generator)."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]  # keys: a tensor (or an array, in memory)
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    specaug_rng.set_state(state["specaug"])
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, list):  # older checkpoints: the states of all devices
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda, device)


def rng_state_of_rank(payload: dict[str, Any], setup: DistributedSetup) -> dict | None:
    """This rank's RNG states from a checkpoint; None for a rank the checkpoint has none for (it was
    written by fewer processes): that rank keeps its fresh seed."""
    states = payload.get("rng_ranks")
    if states and len(states) == setup.world_size:
        return states[setup.rank]
    return payload["rng"] if setup.is_main else None

