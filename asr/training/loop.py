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

The loop reads top to bottom: `train` sets up (`_set_up`: data, model, optimizer, schedule, resume),
then per epoch `_train_one_epoch` (each batch one `_train_step`: forward/backward, clipping,
optimizer, EMA) and `_validate_and_save` (validation, last.pt, best.pt, epoch<N>.pt). The process
group and collectives are in distributed.py.

Everything the run does goes to <out>/train.log; numbers go to <out>/metrics.jsonl (one JSON
object per log interval and per validation), which `asr plot` turns into a PNG.

Setting the environment variable ASR_TRAIN_TRACE_DIR makes every rank r write the batches it trains
on to <dir>/rank<r>.batches.jsonl ({"epoch", "batch", "indices"} per line, dataset positions) and its
final weights to <dir>/rank<r>.weights.pt: a check that ranks split the data and stay identical.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import (
    RESUME_ENTRIES, copy_atomic, read_checkpoint, remove_stale_temp_files, resolve_device, save_checkpoint,
    weights_mismatch,
)
from ..config import Config, config_from_dict
from ..data import Batch, BucketBatchSampler, SpeechDataset, Utterance, collate, total_hours
from ..decode import greedy_decode
from .distributed import (  # noqa: F401 (DistributedSetup, distributed_setup_from_env: part of this module's API)
    DistributedSetup, all_reduce_max, all_reduce_sum, any_rank, broadcast_from_main, broadcast_weights,
    distributed_setup_from_env, gather_to_main, process_group, rank_device, rank_seed, wrap_ddp,
)
from ..features import RunningStats, SpecAugmentConfig, spec_augment
from ..model import CTCModel, count_parameters
from ..score import score
from ..text import Tokenizer, build_tokenizer

log = logging.getLogger("asr.training")

TRACE_ENV = "ASR_TRAIN_TRACE_DIR"

# The resume guard (`check_resume_config`): `--resume` continues a run only with the config its
# last.pt was trained with, except for these keys, which change when the run stops, how often it
# logs or saves, how it loads data or where it runs, never what it learns. ("section.*": all keys.)
RESUME_SAFE_KEYS = (
    "train.max_minutes", "train.max_cpu_minutes", "train.max_steps", "train.log_every", "train.feature_cache", "train.save_every_steps", "train.num_workers",
    "train.preload_audio", "train.init_from", "train.device", "train.keep_epoch_checkpoints", "decode.*",
)
# train.epochs may grow (the cosine schedule then stretches to the new end from the current step);
# fewer epochs, like any other key, needs --force-resume.
RESUME_GROWING_KEYS = ("train.epochs",)
# These sections fix the shape and meaning of the weights: a run cannot continue with other values,
# not even with --force-resume.
RESUME_FIXED_SECTIONS = ("features", "model", "tokenizer")


@dataclass
class TrainState:
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


def train(
    config: Config,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance] | Mapping[str, Sequence[Utterance]],
    out_dir: str | Path,
    resume: bool = False,
    force_resume: bool = False,
) -> TrainState:
    """Train a model and write checkpoints under out_dir. Returns the final state.

    `dev_utts` is one dev set, or several by name ({"libri-dev": [...], "so762-test": [...]}): each is
    scored on its own after every epoch (metrics.jsonl `sets`), and best.pt is chosen by the WER
    over all of them together (train.dev_max_utts applies to each).

    With `resume`, continue from out_dir/last.pt if it exists, provided `config` matches the one it
    was trained with up to RESUME_SAFE_KEYS (`check_resume_config`); `force_resume` accepts other
    train/specaug changes too (never features, model or tokenizer ones).

    Under torchrun (WORLD_SIZE etc. set) this process is one rank of a DistributedDataParallel run."""
    setup = distributed_setup_from_env()
    device = rank_device(setup, resolve_device(config.train.device))
    with process_group(setup, device):
        run = _set_up(config, train_utts, dev_utts, Path(out_dir), resume, setup, device, force_resume)
        stop_reason = ""
        try:
            while run.state.epoch < config.train.epochs and not stop_reason:
                stop_reason, epoch_done, window = _train_one_epoch(run)
                _validate_and_save(run, window, epoch_done)
        finally:
            run.close()
        _finish(run, stop_reason)
        return run.state


# --------------------------------------------------------------------------- setup


@dataclass
class _Run:
    """What one training session works with, built by _set_up: the objects the loop updates and the
    fixed settings it reads."""

    config: Config
    setup: DistributedSetup
    device: torch.device
    out_dir: Path
    tokenizer: Tokenizer
    train_set: SpeechDataset
    dev_set: SpeechDataset
    dev_ids: dict[str, list[str]]  # dev set name -> utterance ids
    model: CTCModel
    ema_model: CTCModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BucketBatchSampler
    specaug_rng: torch.Generator
    training_forward: torch.nn.Module  # _TrainingForward, in DistributedDataParallel under torchrun
    use_bf16: bool
    state: TrainState
    metrics: Any = None  # metrics.jsonl, open on rank 0
    trace: Any = None  # the batch trace (ASR_TRAIN_TRACE_DIR)
    session_start: float = 0.0  # time.monotonic() when this session's training began
    cpu_start: float = 0.0  # time.process_time() then
    elapsed_before: float = 0.0  # state.elapsed then (earlier sessions of a resumed run)
    cpu_before: float = 0.0

    def __post_init__(self) -> None:
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema_model.parameters()) if self.ema_model else []
        self.eval_model = self.ema_model or self.model  # what validation, best.pt and epoch<N>.pt use
        self.split_on_oom = self.setup.world_size == 1
        # Fused AdamW (CUDA) can skip an update on a flag that stays on the device: no host sync per step.
        self.skip_on_device = bool(self.optimizer.defaults.get("fused"))
        self.layer_groups = _layer_parameter_groups(self.model)
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"

    def start_clock(self) -> None:
        self.session_start, self.cpu_start = time.monotonic(), time.process_time()
        self.elapsed_before, self.cpu_before = self.state.elapsed, self.state.cpu_seconds

    def tick(self) -> None:
        """Bring the state's training time and CPU time up to now."""
        self.state.elapsed = self.elapsed_before + time.monotonic() - self.session_start
        self.state.cpu_seconds = self.cpu_before + time.process_time() - self.cpu_start

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.trace is not None:
            self.trace.close()


