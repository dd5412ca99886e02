"""Training: the loop, the resume guard, metrics and plots (loop.py), and torchrun ranks
(distributed.py). `python -m asr.training` is `asr train`; `torchrun --nproc-per-node N -m
asr.training <arguments of asr train>` trains with N processes."""

from .distributed import DistributedSetup, distributed_setup_from_env
from .loop import RESUME_SAFE_KEYS, TRACE_ENV, TrainState, check_resume_config, plot_training, train, validate

__all__ = [
    "RESUME_SAFE_KEYS", "TRACE_ENV", "DistributedSetup", "TrainState", "check_resume_config",
    "distributed_setup_from_env", "plot_training", "train", "validate",
]
