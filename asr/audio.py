"""Reading audio files: any format libsndfile reads (WAV, FLAC, Ogg/Vorbis, Ogg/Opus, MP3 with
libsndfile >= 1.1, NIST SPHERE, ...), mixed down to mono and resampled to the model's rate.

torchaudio.load is not used: since torchaudio 2.9 it needs torchcodec, which is one more native
dependency that users then fail to install. soundfile ships libsndfile in its wheels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import soundfile

if TYPE_CHECKING:  # imported where resampling needs it: reading and checking audio works without torch
    import torch


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, length and channel count from the file header, without decoding the audio."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        info = soundfile.info(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError/TypeError on bad headers
        raise unreadable(path, e) from None
    frames = info.frames
    # Some containers (Ogg, MP3) do not state their length reliably; decode to count then.
    if frames <= 0 or frames >= 2**62:
        frames = read_audio(path)[0].shape[0]
    return AudioInfo(sample_rate=int(info.samplerate), num_frames=int(frames), channels=int(info.channels))


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a whole file. Returns (samples, sample_rate), samples float32 of shape (frames,) or
    (frames, channels) as stored."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:
        raise unreadable(path, e) from None
    if samples.size == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: the audio holds NaN or infinite samples")
    return samples, int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Read a file as a mono float32 waveform at `sample_rate`. Returns shape (samples,)."""
    import torch

    samples, rate = read_audio(path)
    return to_mono_and_rate(torch.from_numpy(np.ascontiguousarray(samples)), rate, sample_rate)


def to_mono_and_rate(wave: torch.Tensor, rate: int, sample_rate: int) -> torch.Tensor:
    """wave: (samples,) or (samples, channels) at `rate` -> (samples',) mono at `sample_rate`
    (torchaudio's sinc resampler)."""
    import torchaudio.functional as AF

    if wave.dim() == 2:
        wave = wave.mean(dim=1)
    if rate != sample_rate:
        wave = AF.resample(wave, orig_freq=rate, new_freq=sample_rate)
    return wave.contiguous()


def unreadable(path: str | os.PathLike, error: Exception) -> AudioError:
    """The error for a file libsndfile cannot open or decode, naming the file and libsndfile's reason."""
    lines = str(error).strip().splitlines()
    return AudioError(f"{path}: not a readable audio file ({lines[0] if lines else type(error).__name__})")
