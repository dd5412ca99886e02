"""Log-mel features and global mean/variance normalization, batched and run on whatever device the
waveforms are on (the GPU during training), so no CPU worker computes them.

Shapes: waveforms (batch, samples), features (batch, frames, n_mels), lengths (batch,).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from . import FeatureConfig


class LogMel(nn.Module):
    """Waveforms -> log-mel features, the same filterbank as librosa's defaults (Slaney mel scale
    and area normalization), Hann window, centered frames: frames = samples // hop + 1.

    Each utterance is reflect-padded at its own ends, not at the end of the padded batch, so an
    utterance gets the same features whatever it is batched with.
    """

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.dim = config.n_mels
        self.hop_length = config.hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            n_mels=config.n_mels,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
            center=False,  # centering is done per utterance in forward()
        )

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.config.hop_length, rounding_mode="floor") + 1

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves: (B, S) float, lengths: (B,) samples -> (B, T, n_mels) log-mel, (B,) frames."""
        # The STFT runs in float32 even under autocast: bf16 has too few mantissa bits for power spectra.
        with torch.autocast(device_type=waves.device.type, enabled=False):
            power = self.mel(reflect_pad(waves.float(), lengths, self.config.n_fft // 2))  # (B, n_mels, T)
        feats = torch.log(power.clamp_min(1e-10)).transpose(1, 2)
        frames = self.num_frames(lengths)
        return feats, frames


def reflect_pad(waves: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, S) -> (B, S + 2 * pad): each row reflected about its own first and last valid sample
    (as numpy/librosa 'reflect'), by one gather, so no per-utterance loop runs on the device."""
    positions = torch.arange(-pad, waves.shape[1] + pad, device=waves.device).unsqueeze(0)  # (1, S')
    last = (lengths.to(waves.device) - 1).clamp_min(0).unsqueeze(1)  # (B, 1)
    source = positions.abs()
    source = torch.where(source > last, 2 * last - source, source)
    source = source.clamp(min=0).minimum(last)  # utterances shorter than `pad` reflect only once
    return waves.gather(1, source.expand(waves.shape[0], -1))


class GlobalNormalizer(nn.Module):
    """(x - mean) / std per feature dimension with statistics estimated once on the training set.
    They are buffers, so they travel inside the model's state dict and the checkpoint."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))


class RunningStats:
    """Accumulates per-dimension sum and sum of squares over the valid frames of many batches, in float64."""

    def __init__(self, dim: int):
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def add(self, feats: torch.Tensor, lengths: torch.Tensor) -> None:
        """feats: (B, T, D), lengths: (B,)"""
        mask = frame_mask(lengths, feats.shape[1]).unsqueeze(-1)
        valid = (feats.double() * mask).cpu()
        self.sum += valid.sum(dim=(0, 1))
        self.sum_sq += (valid * valid).sum(dim=(0, 1))
        self.count += int(lengths.sum())

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no frames were seen: cannot estimate feature statistics")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().float()


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
