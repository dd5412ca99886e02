"""Reading audio files: any format libsndfile reads (WAV, FLAC, Ogg/Vorbis, Ogg/Opus, MP3 with
libsndfile >= 1.1, NIST SPHERE, ...), mixed down to mono and resampled to the model's rate; and the
loudness of audio frames, by which silence is told from sound (`frame_levels`, `SILENCE_DBFS`).

Files are decoded block by block (`BLOCK_FRAMES`), each block mixed down to mono and resampled as it
comes (`MonoResampler`), so memory holds the mono audio at the model's rate, never all channels at the
file's rate: 590 s of 8 channels at 96 kHz would be 1.8 GB as float32, at 16 kHz mono it is 38 MB.

Resampling is soxr's (libsoxr, "HQ"; librosa resamples with it too), in time and memory linear in the
audio for any pair of rates. torchaudio's sinc resampler, used before, builds a filter bank of
(new rate / g) x (old rate / g) taps for g = gcd of the two rates: 16000 x 44101 for a 44101 Hz file
(12 GB of peak memory and 26 s for 2 s of audio, issue 29). soxr streams give the same samples
whatever the block sizes (checked in tests/test_audio.py), so a file read in chunks is resampled
exactly as the whole file.

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
import soxr

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
    if frames <= 0 or frames >= UNKNOWN_LENGTH:
        frames = count_frames(path)
    return AudioInfo(sample_rate=int(info.samplerate), num_frames=int(frames), channels=int(info.channels))


def open_audio(path: str | os.PathLike) -> soundfile.SoundFile:
    """The file opened for reading by libsndfile; AudioError naming it when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        return soundfile.SoundFile(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError/TypeError on bad headers
        raise unreadable(path, e) from None


def count_frames(path: Path) -> int:
    """Frames in a file whose header does not state them, counted by decoding it block by block."""
    frames = 0
    with open_audio(path) as f:
        while (n := read_block(f, path, BLOCK_FRAMES).shape[0]) > 0:
            frames += n
    if frames == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return frames


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a whole file. Returns (samples, sample_rate), samples float32 of shape (frames,) or
    (frames, channels) as stored."""
    path = Path(path)
    with open_audio(path) as f:
        blocks = []
        while (block := read_block(f, path, BLOCK_FRAMES)).shape[0] > 0:
            blocks.append(block)
        rate = f.samplerate
    if not blocks:
        raise AudioError(f"{path}: the file holds no audio samples")
    samples = np.concatenate(blocks)
    return (samples[:, 0] if samples.shape[1] == 1 else samples), int(rate)


BLOCK_FRAMES = 1 << 16  # frames decoded at once: 2 MB per 8 channels as float32
UNKNOWN_LENGTH = 2**62  # libsndfile's frame count for a file whose header states no length

# Silence: an input, or a stretch of a long one, whose loudest frame (RMS over one output frame of
# the model, 20 ms for the shipped model) is below SILENCE_DBFS is not speech and gets no words; a
# short one skips the model. Speech is far louder: the quietest of 206 libri-other dev files has its
# loudest frame at -18.4 dBFS, of 2000 speechocean762 test files at -33.8 dBFS, while 10 s of +-1 LSB
# of 16-bit dither peak at -91.3 dBFS and a 1e-4 RMS noise floor at -79.1 dBFS (2026-12-04,
# scripts/silence_levels.py, benchmarks/RESULTS.md): over 20 dB of margin either side. Quieter
# recordings of real speech need Pipeline.silence_dbfs lowered (-inf turns the gate off).
SILENCE_DBFS = -55.0
# In a long input, a stretch whose loudest frame is this far below the input's loudest is a pause
# too (a noise floor between loud speech), so it is cut there and gets no words.
RELATIVE_SILENCE_DB = 50.0


def load_audio(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """Read a file as a mono float32 waveform at `sample_rate`. Returns shape (samples,)."""
    import torch

    return torch.from_numpy(read_mono(path, sample_rate))


def read_mono(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode a file block by block into a mono float32 waveform at `sample_rate`, shape (samples,):
    only the mono result is held, whatever the file's channels and rate."""
    path = Path(path)
    with open_audio(path) as f:
        resampler = MonoResampler(f.samplerate, sample_rate)
        pieces = []
        while True:
            block = read_block(f, path, BLOCK_FRAMES)
            pieces.append(resampler(block, last=block.shape[0] == 0))
            if block.shape[0] == 0:
                break
    if resampler.frames_in == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return np.concatenate(pieces)


def read_block(f: soundfile.SoundFile, path: Path, frames: int) -> np.ndarray:
    """The next (<= frames, channels) float32 samples of an open file; (0, channels) at its end.
    AudioError naming the file when libsndfile cannot decode them or they are not finite."""
    try:
        block = f.read(frames, dtype="float32", always_2d=True) if f.frames < UNKNOWN_LENGTH else _read_unsized(f, frames)
    except Exception as e:
        raise unreadable(path, e) from None
    if not np.isfinite(block).all():
        raise AudioError(f"{path}: the audio holds NaN or infinite samples")
    return block


def _read_unsized(f: soundfile.SoundFile, frames: int) -> np.ndarray:
    """f.read for a file whose header states no length (a FLAC written to a pipe): soundfile's read
    seeks to its position after every block, which libsndfile cannot do in such a file ("psf_fseek()
    failed"), so this calls libsndfile's sf_readf_float directly, which reads on without seeking."""
    out = np.empty((frames, f.channels), dtype=np.float32)
    got = soundfile._snd.sf_readf_float(f._file, soundfile._ffi.cast("float *", out.ctypes.data), frames)
    return out[:got]


class MonoResampler:
    """A stream of (frames, channels) or (frames,) float32 blocks at `rate` -> mono float32 at
    `sample_rate`, block by block (soxr HQ). The concatenated output is the same, sample for sample,
    however the input is cut into blocks: ceil(frames * sample_rate / rate) samples in all."""

    def __init__(self, rate: int, sample_rate: int):
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        self.rate, self.sample_rate, self.frames_in = rate, sample_rate, 0
        self.stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ") if rate != sample_rate else None

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mono = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        self.frames_in += mono.shape[0]
        if self.stream is None:
            return mono
        return self.stream.resample_chunk(mono, last=last)


def to_mono_at_rate(samples: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """samples: (samples,) or (samples, channels) at `rate` -> (samples',) mono float32 at `sample_rate`."""
    return MonoResampler(rate, sample_rate)(samples, last=True)


def to_mono_and_rate(wave: torch.Tensor, rate: int, sample_rate: int) -> torch.Tensor:
    """wave: (samples,) or (samples, channels) at `rate` -> (samples',) mono at `sample_rate`
    (`to_mono_at_rate` on a tensor)."""
    import torch

    return torch.from_numpy(to_mono_at_rate(wave.detach().cpu().numpy(), rate, sample_rate))


def frame_levels(wave: np.ndarray, frame: int) -> np.ndarray:
    """wave: (samples,) -> (ceil(samples / frame),) the RMS level of each frame of `frame` samples in
    dBFS (0 dB: a full-scale square wave; -inf: digital silence). The last frame may be shorter."""
    n = wave.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    squares = np.square(wave, dtype=np.float64)
    whole = n // frame
    power = squares[: whole * frame].reshape(whole, frame).mean(axis=1)
    if n > whole * frame:
        power = np.append(power, squares[whole * frame :].mean())
    with np.errstate(divide="ignore"):
        return (10 * np.log10(power)).astype(np.float32)


def unreadable(path: str | os.PathLike, error: Exception) -> AudioError:
    """The error for a file libsndfile cannot open or decode, naming the file and the reason: the
    operating system's when the file cannot be read at all (libsndfile says "System error."), else
    libsndfile's."""
    if not os.access(path, os.R_OK):
        return AudioError(f"{path}: cannot be read: permission denied")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return AudioError(f"{path}: cannot be read: {e.strerror or e}")
    lines = str(error).strip().splitlines()
    return AudioError(f"{path}: not a readable audio file ({lines[0] if lines else type(error).__name__})")
