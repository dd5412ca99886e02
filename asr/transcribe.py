"""Transcribing audio files with a trained checkpoint: files or folders in, one result per file out.

A file that cannot be read is reported with its error and does not stop the others.

Files longer than `chunk_seconds` are streamed from disk in overlapping chunks, so memory does not
grow with their length. The chunks start on the encoder's frame grid; each chunk contributes its
output frames up to the middle of its overlap with the next one, and greedy CTC runs once over
the frames so joined, so no word is doubled or lost at a seam by text-level merging.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile
import torch

from .audio import AudioError, load_audio, to_mono_and_rate, unreadable
from .decode import transcribe_waves
from .model import CTCModel
from .text import CharTokenizer

AUDIO_EXTENSIONS = {".wav", ".flac", ".opus", ".ogg", ".mp3", ".sph", ".aiff", ".aif", ".au"}


@dataclass
class Transcript:
    path: str
    text: str = ""
    duration: float = 0.0
    error: str = ""  # non-empty when the file could not be transcribed


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the audio files below them (sorted). Missing paths are
    kept so that they are reported as errors in order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            files += found or [path]  # an empty folder stays, to be reported
        else:
            files.append(path)
    return files


def transcribe_files(
    model: CTCModel,
    tokenizer: CharTokenizer,
    paths: Sequence[str | os.PathLike],
    device: torch.device,
    batch_seconds: float = 300.0,
    progress: bool = False,
    chunk_seconds: float = 30.0,
    chunk_overlap: float = 4.0,
) -> list[Transcript]:
    """One Transcript per file, in the order of `expand_paths(paths)`. Files longer than
    `chunk_seconds` (0: none) are transcribed chunk by chunk with `transcribe_long`."""
    rate = model.feature_config.sample_rate
    if chunk_seconds:
        chunk_layout(model, chunk_seconds, chunk_overlap)  # bad options fail here, not per file
    is_long = (lambda path: not _shorter_than(path, chunk_seconds)) if chunk_seconds else None
    results, readable, waves, long_files = load_files(paths, rate, Transcript, defer=is_long)
    for result in long_files:
        try:
            result.text, result.duration = transcribe_long(
                model, tokenizer, Path(result.path), device, chunk_seconds, chunk_overlap, batch_seconds)
        except AudioError as e:
            result.error = str(e)
    for result, text in zip(readable, transcribe_waves(model, tokenizer, waves, device, batch_seconds, progress)):
        result.text = text
    return results


def load_files(
    paths: Sequence[str | os.PathLike],
    sample_rate: int,
    new_result: Callable[[str], Any] = Transcript,
    defer: Callable[[Path], bool] | None = None,
) -> tuple[list, list, list[torch.Tensor], list]:
    """Expand `paths` and read each audio file at `sample_rate`, one result object per path
    (`new_result(path)`, with .error/.duration set here). Returns (all results in order, the results of
    the files read, their waveforms, the results of files left unread because `defer(path)` was true)."""
    results, readable, waves, deferred = [], [], [], []
    for path in expand_paths(paths):
        result = new_result(str(path))
        results.append(result)
        if path.is_dir():
            result.error = f"{path}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
        elif defer is not None and defer(path):
            deferred.append(result)
        else:
            try:
                wave = load_audio(path, sample_rate)
            except AudioError as e:
                result.error = str(e)
                continue
            result.duration = wave.shape[0] / sample_rate
            readable.append(result)
            waves.append(wave)
    return results, readable, waves, deferred


def transcribe_long(
    model: CTCModel,
    tokenizer: CharTokenizer,
    path: str | os.PathLike,
    device: torch.device,
    chunk_seconds: float = 30.0,
    chunk_overlap: float = 4.0,
    batch_seconds: float = 300.0,
) -> tuple[str, float]:
    """(greedy transcript, duration in seconds) of one audio file of any length, read and decoded in
    chunks of `chunk_seconds` overlapping by `chunk_overlap`, a batch of chunks (at most
    `batch_seconds` of audio) at a time. Raises AudioError for a file that cannot be read."""
    chunk, hop, frame = chunk_layout(model, chunk_seconds, chunk_overlap)
    stitcher = FrameStitcher(hop // frame, (chunk - hop) // frame, tokenizer.blank)
    per_batch = max(1, int(batch_seconds // chunk_seconds))
    pending: list[torch.Tensor] = []
    samples = 0
    with torch.inference_mode():
        for k, (wave, last) in enumerate(read_chunks(path, model.feature_config.sample_rate, chunk, hop)):
            pending.append(wave)
            samples = k * hop + wave.shape[0]
            if len(pending) < per_batch and not last:
                continue
            lengths = torch.tensor([w.shape[0] for w in pending])
            padded = torch.nn.utils.rnn.pad_sequence(pending, batch_first=True).to(device)
            log_probs, out_lengths = model(padded, lengths.to(device))
            best, out_lengths = log_probs.argmax(dim=-1).cpu(), out_lengths.cpu()
            for i in range(len(pending)):
                stitcher.add(best[i, : out_lengths[i]], last=last and i == len(pending) - 1)
            pending = []
    return tokenizer.decode(stitcher.ids), samples / model.feature_config.sample_rate


def chunk_layout(model: CTCModel, chunk_seconds: float, chunk_overlap: float) -> tuple[int, int, int]:
    """(chunk, hop, frame) in samples at the model's rate: chunks start every `hop` samples and
    overlap by chunk - hop; both are whole numbers of encoder output frames of `frame` samples, so
    every chunk's frames fall on the same grid as the whole file's."""
    if chunk_overlap < 0 or chunk_seconds <= chunk_overlap:
        raise ValueError(f"chunk length ({chunk_seconds} s) must exceed the chunk overlap ({chunk_overlap} s) >= 0")
    features = model.feature_config
    frame = features.hop_length * model.config.subsampling_factor
    overlap = 2 * round(chunk_overlap * features.sample_rate / frame / 2) * frame  # even: the seam is its middle
    hop = max(1, round((chunk_seconds - chunk_overlap) * features.sample_rate / frame)) * frame
    return hop + overlap, hop, frame


class FrameStitcher:
    """Greedy CTC over the output frames of consecutive overlapping chunks: chunk k starts at
    frame k * hop_frames; each chunk's frames are taken from the middle of its overlap with the
    previous chunk to the middle of its overlap with the next, and repeats merge across seams
    exactly as within a chunk."""

    def __init__(self, hop_frames: int, overlap_frames: int, blank: int):
        self.hop_frames, self.half_overlap, self.blank = hop_frames, overlap_frames // 2, blank
        self.chunks = 0  # chunks added so far
        self.next_frame = 0  # first frame (of the whole file) not yet taken
        self.previous = blank  # label of the last frame taken
        self.ids: list[int] = []

    def add(self, labels: torch.Tensor, last: bool = False) -> None:
        """labels: (frames,) best label per output frame of the next chunk."""
        start = self.chunks * self.hop_frames
        end = labels.shape[0] if last else self.hop_frames + self.half_overlap
        taken = labels[max(self.next_frame - start, 0) : end]
        self.chunks += 1
        self.next_frame = start + end
        if taken.numel():
            previous = torch.cat([torch.tensor([self.previous], dtype=taken.dtype), taken[:-1]])
            self.ids += taken[(taken != previous) & (taken != self.blank)].tolist()
            self.previous = int(taken[-1])


def read_chunks(path: str | os.PathLike, sample_rate: int, chunk: int, hop: int) -> Iterator[tuple[torch.Tensor, bool]]:
    """Stream a file as mono chunks at `sample_rate`: (samples [k * hop, k * hop + chunk) of the
    file, is_last) for k = 0, 1, ... until the chunk that reaches the end. Only about one chunk of
    the file is held in memory. Each chunk is resampled from the file's rate with a margin around it,
    from a position on the resampler's own grid, so it equals that stretch of the whole resampled
    file (up to float rounding)."""
    path = Path(path)
    try:
        f = soundfile.SoundFile(str(path))
    except Exception as e:  # libsndfile raises several types for unreadable files
        raise unreadable(path, e) from None
    with f:
        native = f.samplerate
        g = math.gcd(native, sample_rate)
        unit_in, unit_out = native // g, sample_rate // g  # resampler grid: unit_in native = unit_out model samples
        margin = math.ceil(max(256, 16 * native / sample_rate) / unit_in) if native != sample_rate else 0
        buffer = np.zeros((0, f.channels), dtype=np.float32)
        buffer_start, eof, k = 0, False, 0  # buffer holds native samples from buffer_start on
        while True:
            a, b = k * hop, k * hop + chunk  # model samples wanted
            first_unit = max(a // unit_out - margin, 0)
            needed = (-(-b // unit_out) + margin) * unit_in + 1  # native samples to have read (+1: is there more?)
            while not eof and buffer_start + buffer.shape[0] < needed:
                block = _read_block(f, path, max(needed - buffer_start - buffer.shape[0], 1 << 16))
                eof = block.shape[0] == 0
                buffer = np.concatenate([buffer, block])
            total = buffer_start + buffer.shape[0]  # native samples read; the file's length once eof
            if total == 0:
                raise AudioError(f"{path}: the file holds no audio samples")
            piece = buffer[first_unit * unit_in - buffer_start : needed - buffer_start]
            wave = to_mono_and_rate(torch.from_numpy(piece), native, sample_rate)
            offset = first_unit * unit_out  # model sample at wave[0]
            length = -(-total * sample_rate // native)  # the whole file's length at the model rate (once eof)
            last = eof and length <= b
            yield wave[a - offset : min(b, length) - offset].contiguous(), last
            if last:
                return
            k += 1
            drop = max((k * hop) // unit_out - margin, 0) * unit_in - buffer_start
            buffer, buffer_start = buffer[drop:], buffer_start + drop


def _read_block(f: soundfile.SoundFile, path: Path, frames: int) -> np.ndarray:
    try:
        block = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise unreadable(path, e) from None
    if not np.isfinite(block).all():
        raise AudioError(f"{path}: the audio holds NaN or infinite samples")
    return block


def _shorter_than(path: Path, seconds: float) -> bool:
    """Whether the header says the file is at most `seconds` long (False when it cannot say)."""
    try:
        info = soundfile.info(str(path))
    except Exception:  # unreadable: load_audio reports it
        return True
    return 0 < info.frames < 2**62 and info.frames <= seconds * info.samplerate
