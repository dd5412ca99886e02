"""Transcribing audio files with a trained checkpoint: files or folders in, one result per file out.

A file that cannot be read is reported with its error and does not stop the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .audio import AudioError, load_audio
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
) -> list[Transcript]:
    """One Transcript per file, in the order of `expand_paths(paths)`."""
    rate = model.feature_config.sample_rate
    results: list[Transcript] = []
    waves: list[torch.Tensor] = []
    readable: list[Transcript] = []
    for path in expand_paths(paths):
        result = Transcript(path=str(path))
        results.append(result)
        if path.is_dir():
            result.error = f"{path}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
            continue
        try:
            wave = load_audio(path, rate)
        except AudioError as e:
            result.error = str(e)
            continue
        result.duration = wave.shape[0] / rate
        waves.append(wave)
        readable.append(result)
    for result, text in zip(readable, transcribe_waves(model, tokenizer, waves, device, batch_seconds, progress)):
        result.text = text
    return results