def _set_up(
    config: Config, train_utts: Sequence[Utterance], dev_utts: Sequence[Utterance] | Mapping[str, Sequence[Utterance]],
    out_dir: Path, resume: bool, setup: DistributedSetup, device: torch.device, force_resume: bool = False,
) -> _Run:
    """Everything before the first batch, in an order that fixes the random draws (a resumed or
    refactored run must draw exactly as before): check the resume, seed, data, model, optimizer,
    schedule, restore or estimate the normalizer, EMA copy, DDP wrapper; then open the logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(out_dir / "train.log" if setup.is_main else None)
    last_path, tc = out_dir / "last.pt", config.train
    payload = _read_resume_checkpoint(last_path, config, force_resume) if resume and last_path.is_file() else None
    init = _read_init_checkpoint(tc.init_from, config) if tc.init_from and payload is None else None
    _check_train_settings(tc)
    _seed_everything(tc.seed)
    tokenizer, train_set, dev_set, dev_ids = _build_data(config, train_utts, dev_utts, setup)
    model = _build_model(config, tokenizer, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    if tc.loss_norm not in LOSS_NORMS:
        raise ValueError(f"train.loss_norm must be one of {', '.join(LOSS_NORMS)}, not {tc.loss_norm!r}")
    sampler, scheduler = _build_schedule(tc, train_set, optimizer, setup)
    specaug_rng = torch.Generator().manual_seed(tc.seed + 1)
    if setup.rank:
        # Same initial weights on every rank (drawn above), but dropout and SpecAugment masks of their own.
        _seed_everything(rank_seed(tc.seed, setup.rank))
        specaug_rng.manual_seed(rank_seed(tc.seed, setup.rank) + 1)
    if setup.is_main:
        remove_stale_temp_files(last_path)  # left by a process killed while saving
        remove_stale_temp_files(out_dir / "best.pt")
    if payload is not None:
        state = _restore(payload, last_path, tokenizer, model, optimizer, scheduler, specaug_rng, setup, device, tc)
        if setup.is_main:
            _drop_metrics_after(out_dir / "metrics.jsonl", state)
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batch_in_epoch, state.step)
    else:
        state = TrainState(world_size=setup.world_size)
        if resume:
            log.info("--resume: no %s yet, starting from scratch", last_path)
        if init is not None:
            _load_init_weights(model, tokenizer, init, tc.init_from)  # its normalizer comes with its weights
        elif setup.is_main:
            _estimate_normalizer(model, train_set, device)
    if setup.active:
        broadcast_weights(model)  # rank 0's normalizer statistics (and weights) on every rank
    ema_model = _ema_copy(model, payload, tc.ema_decay, last_path)
    del payload, init
    use_bf16 = device.type == "cuda" and tc.precision == "bf16"
    training_forward: torch.nn.Module = _TrainingForward(model, config.specaug, specaug_rng, use_bf16)
    if setup.active:
        training_forward = wrap_ddp(training_forward, device)
    run = _Run(config, setup, device, out_dir, tokenizer, train_set, dev_set, dev_ids, model, ema_model, optimizer,
               scheduler, sampler, specaug_rng, training_forward, use_bf16, state)
    _log_setup(run)
    if setup.is_main:
        (out_dir / "config.yaml").write_text(_to_yaml(config.to_dict()))
        run.metrics = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
    run.trace = _open_trace(setup.rank)
    run.start_clock()
    return run


def _read_init_checkpoint(path: str, config: Config) -> dict[str, Any]:
    """The checkpoint train.init_from names (a training run's, an average or an export), once found
    to fit this run: trained with the same features, model and tokenizer settings, since anything
    else would not fit the weights or would mean other symbols. Checked before any data is read."""
    payload = read_checkpoint(path, map_location="cpu")
    trained = config_from_dict(payload["config"], f"{path}: config")
    differ = [f"{k} {old!r} -> {new!r}" for k, old, new in _weight_fitting_changes(trained, config)
              if k.split(".")[0] in RESUME_FIXED_SECTIONS]
    if differ:
        raise ValueError(f"{path}: cannot fine-tune from it (train.init_from): this run's {'; '.join(differ)} "
                         "differs from the settings it was trained with")
    return payload


def _load_init_weights(model: CTCModel, tokenizer: Tokenizer, payload: dict[str, Any], path: str) -> None:
    """Load train.init_from's weights and feature normalization into `model` to fine-tune it."""
    if payload["tokenizer"] != tokenizer.to_dict():
        raise ValueError(f"{path}: cannot fine-tune from it (train.init_from): its tokenizer is not this run's")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in payload["model"].items()})
    log.info("initialized from %s (weights and feature normalization)", path)


def _read_resume_checkpoint(last_path: Path, config: Config, force_resume: bool) -> dict[str, Any]:
    """last.pt, once its config is found fit to continue with `config` (check_resume_config).
    Checked before any data is read: a refused resume costs nothing."""
    payload = read_checkpoint(last_path, map_location="cpu", required=RESUME_ENTRIES)
    accepted = check_resume_config(config_from_dict(payload["config"], f"{last_path}: config"), config,
                                   force_resume, last_path)
    if accepted:
        log.warning("resuming %s with changed settings: %s", last_path, "; ".join(accepted))
    return payload


def _check_train_settings(tc: Any) -> None:
    if not 0.0 <= tc.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {tc.ema_decay}")
    if tc.keep_epoch_checkpoints < 0:
        raise ValueError(f"train.keep_epoch_checkpoints must be 0 (none) or more, got {tc.keep_epoch_checkpoints}")


