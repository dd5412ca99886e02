"""The training loop, read top to bottom: `train` sets up (`_set_up`: data, model, optimizer,
schedule, resume), then per epoch `_train_one_epoch` (each batch one `_train_step`: forward/backward,
clipping, optimizer, EMA) and `_validate_and_save` (validation, last.pt, best.pt, epoch<N>.pt).

Everything the run does goes to <out>/train.log; numbers go to <out>/metrics.jsonl (metrics.py).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import resolve_device, save_checkpoint
from ..config import Config, TrainConfig
from ..data import Batch, BucketBatchSampler, SpeechDataset, Utterance, collate, total_hours
from ..files import copy_atomic, remove_stale_temp_files
from ..frontend.logmel import RunningStats
from ..model import CTCModel, count_parameters
from ..text import Tokenizer, build_tokenizer
from .distributed import (
    DistributedSetup, all_reduce_max, any_rank, broadcast_from_main, broadcast_weights, distributed_setup_from_env,
    gather_to_main, process_group, rank_device, rank_seed, wrap_ddp,
)
from .metrics import MetricsWindow, drop_metrics_after, layer_grad_norms, layer_parameter_groups, validate
from .resume import (check_out_dir, clear_run, load_init_weights, read_init_checkpoint, read_resume_checkpoint,
                     restore_checkpoint)
from .state import TrainState, get_rng_state, seed_everything
from .step import LOSS_NORMS, TrainingForward, backward_splitting_on_oom, forward_backward, update_ema

log = logging.getLogger("asr.training")

TRACE_ENV = "ASR_TRAIN_TRACE_DIR"


def train(
    config: Config,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance] | Mapping[str, Sequence[Utterance]],
    out_dir: str | Path,
    resume: bool = False,
    force_resume: bool = False,
    overwrite: bool = False,
) -> TrainState:
    """Train a model and write checkpoints under out_dir. Returns the final state.

    `dev_utts` is one dev set, or several by name ({"libri-dev": [...], "so762-test": [...]}): each is
    scored on its own after every epoch (metrics.jsonl `sets`), and best.pt is chosen by the WER
    over all of them together (train.dev_max_utts applies to each).

    With `resume`, continue from out_dir/last.pt if it exists, provided `config` matches the one it
    was trained with up to RESUME_SAFE_KEYS (`check_resume_config`); `force_resume` accepts other
    train/specaug changes too (never features, model or tokenizer ones).

    A folder that already holds a run (last.pt, best.pt, metrics.jsonl, epoch<N>.pt) is refused, before
    anything is read, unless the run is resumed or `overwrite` deletes it first (`check_out_dir`): a
    finished run's best.pt is never replaced silently by another run's.

    Under torchrun (WORLD_SIZE etc. set) this process is one rank of a DistributedDataParallel run."""
    check_out_dir(out_dir, resume or force_resume, overwrite)  # every rank, before rank 0 writes anything
    setup = distributed_setup_from_env()
    device = rank_device(setup, resolve_device(config.train.device))
    with process_group(setup, device):
        run = _set_up(config, train_utts, dev_utts, Path(out_dir), resume, setup, device, force_resume, overwrite)
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
    training_forward: torch.nn.Module  # TrainingForward, in DistributedDataParallel under torchrun
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
        self.layer_groups = layer_parameter_groups(self.model)
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
    overwrite: bool = False,
) -> _Run:
    """Everything before the first batch, in an order that fixes the random draws (a resumed or
    refactored run must draw exactly as before): check the resume, seed, data, model, optimizer,
    schedule, restore or estimate the normalizer, EMA copy, DDP wrapper; then open the logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = clear_run(out_dir) if overwrite and setup.is_main else []
    _setup_logging(out_dir / "train.log" if setup.is_main else None)
    if removed:
        log.info("--overwrite: deleted the earlier run's %s", ", ".join(p.name for p in removed))
    last_path, tc = out_dir / "last.pt", config.train
    payload = read_resume_checkpoint(last_path, config, force_resume) if resume and last_path.is_file() else None
    init = read_init_checkpoint(tc.init_from, config) if tc.init_from and payload is None else None
    _check_train_settings(tc)
    seed_everything(tc.seed)
    tokenizer, train_set, dev_set, dev_ids = _build_data(config, train_utts, dev_utts, setup)
    model = _build_model(config, tokenizer, device)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, tc), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    if tc.loss_norm not in LOSS_NORMS:
        raise ValueError(f"train.loss_norm must be one of {', '.join(LOSS_NORMS)}, not {tc.loss_norm!r}")
    sampler, scheduler = _build_schedule(tc, train_set, optimizer, setup)
    specaug_rng = torch.Generator().manual_seed(tc.seed + 1)
    if setup.rank:
        # Same initial weights on every rank (drawn above), but dropout and SpecAugment masks of their own.
        seed_everything(rank_seed(tc.seed, setup.rank))
        specaug_rng.manual_seed(rank_seed(tc.seed, setup.rank) + 1)
    if setup.is_main:
        remove_stale_temp_files(last_path)  # left by a process killed while saving
        remove_stale_temp_files(out_dir / "best.pt")
    if payload is not None:
        state = restore_checkpoint(payload, last_path, tokenizer, model, optimizer, scheduler, specaug_rng, setup,
                                   device, tc)
        if setup.is_main:
            drop_metrics_after(out_dir / "metrics.jsonl", state)
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batch_in_epoch, state.step)
    else:
        state = TrainState(world_size=setup.world_size)
        if resume:
            log.info("--resume: no %s yet, starting from scratch", last_path)
        if init is not None:
            load_init_weights(model, tokenizer, init, tc.init_from)  # its normalizer comes with its weights
        elif setup.is_main:
            _estimate_normalizer(model, train_set, device)
    if setup.active:
        broadcast_weights(model)  # rank 0's normalizer statistics (and weights) on every rank
    ema_model = _ema_copy(model, payload, tc.ema_decay, last_path)
    del payload, init
    use_bf16 = device.type == "cuda" and tc.precision == "bf16"
    training_forward: torch.nn.Module = TrainingForward(model, config.specaug, specaug_rng, use_bf16)
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


