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

Several GPUs (or CPU processes): `torchrun --nproc-per-node N -m asr.train <arguments of asr train>`.
Each process (rank) trains on every N-th batch of the epoch with DistributedDataParallel (gradients
averaged), so one update sees N batches; rank 0 alone estimates the feature normalizer (then sent to
the others), validates, and writes train.log, metrics.jsonl and checkpoints, while the others wait.
Out-of-memory splitting is off with N > 1: the ranks must run the same steps in lock-step. Resume
with the same N for an exact continuation. With N = 1 a run is bit for bit a plain `asr train` run.

Everything the run does goes to <out>/train.log; numbers go to <out>/metrics.jsonl (one JSON
object per log interval and per validation), which `asr plot` turns into a PNG.

Setting the environment variable ASR_TRAIN_TRACE_DIR makes every rank r write the batches it trains
on to <dir>/rank<r>.batches.jsonl ({"epoch", "batch", "indices"} per line, dataset positions) and its
final weights to <dir>/rank<r>.weights.pt: a check that ranks split the data and stay identical.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import (
    RESUME_ENTRIES, copy_atomic, read_checkpoint, remove_stale_temp_files, resolve_device, save_checkpoint,
    weights_mismatch,
)
from .config import Config, config_from_dict
from .data import Batch, BucketBatchSampler, SpeechDataset, Utterance, collate, total_hours
from .decode import greedy_decode
from .features import RunningStats, SpecAugmentConfig, spec_augment
from .model import CTCModel, count_parameters
from .score import score
from .text import Tokenizer, build_tokenizer

log = logging.getLogger("asr.train")

TRACE_ENV = "ASR_TRAIN_TRACE_DIR"
# How long ranks wait for each other, e.g. while rank 0 validates and saves (torch's NCCL default
# is 10 minutes, too short for a large dev set).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)