def _build_data(
    config: Config, train_utts: Sequence[Utterance], dev_utts: Sequence[Utterance] | Mapping[str, Sequence[Utterance]],
    setup: DistributedSetup,
) -> tuple[Tokenizer, SpeechDataset, SpeechDataset, dict[str, list[str]]]:
    """(tokenizer, training set, all dev sets in one, dev set name -> utterance ids). Training
    utterances over train.max_duration are left out; the tokenizer (BPE: trained here,
    deterministically) comes from the rest's transcripts."""
    tc = config.train
    usable = [u for u in train_utts if u.duration <= tc.max_duration]
    if len(usable) < len(train_utts):
        log.info("left out %d training utterances longer than %.1f s", len(train_utts) - len(usable), tc.max_duration)
    if not usable:
        raise ValueError("no training utterances left (all longer than train.max_duration?)")
    tokenizer = build_tokenizer(config.tokenizer, [u.text for u in usable])
    dev_sets = dict(dev_utts) if isinstance(dev_utts, Mapping) else {"dev": list(dev_utts)}
    dev_sets = {name: list(utts)[: tc.dev_max_utts or None] for name, utts in dev_sets.items()}
    all_dev = [u for utts in dev_sets.values() for u in utts]
    rate = config.features.sample_rate
    train_set = SpeechDataset(  # perturbed on the fly when speed_perturb / noise_prob ask for it; dev_set never
        usable, tokenizer, rate, preload=tc.preload_audio, speed_perturb=tc.speed_perturb, noise_prob=tc.noise_prob,
        noise_snr_db=tc.noise_snr_db, noise_manifest=tc.noise_manifest, seed=tc.seed,
    )
    dev_set = SpeechDataset(all_dev, tokenizer, rate, preload=tc.preload_audio and setup.is_main)  # rank 0 validates
    log.info("train: %d utterances, %.2f h; dev: %d utterances, %.2f h",
             len(usable), total_hours(usable), len(all_dev), total_hours(all_dev))
    return tokenizer, train_set, dev_set, {name: [u.id for u in utts] for name, utts in dev_sets.items()}


def _build_model(config: Config, tokenizer: Tokenizer, device: torch.device) -> CTCModel:
    """A freshly initialized model (draws from the global torch RNG) on `device`."""
    model = CTCModel(config.features, config.model, len(tokenizer)).to(device)
    if hasattr(model.frontend, "use_cache"):  # a frozen pretrained encoder: compute each utterance once
        cache = config.train.feature_cache
        model.frontend.use_cache(os.path.expanduser(cache) if cache else None)
        log.info("frozen encoder %s; its features are cached in memory%s", config.features.encoder_id,
                 f" and in {cache}" if cache else "")
    return model


def _build_schedule(
    tc: Any, train_set: SpeechDataset, optimizer: torch.optim.Optimizer, setup: DistributedSetup,
) -> tuple[BucketBatchSampler, torch.optim.lr_scheduler.LambdaLR]:
    """This rank's length-bucketed batch sampler, and the warm-up + cosine schedule over the planned
    epochs (max_steps and max_minutes only stop the run early, so an interrupted run resumes on the
    same schedule)."""
    sampler = BucketBatchSampler(
        train_set.durations, tc.max_batch_seconds, tc.max_batch_size, shuffle=True, seed=tc.seed,
        num_replicas=setup.world_size, rank=setup.rank, short_first_epochs=tc.short_first_epochs,
    )
    steps_per_epoch = len(sampler.epoch_batches(0)) // setup.world_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(sampler.epoch_batches(0))} batches per epoch cannot feed {setup.world_size} "
                         "processes: lower train.max_batch_seconds or use fewer processes")
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, total_steps, tc.final_lr_ratio))
    return sampler, scheduler


def _restore(
    payload: dict[str, Any], last_path: Path, tokenizer: Tokenizer, model: CTCModel, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR, specaug_rng: torch.Generator, setup: DistributedSetup,
    device: torch.device, tc: Any,
) -> TrainState:
    """Load last.pt's weights, optimizer, schedule and this rank's RNG states; returns its state."""
    if payload["tokenizer"] != tokenizer.to_dict():
        raise ValueError(f"{last_path}: cannot resume: the tokenizer built from this config and training data "
                         "differs from the run's (BPE pieces trained on other transcripts?); train in another "
                         "folder (--out, or --exp-name in a recipe)")
    mismatch = weights_mismatch(model.state_dict(), payload["model"])
    if mismatch:
        raise ValueError(f"{last_path}: cannot resume: its weights do not fit the model of this config ({mismatch})")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _apply_schedule_settings(optimizer, scheduler, tc)
    state = TrainState(**payload["state"])
    rng_state = _rng_state_of_rank(payload, setup)
    if rng_state is not None:
        _set_rng_state(rng_state, specaug_rng, device)
    if state.world_size != setup.world_size:
        log.warning("resuming a run trained by %d processes with %d: it continues, but not exactly as it would "
                    "have (other batch split, other schedule length)", state.world_size, setup.world_size)
        state.batch_in_epoch = state.batch_in_epoch * state.world_size // setup.world_size
        state.world_size = setup.world_size
    return state


def _ema_copy(model: CTCModel, payload: dict[str, Any] | None, decay: float, last_path: Path) -> CTCModel | None:
    """The exponential moving average of the weights (train.ema_decay; None when 0): a copy of the
    model, or the average last.pt holds."""
    if not decay:
        return None
    ema_model = copy.deepcopy(model).requires_grad_(False)
    if payload is not None and "ema" in payload:
        ema_model.load_state_dict(payload["ema"])
    elif payload is not None:
        log.warning("%s holds no averaged weights: train.ema_decay starts averaging from its weights", last_path)
    return ema_model


def _log_setup(run: _Run) -> None:
    tc, setup = run.config.train, run.setup
    steps_per_epoch = len(run.sampler.epoch_batches(0)) // setup.world_size
    log.info("model: %s, %.2f M parameters; device %s", run.config.model, count_parameters(run.model) / 1e6,
             run.device)
    if setup.active:
        log.info("distributed: %d processes (%s backend), each %d batches per epoch; out-of-memory batch splitting "
                 "is %s", setup.world_size, dist.get_backend(), steps_per_epoch,
                 "on" if run.split_on_oom else "off (ranks must stay in lock-step: lower train.max_batch_seconds if "
                 "a batch does not fit)")
    log.info("%d batches per epoch (padding %.1f%% of frames), %d epochs, %d updates planned",
             steps_per_epoch, 100 * run.sampler.padding_fraction(), tc.epochs, tc.epochs * steps_per_epoch)


# --------------------------------------------------------------------------- one epoch, one update


