"""Training: CTC loss, AdamW with warm-up and cosine decay, gradient clipping, bf16 autocast on
CUDA, length-bucketed batches, validation (loss and greedy WER/CER) after each epoch, and
checkpoints `last.pt` / `best.pt` that `--resume` continues from.

Faults cost little: checkpoints are written atomically, also every `train.save_every_steps`
updates mid-epoch, and a resumed run continues at the exact batch with the same RNG states, so it
ends with the same weights as an uninterrupted one; a batch with a non-finite loss or gradient is
skipped and counted; on CUDA out-of-memory the batch is retried in smaller parts (same update).

Everything the run does goes to <out>/train.log; numbers go to <out>/metrics.jsonl (one JSON
object per log interval and per validation), which `asr plot` turns into a PNG.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import copy_atomic, read_checkpoint, remove_stale_temp_files, resolve_device, save_checkpoint
from .config import Config
from .data import Batch, BucketBatchSampler, SpeechDataset, Utterance, collate, total_hours
from .decode import greedy_decode
from .features import RunningStats, spec_augment
from .model import CTCModel, count_parameters
from .score import score
from .text import CharTokenizer

log = logging.getLogger("asr.train")


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    best_wer: float = math.inf
    best_cer: float = math.inf
    elapsed: float = 0.0  # training seconds over all sessions of this run
    skipped_batches: int = 0  # batches with a non-finite loss or gradient, not applied
    oom_splits: int = 0  # CUDA out-of-memory events, each answered by retrying the batch in more parts
    audio_seconds: float = 0.0  # training audio seen, over all epochs


def train(
    config: Config,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance],
    out_dir: str | Path,
    resume: bool = False,
) -> TrainState:
    """Train a model and write checkpoints under out_dir. Returns the final state."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(out_dir / "train.log")
    tc = config.train
    device = resolve_device(tc.device)
    _seed_everything(tc.seed)

    tokenizer = CharTokenizer()
    usable = [u for u in train_utts if u.duration <= tc.max_duration]
    if len(usable) < len(train_utts):
        log.info("left out %d training utterances longer than %.1f s", len(train_utts) - len(usable), tc.max_duration)
    if not usable:
        raise ValueError("no training utterances left (all longer than train.max_duration?)")
    dev_utts = list(dev_utts)[: tc.dev_max_utts or None]
    rate = config.features.sample_rate
    train_set = SpeechDataset(usable, tokenizer, rate, preload=tc.preload_audio)
    dev_set = SpeechDataset(dev_utts, tokenizer, rate, preload=tc.preload_audio)
    log.info("train: %d utterances, %.2f h; dev: %d utterances, %.2f h",
             len(usable), total_hours(usable), len(dev_utts), total_hours(dev_utts))

    model = CTCModel(config.features, config.model, len(tokenizer)).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    sampler = BucketBatchSampler(
        train_set.durations, tc.max_batch_seconds, tc.max_batch_size, shuffle=True, seed=tc.seed
    )
    steps_per_epoch = len(sampler.epoch_batches(0))
    # The schedule spans the planned epochs; max_steps and max_minutes only stop the run early, so
    # an interrupted run resumes on the same schedule.
    total_steps = tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup_steps, total_steps, tc.final_lr_ratio))
    specaug_rng = torch.Generator().manual_seed(tc.seed + 1)

    state = TrainState()
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    remove_stale_temp_files(last_path)  # left by a process killed while saving
    remove_stale_temp_files(best_path)
    if resume and last_path.is_file():
        payload = read_checkpoint(last_path, map_location="cpu")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        state = TrainState(**payload["state"])
        _set_rng_state(payload["rng"], specaug_rng)
        _drop_metrics_after(out_dir / "metrics.jsonl", state)
        log.info("resumed from %s at epoch %d, batch %d, step %d", last_path, state.epoch, state.batch_in_epoch, state.step)
    else:
        if resume:
            log.info("--resume: no %s yet, starting from scratch", last_path)
        _estimate_normalizer(model, train_set, device)

    log.info("model: %s, %.2f M parameters; device %s", config.model, count_parameters(model) / 1e6, device)
    log.info("%d batches per epoch (padding %.1f%% of frames), %d epochs, %d updates planned",
             steps_per_epoch, 100 * sampler.padding_fraction(), tc.epochs, total_steps)
    (out_dir / "config.yaml").write_text(_to_yaml(config.to_dict()))

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state.__dict__.copy(),
            "rng": _get_rng_state(specaug_rng),
        }

    use_bf16 = device.type == "cuda" and tc.precision == "bf16"
    metrics = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
    session_start = time.monotonic()
    elapsed_before = state.elapsed
    stop_reason = ""
    try:
        while state.epoch < tc.epochs and not stop_reason:
            sampler.set_epoch(state.epoch, state.batch_in_epoch)
            # Its own generator: creating the loader must not draw from the global RNG, or a resumed
            # run would see different dropout masks than an uninterrupted one.
            loader = DataLoader(
                train_set, batch_sampler=sampler, collate_fn=collate, num_workers=tc.num_workers,
                pin_memory=device.type == "cuda", prefetch_factor=4 if tc.num_workers else None,
                generator=torch.Generator().manual_seed(tc.seed + state.epoch),
            )
            model.train()
            window = _Window(device, state.audio_seconds)
            bar = tqdm(loader, total=len(sampler), desc=f"epoch {state.epoch + 1}/{tc.epochs}", unit="batch", leave=False)
            for batch in bar:
                batch = batch.to(device, non_blocking=True)
                def forward_backward(part: Batch, weight: float) -> torch.Tensor:
                    return _forward_backward(model, part, weight, config, tokenizer.blank, specaug_rng, use_bf16)

                loss = _backward_splitting_on_oom(forward_backward, batch, model, device, state)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                # A non-finite loss or gradient would poison the weights: skip the update, count it.
                updated = bool(torch.isfinite(grad_norm) and torch.isfinite(loss))
                if updated:
                    optimizer.step()
                    scheduler.step()
                    state.step += 1
                    window.add(loss, grad_norm.detach(), grad_norm.detach() > tc.grad_clip)
                else:
                    state.skipped_batches += 1
                    log.warning("non-finite loss or gradient in epoch %d batch %d: update skipped (%d so far)",
                                state.epoch, state.batch_in_epoch, state.skipped_batches)
                state.batch_in_epoch += 1
                state.audio_seconds += sum(train_set.utts[i].duration for i in batch.indices)
                if state.step % tc.log_every == 0 and window.steps:
                    record = window.flush(state, scheduler.get_last_lr()[0], time.monotonic() - session_start + elapsed_before)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                state.elapsed = elapsed_before + time.monotonic() - session_start
                if updated and tc.save_every_steps and state.step % tc.save_every_steps == 0:
                    # Mid-epoch: a killed run resumes from here, at the next batch, losing < N updates.
                    save_checkpoint(last_path, checkpoint_payload())
                if tc.max_steps and state.step >= tc.max_steps:
                    stop_reason = f"max_steps={tc.max_steps} reached"
                elif tc.max_minutes and state.elapsed >= 60 * tc.max_minutes:
                    stop_reason = f"max_minutes={tc.max_minutes} reached"
                if stop_reason:
                    break
            bar.close()
            epoch_done = not stop_reason or state.batch_in_epoch >= steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.batch_in_epoch = 0
            result = validate(model, dev_set, tokenizer, device, config)
            result.update(type="valid", step=state.step, epoch=state.epoch, elapsed=round(state.elapsed, 1))
            metrics.write(json.dumps(result) + "\n")
            metrics.flush()
            log.info("validation after %d updates (epoch %d): loss %.3f, WER %.2f%%, CER %.2f%%",
                     state.step, state.epoch, result["loss"], result["wer"], result["cer"])
            improved = (result["wer"], result["cer"]) < (state.best_wer, state.best_cer)
            if improved:
                state.best_wer, state.best_cer = result["wer"], result["cer"]
            save_checkpoint(last_path, checkpoint_payload())
            if improved:
                copy_atomic(last_path, best_path)
                log.info("new best dev WER %.2f%%: saved %s", state.best_wer, best_path)
    finally:
        metrics.close()
    log.info("done: %s; %d updates in %.1f min (%d skipped, %d out-of-memory splits); best dev WER %.2f%% CER %.2f%%; "
             "%.1f audio-hours per hour",
             stop_reason or f"{tc.epochs} epochs", state.step, state.elapsed / 60, state.skipped_batches,
             state.oom_splits, state.best_wer, state.best_cer, state.audio_seconds / max(state.elapsed, 1e-9))
    return state


