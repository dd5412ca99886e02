"""Turning CTC outputs into text, and running a model over many utterances in length-sorted batches.

Shapes: log-probs (B, T, V), lengths (B,).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from .data import BucketBatchSampler
from .model import CTCModel
from .text import CharTokenizer


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. Returns label ids per utterance."""
    best = log_probs.argmax(dim=-1)  # (B, T)
    # Keep a frame when it differs from the previous one (repeats merge) and is not blank.
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != blank)
    best, keep, lengths = best.cpu(), keep.cpu(), lengths.cpu()
    return [best[i, : lengths[i]][keep[i, : lengths[i]]].tolist() for i in range(best.shape[0])]


@torch.inference_mode()
def transcribe_waves(
    model: CTCModel,
    tokenizer: CharTokenizer,
    waves: Sequence[torch.Tensor],
    device: torch.device,
    batch_seconds: float = 300.0,
    progress: bool = False,
) -> list[str]:
    """Greedy transcripts of mono waveforms (each (samples,) at the model's rate), in input order.

    Waveforms are grouped into batches of similar length (at most `batch_seconds` of padded audio)
    so little compute goes to padding.
    """
    rate = model.feature_config.sample_rate
    durations = [max(w.shape[0], 1) / rate for w in waves]
    sampler = BucketBatchSampler(durations, batch_seconds, shuffle=False)
    texts: list[str] = [""] * len(waves)
    batches = sampler.epoch_batches(0)
    for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress, leave=False):
        for index, text in zip(batch, _decode_batch(model, tokenizer, [waves[i] for i in batch], device)):
            texts[index] = text
    return texts


def _decode_batch(model: CTCModel, tokenizer: CharTokenizer, waves: list[torch.Tensor], device: torch.device) -> list[str]:
    lengths = torch.tensor([w.shape[0] for w in waves])
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device, non_blocking=True)
    log_probs, out_lengths = model(padded, lengths.to(device))
    return [tokenizer.decode(ids) for ids in greedy_decode(log_probs, out_lengths, tokenizer.blank)]