# The resume guard (`check_resume_config`): `--resume` continues a run only with the config its
# last.pt was trained with, except for these keys, which change when the run stops, how often it
# logs or saves, how it loads data or where it runs, never what it learns. ("section.*": all keys.)
RESUME_SAFE_KEYS = (
    "train.max_minutes", "train.max_cpu_minutes", "train.max_steps", "train.log_every", "train.feature_cache", "train.save_every_steps", "train.num_workers",
    "train.preload_audio", "train.device", "train.keep_epoch_checkpoints", "decode.*",
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
                         "torchrun --nproc-per-node N -m asr.train ...")
    return DistributedSetup(rank, world_size, local_rank, active=True)


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
    device = resolve_device(config.train.device)
    if setup.active and device.type == "cuda":
        if setup.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {setup.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                               "start at most one process per GPU")
        device = torch.device("cuda", setup.local_rank)  # one GPU per rank, whatever train.device names
        torch.cuda.set_device(device)
    started_group = setup.active and not dist.is_initialized()
    if started_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    try:
        return _train(config, train_utts, dev_utts, Path(out_dir), resume, setup, device, force_resume)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(
    config: Config, train_utts: Sequence[Utterance], dev_utts: Sequence[Utterance], out_dir: Path, resume: bool,
    setup: DistributedSetup, device: torch.device, force_resume: bool = False,
) -> TrainState:
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(out_dir / "train.log" if setup.is_main else None)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    payload: dict[str, Any] | None = None
    if resume and last_path.is_file():
        # Checked before any data is read: a refused resume costs nothing.
        payload = read_checkpoint(last_path, map_location="cpu", required=RESUME_ENTRIES)
        accepted = check_resume_config(config_from_dict(payload["config"], f"{last_path}: config"), config,
                                       force_resume, last_path)
        if accepted:
            log.warning("resuming %s with changed settings: %s", last_path, "; ".join(accepted))
    tc = config.train
    if not 0.0 <= tc.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {tc.ema_decay}")
    if tc.keep_epoch_checkpoints < 0:
        raise ValueError(f"train.keep_epoch_checkpoints must be 0 (none) or more, got {tc.keep_epoch_checkpoints}")
    _seed_everything(tc.seed)

    usable = [u for u in train_utts if u.duration <= tc.max_duration]
    if len(usable) < len(train_utts):
        log.info("left out %d training utterances longer than %.1f s", len(train_utts) - len(usable), tc.max_duration)
    if not usable:
        raise ValueError("no training utterances left (all longer than train.max_duration?)")
    tokenizer = build_tokenizer(config.tokenizer, [u.text for u in usable])  # BPE: trained here, deterministically
    dev_sets = dict(dev_utts) if isinstance(dev_utts, Mapping) else {"dev": list(dev_utts)}
    dev_sets = {name: list(utts)[: tc.dev_max_utts or None] for name, utts in dev_sets.items()}
    dev_utts = [u for utts in dev_sets.values() for u in utts]
    rate = config.features.sample_rate
    train_set = SpeechDataset(  # perturbed on the fly when speed_perturb / noise_prob ask for it; dev_set never
        usable, tokenizer, rate, preload=tc.preload_audio, speed_perturb=tc.speed_perturb, noise_prob=tc.noise_prob,
        noise_snr_db=tc.noise_snr_db, noise_manifest=tc.noise_manifest, seed=tc.seed,
    )
    dev_set = SpeechDataset(dev_utts, tokenizer, rate, preload=tc.preload_audio and setup.is_main)  # rank 0 validates
    log.info("train: %d utterances, %.2f h; dev: %d utterances, %.2f h",
             len(usable), total_hours(usable), len(dev_utts), total_hours(dev_utts))

    model = CTCModel(config.features, config.model, len(tokenizer)).to(device)
    if hasattr(model.frontend, "use_cache"):  # a frozen pretrained encoder: compute each utterance once
        model.frontend.use_cache(os.path.expanduser(tc.feature_cache) if tc.feature_cache else None)
        log.info("frozen encoder %s; its features are cached in memory%s", config.features.encoder_id,
                 f" and in {tc.feature_cache}" if tc.feature_cache else "")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    if tc.loss_norm not in LOSS_NORMS:
        raise ValueError(f"train.loss_norm must be one of {', '.join(LOSS_NORMS)}, not {tc.loss_norm!r}")
    sampler = BucketBatchSampler(
        train_set.durations, tc.max_batch_seconds, tc.max_batch_size, shuffle=True, seed=tc.seed,
        num_replicas=setup.world_size, rank=setup.rank, short_first_epochs=tc.short_first_epochs,
    )
    steps_per_epoch = len(sampler.epoch_batches(0)) // setup.world_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(sampler.epoch_batches(0))} batches per epoch cannot feed {setup.world_size} "
                         "processes: lower train.max_batch_seconds or use fewer processes")
    # The schedule spans the planned epochs; max_steps and max_minutes only stop the run early, so
    # an interrupted run resumes on the same schedule.
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, total_steps, tc.final_lr_ratio))
    specaug_rng = torch.Generator().manual_seed(tc.seed + 1)
    if setup.rank:
        # Same initial weights on every rank (drawn above), but dropout and SpecAugment masks of their own.
        _seed_everything(_rank_seed(tc.seed, setup.rank))
        specaug_rng.manual_seed(_rank_seed(tc.seed, setup.rank) + 1)

    state = TrainState(world_size=setup.world_size)
    if setup.is_main:
        remove_stale_temp_files(last_path)  # left by a process killed while saving
        remove_stale_temp_files(best_path)
    if payload is not None:
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
        if setup.is_main:
            _drop_metrics_after(out_dir / "metrics.jsonl", state)
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batch_in_epoch, state.step)
    else:
        if resume:
            log.info("--resume: no %s yet, starting from scratch", last_path)
        if setup.is_main:
            _estimate_normalizer(model, train_set, device)
    if setup.active:
        _broadcast_weights(model)  # rank 0's normalizer statistics (and weights) on every rank

    ema_model: CTCModel | None = None
    if tc.ema_decay:
        ema_model = copy.deepcopy(model).requires_grad_(False)
        if payload is not None and "ema" in payload:
            ema_model.load_state_dict(payload["ema"])
        elif payload is not None:
            log.warning("%s holds no averaged weights: train.ema_decay starts averaging from its weights", last_path)
    del payload
    ema_params, params = (list(ema_model.parameters()) if ema_model else []), list(model.parameters())
    eval_model = ema_model or model  # what validation, best.pt and epoch<N>.pt use

    use_bf16 = device.type == "cuda" and tc.precision == "bf16"
    training_forward: torch.nn.Module = _TrainingForward(model, config.specaug, specaug_rng, use_bf16)
    if setup.active:
        # Buffers (normalizer statistics, filterbank) never change: sent once above, not every step
        # (newer torch calls the option forward_sync_buffers).
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
        training_forward = DistributedDataParallel(
            training_forward, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
        )
    split_on_oom = setup.world_size == 1
    # Fused AdamW (CUDA) can skip an update on a flag that stays on the device: no host sync per step.
    skip_on_device = bool(optimizer.defaults.get("fused"))
    layer_groups = _layer_parameter_groups(model)

    log.info("model: %s, %.2f M parameters; device %s", config.model, count_parameters(model) / 1e6, device)
    if setup.active:
        log.info("distributed: %d processes (%s backend), each %d batches per epoch; out-of-memory batch splitting "
                 "is %s", setup.world_size, dist.get_backend(), steps_per_epoch,
                 "on" if split_on_oom else "off (ranks must stay in lock-step: lower train.max_batch_seconds if a "
                 "batch does not fit)")
    log.info("%d batches per epoch (padding %.1f%% of frames), %d epochs, %d updates planned",
             steps_per_epoch, 100 * sampler.padding_fraction(), tc.epochs, total_steps)
    if setup.is_main:
        (out_dir / "config.yaml").write_text(_to_yaml(config.to_dict()))

    def save_last(window: _Window) -> None:
        """Write last.pt (rank 0); every rank takes part, as each sends its RNG states."""
        window.settle(state)
        rng_states = _gather_to_main(_get_rng_state(specaug_rng, device), setup)
        if not setup.is_main:
            return
        checkpoint = {
            "config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state.__dict__.copy(),
            "rng": rng_states[0],
        }
        if setup.world_size > 1:
            checkpoint["rng_ranks"] = rng_states
        if ema_model is not None:
            checkpoint["ema"] = ema_model.state_dict()
        save_checkpoint(last_path, checkpoint)

    def weights_payload() -> dict[str, Any]:
        """best.pt (with EMA) and epoch<N>.pt: the weights validation used, no optimizer."""
        return {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": eval_model.state_dict(),
                "state": state.__dict__.copy()}

    def forward_backward(part: Batch, weight: float) -> torch.Tensor:
        return _forward_backward(training_forward, part, weight, config, tokenizer.blank, specaug_rng, use_bf16)

    metrics = open(out_dir / "metrics.jsonl", "a", encoding="utf-8") if setup.is_main else None
    trace = _open_trace(setup.rank)
    session_start, cpu_start = time.monotonic(), time.process_time()
    elapsed_before, cpu_before = state.elapsed, state.cpu_seconds
    stop_reason = ""
    try:
        while state.epoch < tc.epochs and not stop_reason:
            sampler.set_epoch(state.epoch, state.batch_in_epoch)
            train_set.set_epoch(state.epoch)  # speed/noise perturbation of this epoch (workers copy the dataset)
            # Its own generator: creating the loader must not draw from the global RNG, or a resumed
            # run would see different dropout masks than an uninterrupted one.
            loader = DataLoader(
                train_set, batch_sampler=sampler, collate_fn=collate, num_workers=tc.num_workers,
                pin_memory=device.type == "cuda", prefetch_factor=4 if tc.num_workers else None,
                generator=torch.Generator().manual_seed(tc.seed + state.epoch),
            )
            epoch_batches = sampler.epoch_batches(state.epoch)  # of all ranks: the audio an update sees
            model.train()
            window = _Window(device, state)
            bar = tqdm(total=len(sampler), desc=f"epoch {state.epoch + 1}/{tc.epochs}", unit="batch", leave=False,
                       disable=not setup.is_main)
            batches = iter(loader)
            while True:
                wait_start = time.perf_counter()
                batch = next(batches, None)
                window.data_wait += time.perf_counter() - wait_start
                if batch is None:
                    break
                window.add_padding(batch)
                if trace is not None:
                    trace.write(json.dumps({"epoch": state.epoch, "batch": state.batch_in_epoch,
                                            "indices": batch.indices}) + "\n")
                seconds = _audio_seconds_of_update(train_set, batch, epoch_batches, state.batch_in_epoch, setup.world_size)
                batch = batch.to(device, non_blocking=True)
                loss = _backward_splitting_on_oom(forward_backward, batch, model, device, state, split_on_oom)
                if (state.step + 1) % tc.log_every == 0:  # this update will be logged
                    window.grad_norms = _layer_grad_norms(layer_groups)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip).detach()
                # A non-finite loss or gradient would poison the weights: skip the update, count it. All
                # ranks decide alike (the flag is all-reduced), or their weights would part.
                nonfinite = (~(torch.isfinite(grad_norm) & torch.isfinite(loss))).float()
                if setup.world_size > 1:
                    dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
                if skip_on_device:
                    # The step runs always and applies nothing when found_inf is 1 (GradScaler's mechanism);
                    # the schedule advances over a skipped batch, which is counted at the next log line.
                    optimizer.found_inf = nonfinite
                    optimizer.step()
                    scheduler.step()
                    state.step += 1
                    if ema_model is not None:
                        _update_ema(ema_params, params, tc.ema_decay, nonfinite)
                    window.add(loss, grad_norm, tc.grad_clip, nonfinite)
                    updated = True
                else:
                    updated = not bool(nonfinite)
                    if updated:
                        optimizer.step()
                        scheduler.step()
                        state.step += 1
                        if ema_model is not None:
                            _update_ema(ema_params, params, tc.ema_decay)
                        window.add(loss, grad_norm, tc.grad_clip)
                    else:
                        state.skipped_batches += 1
                        log.warning("non-finite loss or gradient in epoch %d batch %d: update skipped (%d so far)",
                                    state.epoch, state.batch_in_epoch, state.skipped_batches)
                state.batch_in_epoch += 1
                state.audio_seconds += seconds
                bar.update(1)
                if state.step % tc.log_every == 0 and window.steps:
                    elapsed = time.monotonic() - session_start + elapsed_before
                    record = window.flush(state, scheduler.get_last_lr()[0], elapsed, layer_groups, setup)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                    if metrics is not None:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                state.elapsed = elapsed_before + time.monotonic() - session_start
                state.cpu_seconds = cpu_before + time.process_time() - cpu_start
                if updated and tc.save_every_steps and state.step % tc.save_every_steps == 0:
                    # Mid-epoch: a killed run resumes from here, at the next batch, losing < N updates.
                    save_last(window)
                if tc.max_steps and state.step >= tc.max_steps:
                    stop_reason = f"max_steps={tc.max_steps} reached"
                elif tc.max_minutes and (setup.world_size == 1 or state.step % tc.log_every == 0) and \
                        _any_rank(state.elapsed >= 60 * tc.max_minutes, setup, device):
                    # Ranks agree on the stop (checked at log steps only, to keep collectives rare).
                    stop_reason = f"max_minutes={tc.max_minutes} reached"
                elif tc.max_cpu_minutes and (setup.world_size == 1 or state.step % tc.log_every == 0) and \
                        _any_rank(state.cpu_seconds >= 60 * tc.max_cpu_minutes, setup, device):
                    stop_reason = f"max_cpu_minutes={tc.max_cpu_minutes} reached"
                if stop_reason:
                    break
            bar.close()
            epoch_done = not stop_reason or state.batch_in_epoch >= len(epoch_batches) // setup.world_size
            if epoch_done:
                state.epoch += 1
                state.batch_in_epoch = 0
            if setup.is_main:
                result = validate(eval_model, dev_set, tokenizer, device, config,
                                  {name: [u.id for u in utts] for name, utts in dev_sets.items()})
                result.update(type="valid", step=state.step, epoch=state.epoch, elapsed=round(state.elapsed, 1))
                metrics.write(json.dumps(result) + "\n")
                metrics.flush()
                log.info("validation after %d updates (epoch %d): loss %.3f, WER %.2f%%, CER %.2f%%%s",
                         state.step, state.epoch, result["loss"], result["wer"], result["cer"],
                         "".join(f"; {name} WER {r['wer']:.2f}% CER {r['cer']:.2f}%"
                                 for name, r in result.get("sets", {}).items()))
                improved = (result["wer"], result["cer"]) < (state.best_wer, state.best_cer)
                if improved:
                    state.best_wer, state.best_cer = result["wer"], result["cer"]
            save_last(window)  # the other ranks wait in here while rank 0 validates
            if setup.is_main:
                if improved:
                    if ema_model is not None:
                        save_checkpoint(best_path, weights_payload())  # the averaged weights, for decoding
                    else:
                        copy_atomic(last_path, best_path)
                    log.info("new best dev WER %.2f%%: saved %s", state.best_wer, best_path)
                if epoch_done and tc.keep_epoch_checkpoints:
                    _save_epoch_checkpoint(out_dir, state.epoch, weights_payload(), tc.keep_epoch_checkpoints)
            if setup.active:  # ... and here while it saves
                state.best_wer, state.best_cer = _broadcast_from_main((state.best_wer, state.best_cer))
    finally:
        if metrics is not None:
            metrics.close()
        if trace is not None:
            trace.close()
    if trace is not None:
        torch.save(model.state_dict(), Path(trace.name).with_name(f"rank{setup.rank}.weights.pt"))
    log.info("done: %s; %d updates in %.1f min (%d skipped, %d out-of-memory splits); best dev WER %.2f%% CER %.2f%%; "
             "%.1f audio-hours per hour",
             stop_reason or f"{tc.epochs} epochs", state.step, state.elapsed / 60, state.skipped_batches,
             state.oom_splits, state.best_wer, state.best_cer, state.audio_seconds / max(state.elapsed, 1e-9))
    return state