def _train_one_epoch(run: _Run) -> tuple[str, bool, _Window]:
    """Train on this rank's batches of the current epoch, from state.batch_in_epoch on, until the
    epoch ends or a limit stops the run. Returns (why the run stops, "" if it goes on; whether the
    epoch is complete; the metrics window, for the checkpoint that follows)."""
    state, tc, setup = run.state, run.config.train, run.setup
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    run.train_set.set_epoch(state.epoch)  # speed/noise perturbation of this epoch (workers copy the dataset)
    # Its own generator: creating the loader must not draw from the global RNG, or a resumed
    # run would see different dropout masks than an uninterrupted one.
    loader = DataLoader(
        run.train_set, batch_sampler=run.sampler, collate_fn=collate, num_workers=tc.num_workers,
        pin_memory=run.device.type == "cuda", prefetch_factor=4 if tc.num_workers else None,
        generator=torch.Generator().manual_seed(tc.seed + state.epoch),
    )
    epoch_batches = run.sampler.epoch_batches(state.epoch)  # of all ranks: the audio an update sees
    run.model.train()
    window = _Window(run.device, state)
    bar = tqdm(total=len(run.sampler), desc=f"epoch {state.epoch + 1}/{tc.epochs}", unit="batch", leave=False,
               disable=not setup.is_main)
    batches = iter(loader)
    stop_reason = ""
    while not stop_reason:
        wait_start = time.perf_counter()
        batch = next(batches, None)
        window.data_wait += time.perf_counter() - wait_start
        if batch is None:
            break
        window.add_padding(batch)
        if run.trace is not None:
            run.trace.write(json.dumps({"epoch": state.epoch, "batch": state.batch_in_epoch,
                                        "indices": batch.indices}) + "\n")
        seconds = _audio_seconds_of_update(run.train_set, batch, epoch_batches, state.batch_in_epoch, setup.world_size)
        updated = _train_step(run, batch.to(run.device, non_blocking=True), window)
        state.batch_in_epoch += 1
        state.audio_seconds += seconds
        bar.update(1)
        if state.step % tc.log_every == 0 and window.steps:
            _log_window(run, window, bar)
        run.tick()
        if updated and tc.save_every_steps and state.step % tc.save_every_steps == 0:
            # Mid-epoch: a killed run resumes from here, at the next batch, losing < N updates.
            _save_last(run, window)
        stop_reason = _stop_reason(run)
    bar.close()
    epoch_done = not stop_reason or state.batch_in_epoch >= len(epoch_batches) // setup.world_size
    return stop_reason, epoch_done, window


def _train_step(run: _Run, batch: Batch, window: _Window) -> bool:
    """One update from a batch (already on the device): forward and backward (split on CUDA
    out-of-memory), clipping, the optimizer and schedule steps, the EMA. A non-finite loss or
    gradient would poison the weights: that update is skipped and counted. Returns whether the
    update was applied (with fused AdamW: attempted; the device decides)."""
    state, tc = run.state, run.config.train

    def forward_backward(part: Batch, weight: float) -> torch.Tensor:
        return _forward_backward(run.training_forward, part, weight, run.config, run.tokenizer.blank,
                                 run.specaug_rng, run.use_bf16)

    loss = _backward_splitting_on_oom(forward_backward, batch, run.model, run.device, state, run.split_on_oom)
    if (state.step + 1) % tc.log_every == 0:  # this update will be logged
        window.grad_norms = _layer_grad_norms(run.layer_groups)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip).detach()
    # All ranks decide alike (the flag is all-reduced), or their weights would part.
    nonfinite = (~(torch.isfinite(grad_norm) & torch.isfinite(loss))).float()
    all_reduce_max(nonfinite, run.setup)
    if run.skip_on_device:
        # The step runs always and applies nothing when found_inf is 1 (GradScaler's mechanism);
        # the schedule advances over a skipped batch, which is counted at the next log line.
        run.optimizer.found_inf = nonfinite
        _optimizer_step(run)
        if run.ema_model is not None:
            _update_ema(run.ema_params, run.params, tc.ema_decay, nonfinite)
        window.add(loss, grad_norm, tc.grad_clip, nonfinite)
        return True
    if bool(nonfinite):
        state.skipped_batches += 1
        log.warning("non-finite loss or gradient in epoch %d batch %d: update skipped (%d so far)",
                    state.epoch, state.batch_in_epoch, state.skipped_batches)
        return False
    _optimizer_step(run)
    if run.ema_model is not None:
        _update_ema(run.ema_params, run.params, tc.ema_decay)
    window.add(loss, grad_norm, tc.grad_clip)
    return True


def _optimizer_step(run: _Run) -> None:
    run.optimizer.step()
    run.scheduler.step()
    run.state.step += 1


def _log_window(run: _Run, window: _Window, bar: tqdm) -> None:
    """The window's "train" record to metrics.jsonl (rank 0) and the progress bar."""
    elapsed = time.monotonic() - run.session_start + run.elapsed_before
    record = window.flush(run.state, run.scheduler.get_last_lr()[0], elapsed, run.layer_groups, run.setup)
    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
    if run.metrics is not None:
        run.metrics.write(json.dumps(record) + "\n")
        run.metrics.flush()


def _stop_reason(run: _Run) -> str:
    """Why the run stops after this update (train.max_steps, max_minutes, max_cpu_minutes), or ""."""
    state, tc, setup = run.state, run.config.train, run.setup
    # With several ranks, the time limits are checked at log steps only, to keep collectives rare;
    # the ranks agree on the stop.
    check_time = setup.world_size == 1 or state.step % tc.log_every == 0
    if tc.max_steps and state.step >= tc.max_steps:
        return f"max_steps={tc.max_steps} reached"
    if tc.max_minutes and check_time and any_rank(state.elapsed >= 60 * tc.max_minutes, setup, run.device):
        return f"max_minutes={tc.max_minutes} reached"
    if tc.max_cpu_minutes and check_time and any_rank(state.cpu_seconds >= 60 * tc.max_cpu_minutes, setup, run.device):
        return f"max_cpu_minutes={tc.max_cpu_minutes} reached"
    return ""


# --------------------------------------------------------------------------- validate and save


