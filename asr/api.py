"""The Python API: `asr.load()` gives a Recognizer, `recognizer.transcribe(audio)` gives Results.

    import asr
    model = asr.load()                      # the default model (asr.transcribe.default_model_path)
    result = model.transcribe("speech.wav")
    result.text, result.duration, [(w.word, w.start, w.end, w.confidence) for w in result.words]

Everything goes through the stage modules: `asr.checkpoint.load_model` loads the model,
`asr.decode.decode_settings` picks the decoder (the checkpoint's, then decode.yaml next to it, then
the arguments), and `asr.align.transcribe_files_detailed` transcribes and aligns (long files in
chunks). Arrays are written to a temporary WAV file at their own rate and take the same path, so
an array and the same samples in a file give the same result.

Word confidence (`Word.confidence`, 0..1) is the mean, over the frames that the CTC forced alignment
of the transcript gives to the word's units (characters or BPE pieces; blank frames excluded), of
the posterior probability of the unit aligned to that frame (`asr.align.word_timings`). It is 1 when
the model is certain of every frame of the word and falls towards 0 as the model spreads its
probability over other labels; a word whose frames all have posterior 0.5 gets 0.5.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import soundfile
import torch

from .align import transcribe_files_detailed
from .audio import AudioError
from .checkpoint import load_model, resolve_device
from .decode import decode_settings, decoder_from_settings
from .transcribe import default_model_path

AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, tuple]  # a path, samples, or (samples, rate)


@dataclass
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float  # seconds
    confidence: float  # 0..1, see the module docstring


@dataclass
class Result:
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0  # seconds of audio
    path: str | None = None  # the file transcribed; None for an array

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recognizer:
    """A loaded model with its tokenizer and decoder. Build it with `asr.load`."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 decoder: str | None = None, beam_size: int | None = None, lm: str | None = None,
                 lexicon: str | None = None, batch_seconds: float | None = None,
                 chunk_seconds: float | None = None, chunk_overlap: float | None = None):
        self.path = Path(path) if path is not None else default_model_path()
        self.device = resolve_device(str(device))
        self.model, self.tokenizer, config = load_model(self.path, self.device)
        self.settings = decode_settings(config.decode, self.path, decoder=decoder, beam_size=beam_size, lm=lm,
                                        lexicon=lexicon)
        self.decoder = decoder_from_settings(self.settings, self.tokenizer, self.device)
        self.batch_seconds = batch_seconds or self.settings.batch_seconds
        self.chunk_seconds = self.settings.chunk_seconds if chunk_seconds is None else chunk_seconds
        self.chunk_overlap = self.settings.chunk_overlap if chunk_overlap is None else chunk_overlap

    @property
    def sample_rate(self) -> int:
        """The rate the model runs at; audio at any other rate is resampled to it."""
        return self.model.feature_config.sample_rate

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None,
                   progress: bool = False) -> Result | list[Result]:
        """One input -> a Result; a list of inputs -> a list of Results in the same order, batched.

        An input is an audio file path, float samples (numpy array or torch tensor, (samples,) or
        (samples, channels), at `sample_rate`, default the model's rate), or a (samples, rate) tuple.
        Raises AudioError naming the first input that cannot be transcribed, ValueError for an
        input of the wrong kind."""
        single = not isinstance(audio, (list, tuple)) or _is_samples_with_rate(audio)
        items = [audio] if single else list(audio)
        with tempfile.TemporaryDirectory(prefix="asr-api-") as tmp:
            paths = [self._as_file(item, i, Path(tmp), sample_rate) for i, item in enumerate(items)]
            detailed = transcribe_files_detailed(self.model, self.tokenizer, paths, self.device, self.decoder,
                                                 self.batch_seconds, timestamps=True, progress=progress,
                                                 chunk_seconds=self.chunk_seconds, chunk_overlap=self.chunk_overlap)
        results = []
        for i, (item, path, d) in enumerate(zip(items, paths, detailed)):
            given = str(item) if isinstance(item, (str, os.PathLike)) else None
            if d.error:
                raise AudioError(d.error if given else d.error.replace(path, f"input {i} (samples)"))
            words = [Word(w.word, w.start, w.end, w.score) for w in d.words or []]
            results.append(Result(d.text, words, round(d.duration, 3), given))
        return results[0] if single else results

    def _as_file(self, item: AudioInput, index: int, tmp: Path, sample_rate: int | None) -> str:
        """A path for `item`: itself for a file, a float WAV written under `tmp` for samples."""
        if isinstance(item, (str, os.PathLike)):
            if Path(item).is_dir():
                raise ValueError(f"{item}: is a folder; pass the audio files in it")
            return str(item)
        if _is_samples_with_rate(item):
            item, sample_rate = item
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if not isinstance(item, np.ndarray):
            raise ValueError(f"input {index}: expected a file path, float samples or (samples, rate), "
                             f"not {type(item).__name__}")
        if not np.issubdtype(item.dtype, np.floating):
            raise ValueError(f"input {index}: samples must be floats in [-1, 1], not {item.dtype} "
                             "(divide 16-bit integers by 32768)")
        if item.ndim not in (1, 2):
            raise ValueError(f"input {index}: samples must have shape (samples,) or (samples, channels), not {item.shape}")
        path = tmp / f"input{index}.wav"
        # FLOAT keeps the samples exactly; libsndfile reads it back like any file.
        soundfile.write(path, np.ascontiguousarray(item, dtype=np.float32), int(sample_rate or self.sample_rate),
                        subtype="FLOAT")
        return str(path)


def _is_samples_with_rate(x: Any) -> bool:
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (np.ndarray, torch.Tensor))
            and isinstance(x[1], (int, np.integer)))


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", **options: Any) -> Recognizer:
    """A Recognizer for the checkpoint at `path` (None: the default model, $ASR_MODEL or the
    repository's models/en-whisper-tiny-bilstm-ctc.pt; FileNotFoundError says how to get one) on `device`
    ("cpu", "cuda", "auto"). Options: decoder, beam_size, lm, lexicon (as on `asr transcribe`),
    batch_seconds, chunk_seconds, chunk_overlap."""
    return Recognizer(path, device, **options)