def parameter_groups(model: CTCModel, tc: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the head, and (when the frontend trains, e.g. fine-tuned
    Whisper blocks) the frontend at train.lr x train.frontend_lr_scale. Each group's "lr_scale" is
    what the schedule multiplies train.lr by; one group when the frontend has nothing to train, as
    before this option, so older last.pt optimizer states still load."""
    frontend = [p for p in model.frontend.parameters() if p.requires_grad]
    trained = {id(p) for p in frontend}
    head = [p for p in model.parameters() if id(p) not in trained]
    groups = [{"params": head, "lr": tc.lr, "lr_scale": 1.0}]
    if frontend:
        groups.append({"params": frontend, "lr": tc.lr * tc.frontend_lr_scale, "lr_scale": tc.frontend_lr_scale})
    return groups


def _check_train_settings(tc: TrainConfig) -> None:
    if not 0.0 <= tc.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {tc.ema_decay}")
    if tc.keep_epoch_checkpoints < 0:
        raise ValueError(f"train.keep_epoch_checkpoints must be 0 (none) or more, got {tc.keep_epoch_checkpoints}")
    if tc.frontend_lr_scale < 0:
        raise ValueError(f"train.frontend_lr_scale must be 0 (frontend not updated) or more, got {tc.frontend_lr_scale}")


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
    if not train_utts:
        raise ValueError("no training utterances: the training manifests hold no entries")
    if not usable:
        raise ValueError(f"no training utterances left: all {len(train_utts)} are longer than train.max_duration "
                         f"({tc.max_duration:g} s; the shortest lasts {min(u.duration for u in train_utts):.1f} s); "
                         "raise train.max_duration or cut the recordings into shorter segments")
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
    if hasattr(model.frontend, "use_cache"):  # a pretrained encoder: its frozen part runs once per utterance
        cache = config.train.feature_cache
        model.frontend.use_cache(os.path.expanduser(cache) if cache else None)
        trained = sum(p.numel() for p in model.frontend.parameters())
        log.info("encoder %s, frozen%s; its frozen part's outputs are cached in memory%s", config.features.encoder_id,
                 f" but for {trained:,} trained parameters" if trained else "", f" and in {cache}" if cache else "")
    return model


def _build_schedule(
    tc: TrainConfig, train_set: SpeechDataset, optimizer: torch.optim.Optimizer, setup: DistributedSetup,
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
    schedule = warmup_cosine(tc.warmup_steps, total_steps, tc.final_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return sampler, scheduler


def warmup_cosine(warmup: int, total: int, final_ratio: float) -> Callable[[int], float]:
    """The learning-rate factor at each update: linear warm-up over `warmup` updates to 1, then a
    cosine decay to `final_ratio` at update `total` (held there after it)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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


def _train_one_epoch(run: _Run) -> tuple[str, bool, MetricsWindow]:
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
    window = MetricsWindow(run.device, state)
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


def _train_step(run: _Run, batch: Batch, window: MetricsWindow) -> bool:
    """One update from a batch (already on the device): forward and backward (split on CUDA
    out-of-memory), clipping, the optimizer and schedule steps, the EMA. A non-finite loss or
    gradient would poison the weights: that update is skipped and counted. Returns whether the
    update was applied (with fused AdamW: attempted; the device decides)."""
    state, tc = run.state, run.config.train

    def forward_backward_part(part: Batch, weight: float) -> torch.Tensor:
        return forward_backward(run.training_forward, part, weight, run.config, run.tokenizer.blank,
                                 run.specaug_rng, run.use_bf16)

    loss = backward_splitting_on_oom(forward_backward_part, batch, run.model, run.device, state, run.split_on_oom)
    if (state.step + 1) % tc.log_every == 0:  # this update will be logged
        window.grad_norms = layer_grad_norms(run.layer_groups)
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
            update_ema(run.ema_params, run.params, tc.ema_decay, nonfinite)
        window.add(loss, grad_norm, tc.grad_clip, nonfinite)
        return True
    if bool(nonfinite):
        state.skipped_batches += 1
        log.warning("non-finite loss or gradient in epoch %d batch %d: update skipped (%d so far)",
                    state.epoch, state.batch_in_epoch, state.skipped_batches)
        return False
    _optimizer_step(run)
    if run.ema_model is not None:
        update_ema(run.ema_params, run.params, tc.ema_decay)
    window.add(loss, grad_norm, tc.grad_clip)
    return True


def _optimizer_step(run: _Run) -> None:
    run.optimizer.step()
    run.scheduler.step()
    run.state.step += 1


def _log_window(run: _Run, window: MetricsWindow, bar: tqdm) -> None:
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


def _validate_and_save(run: _Run, window: MetricsWindow, epoch_done: bool) -> None:
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


def _save_last(run: _Run, window: MetricsWindow) -> None:
    """Write last.pt (rank 0); every rank takes part, as each sends its RNG states."""
    window.settle(run.state)
    rng_states = gather_to_main(get_rng_state(run.specaug_rng, run.device), run.setup)
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