def _validate_and_save(run: _Run, window: _Window, epoch_done: bool) -> None:
    """After an epoch (or a stop within one): rank 0 validates, then last.pt, best.pt when the dev
    WER/CER improved, and epoch<N>.pt; the other ranks wait in the collectives and learn the best
    scores."""
    state, setup = run.state, run.setup
    if epoch_done:
        state.epoch += 1
        state.batch_in_epoch = 0
    improved = setup.is_main and _validate_and_log(run)
    _save_last(run, window)  # the other ranks wait in here while rank 0 validates
    if setup.is_main:
        if improved:
            if run.ema_model is not None:
                save_checkpoint(run.best_path, _weights_payload(run))  # the averaged weights, for decoding
            else:
                copy_atomic(run.last_path, run.best_path)
            log.info("new best dev WER %.2f%%: saved %s", state.best_wer, run.best_path)
        if epoch_done and run.config.train.keep_epoch_checkpoints:
            _save_epoch_checkpoint(run.out_dir, state.epoch, _weights_payload(run), run.config.train.keep_epoch_checkpoints)
    if setup.active:  # ... and here while it saves
        state.best_wer, state.best_cer = broadcast_from_main((state.best_wer, state.best_cer))


def _validate_and_log(run: _Run) -> bool:
    """Validate the weights in use (rank 0), log and record the result; returns whether the dev
    WER/CER improved (the state's best scores are then updated)."""
    state = run.state
    result = validate(run.eval_model, run.dev_set, run.tokenizer, run.device, run.config, run.dev_ids)
    result.update(type="valid", step=state.step, epoch=state.epoch, elapsed=round(state.elapsed, 1))
    run.metrics.write(json.dumps(result) + "\n")
    run.metrics.flush()
    log.info("validation after %d updates (epoch %d): loss %.3f, WER %.2f%%, CER %.2f%%%s",
             state.step, state.epoch, result["loss"], result["wer"], result["cer"],
             "".join(f"; {name} WER {r['wer']:.2f}% CER {r['cer']:.2f}%" for name, r in result.get("sets", {}).items()))
    improved = (result["wer"], result["cer"]) < (state.best_wer, state.best_cer)
    if improved:
        state.best_wer, state.best_cer = result["wer"], result["cer"]
    return improved


def _save_last(run: _Run, window: _Window) -> None:
    """Write last.pt (rank 0); every rank takes part, as each sends its RNG states."""
    window.settle(run.state)
    rng_states = gather_to_main(_get_rng_state(run.specaug_rng, run.device), run.setup)
    if not run.setup.is_main:
        return
    checkpoint = {
        "config": run.config.to_dict(),
        "tokenizer": run.tokenizer.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "state": run.state.__dict__.copy(),
        "rng": rng_states[0],
    }
    if run.setup.world_size > 1:
        checkpoint["rng_ranks"] = rng_states
    if run.ema_model is not None:
        checkpoint["ema"] = run.ema_model.state_dict()
    save_checkpoint(run.last_path, checkpoint)


def _weights_payload(run: _Run) -> dict[str, Any]:
    """best.pt (with EMA) and epoch<N>.pt: the weights validation used, no optimizer."""
    return {"config": run.config.to_dict(), "tokenizer": run.tokenizer.to_dict(), "model": run.eval_model.state_dict(),
            "state": run.state.__dict__.copy()}


def _finish(run: _Run, stop_reason: str) -> None:
    """The trace's final weights (ASR_TRAIN_TRACE_DIR) and the closing log line."""
    state, tc = run.state, run.config.train
    if run.trace is not None:
        torch.save(run.model.state_dict(), Path(run.trace.name).with_name(f"rank{run.setup.rank}.weights.pt"))
    log.info("done: %s; %d updates in %.1f min (%d skipped, %d out-of-memory splits); best dev WER %.2f%% CER %.2f%%; "
             "%.1f audio-hours per hour",
             stop_reason or f"{tc.epochs} epochs", state.step, state.elapsed / 60, state.skipped_batches,
             state.oom_splits, state.best_wer, state.best_cer, state.audio_seconds / max(state.elapsed, 1e-9))


# --------------------------------------------------------------------------- resume guard


def check_resume_config(saved: Config, new: Config, force: bool = False, path: str | Path = "last.pt") -> list[str]:
    """Whether a run trained with `saved` (the config in its last.pt at `path`) may continue with
    `new`. Returns the accepted differences as 'key old -> new' (for the log); raises a ValueError
    naming every differing key with both values when a change is refused:
    - a features/model/tokenizer key (RESUME_FIXED_SECTIONS): always, the weights would not fit;
    - any other key not in RESUME_SAFE_KEYS (and train.epochs made smaller), unless `force`."""
    changes = _weight_fitting_changes(saved, new)
    fixed = [c for c in changes if c[0].split(".")[0] in RESUME_FIXED_SECTIONS]
    guarded = [c for c in changes if c not in fixed and not _safe_to_change(*c)]
    describe = lambda items: ", ".join(f"{k} {old!r} -> {value!r}" for k, old, value in items)  # noqa: E731
    run = Path(path).parent
    if fixed:
        raise ValueError(
            f"{run}: cannot resume: {describe(fixed)} changes the model itself (the features, model and tokenizer "
            f"settings fix the shape and meaning of the weights in {path}), which no option can continue. Train it "
            f"in another folder (--out, or --exp-name in a recipe), or undo the change to continue this run")
    if guarded and not force:
        raise ValueError(
            f"{run}: the config differs from the one {path} was trained with: {describe(guarded)}. Resuming would "
            f"continue the old run, mixing both settings. Train in another folder (--out, or --exp-name in a "
            f"recipe) to start afresh with them, or add --force-resume to continue this run with the new values. "
            f"(Safe to change when resuming: {', '.join(RESUME_SAFE_KEYS)}, and train.epochs upwards)")
    return [f"{k} {old!r} -> {value!r}" for k, old, value in changes]


