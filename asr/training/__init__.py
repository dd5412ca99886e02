"""Training: CTC loss, AdamW with warm-up and cosine decay, gradient clipping, bf16 autocast on
CUDA, length-bucketed batches, validation (loss and greedy WER/CER) after each epoch, and
checkpoints `last.pt` / `best.pt` that `--resume` continues from.

Faults cost little: checkpoints are written atomically, also every `train.save_every_steps`
updates mid-epoch, and a resumed run continues at the exact batch with the same RNG states, so it
ends with the same weights as an uninterrupted one; a batch with a non-finite loss or gradient is
skipped and counted; on CUDA out-of-memory the batch is retried in smaller parts (same update).

`--resume` continues only with the config last.pt was trained with, up to RESUME_SAFE_KEYS
(`check_resume_config`): any other change stops with the differing keys before data is read;
`--force-resume` continues with changed train/specaug values (lr and weight decay replace those in the
optimizer state), never with changed features/model/tokenizer sections.

Several GPUs (or CPU processes): `torchrun --nproc-per-node N -m asr.training <arguments of asr train>`.
Each process (rank) trains on every N-th batch of the epoch with DistributedDataParallel (gradients
averaged), so one update sees N batches; rank 0 alone estimates the feature normalizer (then sent to
the others), validates, and writes train.log, metrics.jsonl and checkpoints, while the others wait.
Out-of-memory splitting is off with N > 1: the ranks must run the same steps in lock-step. Resume
with the same N for an exact continuation. With N = 1 a run is bit for bit a plain `asr train` run.

The parts, in the order a run uses them:
    loop.py         train(): set up, then per epoch train on the batches, validate and save
    step.py         one update: the training forward pass, CTC loss, out-of-memory splitting, EMA
    resume.py       the resume guard (RESUME_SAFE_KEYS), restoring last.pt, train.init_from
    state.py        TrainState (the run's counters) and the RNG states a checkpoint keeps
    metrics.py      log intervals, validation, metrics.jsonl and its plot (`asr plot`)
    distributed.py  torchrun ranks: process group, DistributedDataParallel, collectives
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .distributed import DistributedSetup, distributed_setup_from_env
    from .loop import TRACE_ENV, train
    from .metrics import plot_training, validate
    from .resume import RESUME_SAFE_KEYS, check_resume_config
    from .state import TrainState

# Imported when first used: `asr transcribe` reads only distributed.py (where its process stands under
# torchrun), and importing the package must not cost it the training loop's imports (issue 27).
_WHERE = {"DistributedSetup": "distributed", "distributed_setup_from_env": "distributed", "TRACE_ENV": "loop",
          "train": "loop", "plot_training": "metrics", "validate": "metrics", "RESUME_SAFE_KEYS": "resume",
          "check_resume_config": "resume", "TrainState": "state"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

__all__ = [
    "RESUME_SAFE_KEYS", "TRACE_ENV", "DistributedSetup", "TrainState", "check_resume_config",
    "distributed_setup_from_env", "plot_training", "train", "validate",
]