def validate(model: CTCModel, dev_set: SpeechDataset, tokenizer: CharTokenizer, device: torch.device, config: Config) -> dict:
    """Dev loss (mean per utterance) and greedy WER/CER, from one pass over length-sorted batches."""
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
    report = score({u.id: u.text for u in dev_set.utts}, hyps)
    model.train()
    return {"loss": total_loss / max(len(dev_set), 1), "wer": round(report.wer, 3), "cer": round(report.cer, 3)}


def _forward_backward(
    model: CTCModel, batch: Batch, weight: float, config: Config, blank: int, specaug_rng: torch.Generator,
    use_bf16: bool,
) -> torch.Tensor:
    """Forward and backward of (part of) a batch: the gradient of weight x its mean loss accumulates
    into .grad. Returns that weighted loss, detached."""
    with torch.autocast(device_type=batch.waves.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        feats, feat_lengths = model.features(batch.waves, batch.wave_lengths)
        feats = spec_augment(feats, feat_lengths, config.specaug, generator=specaug_rng)
        log_probs, out_lengths = model.encode(feats, feat_lengths)
    loss = _ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths, blank)
    if weight != 1.0:
        loss = loss * weight
    loss.backward()
    return loss.detach()


def _backward_splitting_on_oom(
    forward_backward, batch: Batch, model: torch.nn.Module, device: torch.device, state: TrainState
) -> torch.Tensor:
    """Gradients of the batch-mean loss in model's .grad, by forward_backward(part, weight); returns
    that mean loss (detached).

    On CUDA out-of-memory the gradients are cleared, memory is freed and the whole batch is redone
    in twice as many parts, each part's mean loss weighted by its share of the batch, so the
    accumulated gradient is the full batch's (up to float rounding; dropout and SpecAugment draw
    new masks). A single utterance that does not fit is an error."""
    size = batch.waves.shape[0]
    parts = 1
    while True:
        model.zero_grad(set_to_none=True)
        try:
            pieces = _split_batch(batch, parts)
            return sum(forward_backward(p, 1.0 if parts == 1 else p.waves.shape[0] / size) for p in pieces)
        except torch.cuda.OutOfMemoryError:
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


