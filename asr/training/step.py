"""One update's arithmetic: the training forward pass (features -> SpecAugment -> encoder, bf16
autocast on CUDA), the CTC loss, backward with the batch split into parts on CUDA out-of-memory
(the same update), and the moving average of the weights (train.ema_decay)."""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import Config
from ..data import Batch
from ..frontend.specaug import SpecAugmentConfig, spec_augment
from ..model import CTCModel
from .state import TrainState

log = logging.getLogger("asr.training")


class TrainingForward(torch.nn.Module):
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


def forward_backward(
    model: torch.nn.Module, batch: Batch, weight: float, config: Config, blank: int, specaug_rng: torch.Generator,
    use_bf16: bool,
) -> torch.Tensor:
    """Forward and backward of (part of) a batch: the gradient of weight x its mean loss accumulates
    into .grad. Returns that weighted loss, detached. `model` is a CTCModel, or a TrainingForward
    (possibly inside DistributedDataParallel), which brings its own SpecAugment settings and generator."""
    if isinstance(model, CTCModel):
        log_probs, out_lengths = _augmented_forward(
            model, batch.waves, batch.wave_lengths, config.specaug, specaug_rng, use_bf16)
    else:
        log_probs, out_lengths = model(batch.waves, batch.wave_lengths)
    loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths, blank,
                    per_token=config.train.loss_norm == "token")
    if weight != 1.0:
        loss = loss * weight
    loss.backward()
    return loss.detach()


def backward_splitting_on_oom(
    forward_backward: Callable[[Batch, float], torch.Tensor], batch: Batch, model: torch.nn.Module,
    device: torch.device, state: TrainState, split: bool = True,
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


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, labels: torch.Tensor, label_lengths: torch.Tensor,
             blank: int, reduction: str = "mean", per_token: bool = False) -> torch.Tensor:
    """CTC loss in float32 (a 0-dim tensor) of log-probs (B, T, vocab) with (B,) valid frames against
    labels (B, L) with (B,) valid labels. 'mean' is the per-utterance sum averaged over the batch, so
    the gradient scale does not depend on transcript length conventions; with `per_token`, each
    utterance's loss is divided by its transcript length first (train.loss_norm: token). Infeasible
    alignments (more labels than frames) give 0 rather than inf."""
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


@torch.no_grad()
def update_ema(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float,
               skipped: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * params, in place. With `skipped` (a 0-dim device flag, 1.0
    where the optimizer skipped the update) the average stays as it was then, decided on the device."""
    if skipped is None:
        torch._foreach_lerp_(ema, params, 1.0 - decay)
    else:
        weight = (1.0 - skipped) * (1.0 - decay)
        torch._foreach_lerp_(ema, params, [weight] * len(ema))