def _apply_schedule_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                             tc: Any) -> None:
    """After loading their states from a checkpoint: the optimizer and schedule follow this run's
    train.lr and train.weight_decay (the states hold the values they were saved with, which would
    silently win after --force-resume), and the current learning rate is that of this run's schedule
    (e.g. stretched by more train.epochs) at the current step. With unchanged settings this sets the
    very values that were loaded, so an exact resume stays exact."""
    scheduler.base_lrs = [tc.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = tc.lr
        group["weight_decay"] = tc.weight_decay
        group["lr"] = tc.lr * factor(scheduler.last_epoch)


def _weight_fitting_changes(saved: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """_config_changes from the config weights were trained with (`saved`) to `new`, once `new`
    takes the saved pretrained encoder when it names none: the weights keep the encoder they were
    trained on, and building the model then checks that the encoder found here is that one."""
    if saved.features.encoder_id and not new.features.encoder_id:
        new.features.encoder_id = saved.features.encoder_id
    return _config_changes(saved.to_dict(), new.to_dict())


def _config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """[(section.key, saved value, new value)] for every option that differs."""
    return [(f"{section}.{key}", saved.get(section, {}).get(key), value)
            for section, values in new.items() for key, value in values.items()
            if saved.get(section, {}).get(key) != value]


def _safe_to_change(key: str, old: Any, new: Any) -> bool:
    if key in RESUME_GROWING_KEYS:
        return new >= old
    return key in RESUME_SAFE_KEYS or f"{key.split('.')[0]}.*" in RESUME_SAFE_KEYS


def validate(model: CTCModel, dev_set: SpeechDataset, tokenizer: Tokenizer, device: torch.device, config: Config,
             sets: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Dev loss (mean per utterance) and greedy WER/CER, from one pass over length-sorted batches;
    with `sets` (name -> utterance ids) of more than one dev set, also each set's, under "sets"."""
    model.eval()
    total_loss = 0.0
    hyps: dict[str, str] = {}
    sampler = BucketBatchSampler(dev_set.durations, config.decode.batch_seconds, shuffle=False)
    with torch.inference_mode():
        for indices in sampler.epoch_batches(0):
            batch = collate([dev_set[i] for i in indices]).to(device)
            log_probs, out_lengths = model(batch.waves, batch.wave_lengths)
            loss = _ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths, tokenizer.blank, reduction="sum")
            total_loss += float(loss)
            for i, ids in zip(indices, greedy_decode(log_probs, out_lengths, tokenizer.blank)):
                hyps[dev_set.utts[i].id] = tokenizer.decode(ids)
    refs = {u.id: u.text for u in dev_set.utts}
    report = score(refs, hyps)
    model.train()
    result = {"loss": total_loss / max(len(dev_set), 1), "wer": round(report.wer, 3), "cer": round(report.cer, 3)}
    if sets and len(sets) > 1:
        reports = {name: score({i: refs[i] for i in ids}, {i: hyps[i] for i in ids}) for name, ids in sets.items()}
        result["sets"] = {name: {"wer": round(r.wer, 3), "cer": round(r.cer, 3)} for name, r in reports.items()}
    return result


class _TrainingForward(torch.nn.Module):
    """The training forward pass (features -> SpecAugment -> encoder, under autocast) as a module of
    its own: DistributedDataParallel synchronizes the gradients of what runs through the forward()
    of the module it wraps, and CTCModel.forward has no SpecAugment."""

    def __init__(self, model: CTCModel, specaug: SpecAugmentConfig, specaug_rng: torch.Generator, use_bf16: bool):
        super().__init__()
        self.model = model
        self.specaug = specaug
        self.specaug_rng = specaug_rng
        self.use_bf16 = use_bf16

    def forward(self, waves: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S), (B,) -> log-probs (B, T', vocab) float32, (B,) output frames."""
        return _augmented_forward(self.model, waves, wave_lengths, self.specaug, self.specaug_rng, self.use_bf16)


def _augmented_forward(
    model: CTCModel, waves: torch.Tensor, wave_lengths: torch.Tensor, specaug: SpecAugmentConfig,
    specaug_rng: torch.Generator, use_bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(device_type=waves.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        feats, feat_lengths = model.features(waves, wave_lengths)
        feats = spec_augment(feats, feat_lengths, specaug, generator=specaug_rng)
        return model.encode(feats, feat_lengths)


def _forward_backward(
    model: torch.nn.Module, batch: Batch, weight: float, config: Config, blank: int, specaug_rng: torch.Generator,
    use_bf16: bool,
) -> torch.Tensor:
    """Forward and backward of (part of) a batch: the gradient of weight x its mean loss accumulates
    into .grad. Returns that weighted loss, detached. `model` is a CTCModel, or a _TrainingForward
    (possibly inside DistributedDataParallel), which brings its own SpecAugment settings and generator."""
    if isinstance(model, CTCModel):
        log_probs, out_lengths = _augmented_forward(
            model, batch.waves, batch.wave_lengths, config.specaug, specaug_rng, use_bf16)
    else:
        log_probs, out_lengths = model(batch.waves, batch.wave_lengths)
    loss = _ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths, blank,
                     per_token=config.train.loss_norm == "token")
    if weight != 1.0:
        loss = loss * weight
    loss.backward()
    return loss.detach()


def _backward_splitting_on_oom(
    forward_backward, batch: Batch, model: torch.nn.Module, device: torch.device, state: TrainState,
    split: bool = True,
) -> torch.Tensor:
    """Gradients of the batch-mean loss in model's .grad, by forward_backward(part, weight); returns
    that mean loss (detached).

    On CUDA out-of-memory the gradients are cleared, memory is freed and the whole batch is redone
    in twice as many parts, each part's mean loss weighted by its share of the batch, so the
    accumulated gradient is the full batch's (up to float rounding; dropout and SpecAugment draw
    new masks). A single utterance that does not fit is an error, and so is any out-of-memory
    without `split` (distributed training, where every part would be a collective step)."""
    size = batch.waves.shape[0]
    parts = 1
    while True:
        model.zero_grad(set_to_none=True)
        try:
            pieces = _split_batch(batch, parts)
            return sum(forward_backward(p, 1.0 if parts == 1 else p.waves.shape[0] / size) for p in pieces)
        except torch.cuda.OutOfMemoryError as e:
            if not split:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory in epoch {state.epoch} batch {state.batch_in_epoch} ({size} utterances, "
                    f"{batch.waves.shape[1]} padded samples each); batches are not split under distributed training: "
                    f"lower train.max_batch_seconds ({e})") from None
            if parts >= size:
                raise
        # Outside the except block, so that the traceback's references to activations are gone.
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        parts = min(2 * parts, size)
        state.oom_splits += 1
        log.warning("CUDA out of memory in epoch %d batch %d (%d utterances, %d padded samples each): retrying "
                    "in %d parts (%d out-of-memory splits so far)", state.epoch, state.batch_in_epoch, size,
                    batch.waves.shape[1], parts, state.oom_splits)


def _split_batch(batch: Batch, parts: int) -> list[Batch]:
    """`parts` consecutive sub-batches, each cut to its own longest waveform and transcript."""
    if parts == 1:
        return [batch]
    pieces = []
    for rows in torch.arange(batch.waves.shape[0]).tensor_split(parts):
        if not len(rows):
            continue
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        wave_lengths, label_lengths = batch.wave_lengths[lo:hi], batch.label_lengths[lo:hi]
        pieces.append(Batch(
            batch.waves[lo:hi, : int(wave_lengths.max())], wave_lengths,
            batch.labels[lo:hi, : max(int(label_lengths.max()), 1)], label_lengths, batch.indices[lo:hi],
        ))
    return pieces


LOSS_NORMS = ("utterance", "token")


def _ctc_loss(log_probs, out_lengths, labels, label_lengths, blank: int, reduction: str = "mean",
              per_token: bool = False) -> torch.Tensor:
    """CTC loss in float32. 'mean' is the per-utterance sum averaged over the batch, so the gradient
    scale does not depend on transcript length conventions; with `per_token`, each utterance's loss
    is divided by its transcript length first (train.loss_norm: token). Infeasible alignments (more
    labels than frames) give 0 rather than inf."""
    if per_token:
        losses = F.ctc_loss(log_probs.float().transpose(0, 1), labels, out_lengths, label_lengths,
                            blank=blank, reduction="none", zero_infinity=True)
        losses = losses / label_lengths.clamp_min(1).to(losses.dtype)
        return losses.mean() if reduction == "mean" else losses.sum()
    loss = F.ctc_loss(
        log_probs.float().transpose(0, 1), labels, out_lengths, label_lengths,
        blank=blank, reduction="sum", zero_infinity=True,
    )
    return loss / labels.shape[0] if reduction == "mean" else loss


def _drop_metrics_after(path: Path, state: TrainState) -> None:
    """Forget the metrics a killed run logged after its last checkpoint: the resumed run logs
    those steps again."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in records if (r["step"], r["epoch"]) <= (state.step, state.epoch)]
    if len(kept) < len(records):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, path)


def _lr_lambda(warmup: int, total: int, final_ratio: float):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Window:
    """Metrics between log lines: sums kept on the device, so the loop never waits on the GPU per
    step, and host-side timings and batch shapes."""

    def __init__(self, device: torch.device, state: TrainState):
        self.device = device
        self.reset(state)

    def reset(self, state: TrainState) -> None:
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self.loss, self.grad_norm, self.applied, self.clipped, self.skipped = zero(), zero(), zero(), zero(), zero()
        self.steps = 0  # add() calls
        self.clipped_settled = 0  # clipped updates of this window already counted in the state
        self.grad_norms: torch.Tensor | None = None  # per layer group, at the last log step
        self.data_wait = 0.0  # seconds spent waiting for the DataLoader
        self.padded = self.total = 0  # samples: padding and all, over the window's batches
        self.start = time.perf_counter()
        self.audio_start = state.audio_seconds

    def add_padding(self, batch: Batch) -> None:
        """Count a (host-side) batch's padding."""
        total = batch.waves.shape[0] * batch.waves.shape[1]
        self.total += total
        self.padded += total - int(batch.wave_lengths.sum())

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, grad_clip: float,
            nonfinite: torch.Tensor | None = None) -> None:
        """An applied update; with `nonfinite` (a 0-dim device flag) an update that may have been skipped."""
        if nonfinite is None:
            self.loss += loss.float()
            self.grad_norm += grad_norm.float()
            self.clipped += grad_norm > grad_clip
            self.applied += 1
        else:
            applied = nonfinite == 0
            self.loss += torch.where(applied, loss.float(), 0.0)
            self.grad_norm += torch.where(applied, grad_norm.float(), 0.0)
            self.clipped += applied & (grad_norm > grad_clip)
            self.applied += applied
            self.skipped += nonfinite
        self.steps += 1

    def settle(self, state: TrainState) -> None:
        """Move the clipped and skipped counts into the state (a host sync): before every checkpoint,
        so that the checkpoint holds them."""
        clipped, skipped = (int(v) for v in torch.stack([self.clipped, self.skipped]).tolist())
        self.clipped.zero_()
        self.skipped.zero_()
        self.clipped_settled += clipped
        state.clipped_total += clipped
        if skipped:
            state.skipped_batches += skipped
            log.warning("non-finite loss or gradient: %d updates skipped before update %d (%d so far)",
                        skipped, state.step, state.skipped_batches)

    def flush(self, state: TrainState, lr: float, elapsed: float, layer_groups: dict[str, list[torch.Tensor]],
              setup: DistributedSetup) -> dict:
        """The window's "train" record (a host sync; with several ranks, loss and padding over all)."""
        self.settle(state)
        seconds = time.perf_counter() - self.start
        summed = torch.stack([self.loss.double(), self.applied.double(),
                              torch.tensor(float(self.padded), dtype=torch.float64, device=self.device),
                              torch.tensor(float(self.total), dtype=torch.float64, device=self.device)])
        all_reduce_sum(summed, setup)
        loss_sum, applied, padded, total = summed.tolist()
        grad_norm_sum, applied_here = torch.stack([self.grad_norm.double(), self.applied.double()]).tolist()
        grad_norms = {} if self.grad_norms is None else dict(zip(layer_groups, self.grad_norms.tolist()))
        audio_hours = (state.audio_seconds - self.audio_start) / 3600
        record = {
            "type": "train", "step": state.step, "epoch": state.epoch, "lr": lr,
            "loss": loss_sum / applied if applied else math.nan,
            "grad_norm": grad_norm_sum / applied_here if applied_here else math.nan,
            "clipped": self.clipped_settled, "audio_hours_per_hour": audio_hours / max(seconds / 3600, 1e-9),
            "elapsed": round(elapsed, 1), "skipped_batches": state.skipped_batches,
            "clipped_total": state.clipped_total,
            "data_wait_share": self.data_wait / max(seconds, 1e-9),
            "padding_fraction": padded / total if total else 0.0,
            "peak_memory_mb": _peak_memory_mb(self.device),
            "grad_norms": grad_norms,
        }
        self.reset(state)
        return record


def _peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far: allocated on the GPU, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _layer_parameter_groups(model: CTCModel) -> dict[str, list[torch.Tensor]]:
    """The parameters by layer, for per-layer gradient norms: "subsampler", "rnn.0" (weight_ih_l0,
    weight_hh_l0, biases and their *_reverse), "rnn.1", ..., "output"."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        top, _, rest = name.partition(".")
        layer = re.search(r"_l(\d+)", rest) if top == "rnn" else None
        groups.setdefault(f"rnn.{layer.group(1)}" if layer else top, []).append(param)
    return groups


@torch.no_grad()
def _layer_grad_norms(groups: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """(len(groups),) the L2 norm of each group's gradients, computed on the device."""
    norms = []
    for params in groups.values():
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
        else:
            norms.append(torch.zeros((), device=params[0].device))
    return torch.stack(norms)


@torch.no_grad()
def _update_ema(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float,
                skipped: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * params, in place. With `skipped` (a 0-dim device flag, 1.0
    where the optimizer skipped the update) the average stays as it was then, decided on the device."""
    if skipped is None:
        torch._foreach_lerp_(ema, params, 1.0 - decay)
    else:
        weight = (1.0 - skipped) * (1.0 - decay)
        torch._foreach_lerp_(ema, params, [weight] * len(ema))


def _audio_seconds_of_update(train_set: SpeechDataset, batch: Batch, epoch_batches: list[list[int]], batch_in_epoch: int,
                          world_size: int) -> float:
    """Seconds of training audio in the update of this batch: its own, or with several ranks those of
    the batches all ranks train on at this step (batch_in_epoch x world_size onwards in the epoch)."""
    if world_size == 1:
        return sum(train_set.utts[i].duration for i in batch.indices)
    group = epoch_batches[batch_in_epoch * world_size : (batch_in_epoch + 1) * world_size]
    return sum(train_set.utts[i].duration for indices in group for i in indices)


def _save_epoch_checkpoint(out_dir: Path, epoch: int, payload: dict[str, Any], keep: int) -> None:
    """Write epoch<N>.pt and delete all but the `keep` latest of them."""
    path = out_dir / f"epoch{epoch}.pt"
    remove_stale_temp_files(path)
    save_checkpoint(path, payload)
    numbered = ((re.fullmatch(r"epoch(\d+)\.pt", p.name), p) for p in out_dir.glob("epoch*.pt"))
    found = sorted((int(m.group(1)), p) for m, p in numbered if m)
    for _, old in found[:-keep]:
        old.unlink(missing_ok=True)
    log.info("saved %s (keeping the last %d epoch checkpoints)", path, keep)


def _open_trace(rank: int):
    """The rank's batch trace file when ASR_TRAIN_TRACE_DIR is set (see the module docstring), else None."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return open(Path(folder) / f"rank{rank}.batches.jsonl", "a", encoding="utf-8")


def _rng_state_of_rank(payload: dict[str, Any], setup: DistributedSetup) -> dict | None:
    """This rank's RNG states from a checkpoint; None for a rank the checkpoint has none for (it was
    written by fewer processes): that rank keeps its fresh seed."""
    states = payload.get("rng_ranks")
    if states and len(states) == setup.world_size:
        return states[setup.rank]
    return payload["rng"] if setup.is_main else None


@torch.no_grad()
def _estimate_normalizer(model: CTCModel, dataset: SpeechDataset, device: torch.device, max_utts: int = 2000) -> None:
    """Global mean/std of the frontend's features over (up to max_utts of) the training set."""
    stats = RunningStats(model.frontend.dim)
    indices = list(range(len(dataset)))
    random.Random(0).shuffle(indices)
    for chunk in range(0, min(len(indices), max_utts), 32):
        batch = collate([dataset[i] for i in indices[chunk : chunk + 32]]).to(device)
        feats, lengths = model.frontend(batch.waves, batch.wave_lengths)
        stats.add(feats, lengths)
    mean, std = stats.mean_std()
    model.normalizer.set_stats(mean.to(device), std.to(device))
    log.info("feature normalization estimated on %d frames", stats.count)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_rng_state(specaug_rng: torch.Generator, device: torch.device | None = None) -> dict:
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


def _set_rng_state(state: dict, specaug_rng: torch.Generator, device: torch.device | None = None) -> None:
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


def _setup_logging(path: Path | None) -> None:
    """Log to <out>/train.log (path None: a rank other than 0, which logs only warnings, to the
    console); console output comes from the root logger that `asr` sets up."""
    logger = logging.getLogger("asr")
    logger.setLevel(logging.INFO if path is not None else logging.WARNING)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    if path is None:
        return
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)


def _to_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def plot_training(exp_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss, gradient norm (total and per layer) and dev WER/CER over updates from
    <exp_dir>/metrics.jsonl -> PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'asr[plot]'") from None
    exp_dir = Path(exp_dir)
    records = [json.loads(line) for line in open(exp_dir / "metrics.jsonl", encoding="utf-8") if line.strip()]
    train_rows = [r for r in records if r["type"] == "train"]
    valid_rows = [r for r in records if r["type"] == "valid"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    axes[0].plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    axes[0].plot([r["step"] for r in valid_rows], [r["loss"] for r in valid_rows], "o-", label="dev")
    axes[0].set(title="CTC loss per utterance", xlabel="update")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train_rows], [r["grad_norm"] for r in train_rows])
    axes[1].set(title="gradient norm (before clipping)", xlabel="update", yscale="log")
    layers = list(dict.fromkeys(name for r in train_rows for name in r.get("grad_norms") or {}))
    for name in layers:  # vanishing (falling towards the input) or exploding gradients show here
        rows = [r for r in train_rows if name in (r.get("grad_norms") or {})]
        axes[2].plot([r["step"] for r in rows], [r["grad_norms"][name] for r in rows], label=name)
    axes[2].set(title="gradient norm per layer (before clipping)", xlabel="update", yscale="log")
    if layers:
        axes[2].legend(fontsize="small")
    axes[3].plot([r["step"] for r in valid_rows], [r["wer"] for r in valid_rows], "o-", label="WER")
    axes[3].plot([r["step"] for r in valid_rows], [r["cer"] for r in valid_rows], "o-", label="CER")
    axes[3].set(title="dev error rate (greedy, %)", xlabel="update")
    axes[3].legend()
    fig.tight_layout()
    out = Path(out) if out else exp_dir / "training.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