def check_resume_config(saved: Config, new: Config, force: bool = False, path: str | Path = "last.pt") -> list[str]:
    """Whether a run trained with `saved` (the config in its last.pt at `path`) may continue with
    `new`. Returns the accepted differences as 'key old -> new' (for the log); raises a ValueError
    naming every differing key with both values when a change is refused:
    - a features/model/tokenizer key (RESUME_FIXED_SECTIONS): always, the weights would not fit;
    - any other key not in RESUME_SAFE_KEYS (and train.epochs made smaller), unless `force`."""
    if saved.features.encoder_id and not new.features.encoder_id:
        # The run keeps the pretrained encoder it was trained on; building the model then checks that
        # the encoder found on this machine is that one.
        new.features.encoder_id = saved.features.encoder_id
    changes = _config_changes(saved.to_dict(), new.to_dict())
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
        if setup.world_size > 1:
            dist.all_reduce(summed)
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


def _rank_seed(seed: int, rank: int) -> int:
    return seed + 1_000_003 * rank


def _rng_state_of_rank(payload: dict[str, Any], setup: DistributedSetup) -> dict | None:
    """This rank's RNG states from a checkpoint; None for a rank the checkpoint has none for (it was
    written by fewer processes): that rank keeps its fresh seed."""
    states = payload.get("rng_ranks")
    if states and len(states) == setup.world_size:
        return states[setup.rank]
    return payload["rng"] if setup.is_main else None


def _broadcast_weights(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank, in place."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def _gather_to_main(value: Any, setup: DistributedSetup) -> list[Any]:
    """[value of rank 0, of rank 1, ...] on rank 0 (an empty list elsewhere); [value] without ranks."""
    if setup.world_size == 1:
        return [value]
    gathered: list[Any] | None = [None] * setup.world_size if setup.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered or []


def _broadcast_from_main(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, setup: DistributedSetup, device: torch.device) -> bool:
    """True on every rank when `flag` holds on any rank."""
    if setup.world_size == 1:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


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


if __name__ == "__main__":
    # `torchrun --nproc-per-node N -m asr.train <arguments of asr train>` (or python -m asr.train ...)
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