def _ctc_loss(log_probs, out_lengths, labels, label_lengths, blank: int, reduction: str = "mean") -> torch.Tensor:
    """CTC loss in float32. 'mean' is the per-utterance sum averaged over the batch, so the gradient
    scale does not depend on transcript length conventions. Infeasible alignments (more labels than
    frames) give 0 rather than inf."""
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
    """Metrics summed on the device between log lines, so the loop never waits on the GPU per step."""

    def __init__(self, device: torch.device, audio_seconds: float):
        self.device = device
        self.reset(audio_seconds)

    def reset(self, audio_seconds: float) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.clipped = torch.zeros((), device=self.device)
        self.steps = 0
        self.start = time.monotonic()
        self.audio_start = audio_seconds

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, clipped: torch.Tensor) -> None:
        self.loss += loss.float()
        self.grad_norm += grad_norm.float()
        self.clipped += clipped
        self.steps += 1

    def flush(self, state: TrainState, lr: float, elapsed: float) -> dict:
        seconds = time.monotonic() - self.start
        audio_hours = (state.audio_seconds - self.audio_start) / 3600
        record = {
            "type": "train", "step": state.step, "epoch": state.epoch, "lr": lr,
            "loss": float(self.loss) / self.steps, "grad_norm": float(self.grad_norm) / self.steps,
            "clipped": int(self.clipped), "audio_hours_per_hour": audio_hours / max(seconds / 3600, 1e-9),
            "elapsed": round(elapsed, 1), "skipped_batches": state.skipped_batches,
        }
        self.reset(state.audio_seconds)
        return record


@torch.no_grad()
def _estimate_normalizer(model: CTCModel, dataset: SpeechDataset, device: torch.device, max_utts: int = 2000) -> None:
    """Global mean/std of log-mel features over (up to max_utts of) the training set."""
    stats = RunningStats(model.feature_config.n_mels)
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


def _get_rng_state(specaug_rng: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "specaug": specaug_rng.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, specaug_rng: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    specaug_rng.set_state(state["specaug"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _setup_logging(path: Path) -> None:
    """Log to <out>/train.log; console output comes from the root logger that `asr` sets up."""
    logger = logging.getLogger("asr")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)


def _to_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def plot_training(exp_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss, gradient norm and dev WER/CER over updates from <exp_dir>/metrics.jsonl -> PNG."""
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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    axes[0].plot([r["step"] for r in valid_rows], [r["loss"] for r in valid_rows], "o-", label="dev")
    axes[0].set(title="CTC loss per utterance", xlabel="update")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train_rows], [r["grad_norm"] for r in train_rows])
    axes[1].set(title="gradient norm (before clipping)", xlabel="update", yscale="log")
    axes[2].plot([r["step"] for r in valid_rows], [r["wer"] for r in valid_rows], "o-", label="WER")
    axes[2].plot([r["step"] for r in valid_rows], [r["cer"] for r in valid_rows], "o-", label="CER")
    axes[2].set(title="dev error rate (greedy, %)", xlabel="update")
    axes[2].legend()
    fig.tight_layout()
    out = Path(out) if out else exp_dir / "training.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
