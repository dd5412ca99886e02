"""The Python API: `asr.load()` gives a Recognizer, `recognizer.transcribe(audio)` gives Results.

    import asr
    model = asr.load()                      # the default model (asr.transcribe.default_model_path)
    result = model.transcribe("speech.wav")
    result.text, result.duration, [(w.word, w.start, w.end, w.confidence) for w in result.words]

Everything goes through the stage modules: `asr.checkpoint.load_model` loads the model,
`asr.decode.decode_settings` resolves the settings (the checkpoint's, then decode.yaml next to it,
then the arguments: the one order every caller uses), and `asr.transcribe.Pipeline` transcribes and
aligns (long inputs in chunks). Arrays go through the same steps as files, without a temporary file:
an array and the same samples in a file give the same result.

Word confidence (`Word.confidence`, 0..1) is the mean, over the frames that the CTC forced alignment
of the transcript gives to the word's units (characters or BPE pieces; blank frames excluded), of
the posterior probability of the unit aligned to that frame (`asr.align.word_timings`). It is 1 when
the model is certain of every frame of the word and falls towards 0 as the model spreads its
probability over other labels; a word whose frames all have posterior 0.5 gets 0.5.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from .align import Word
from .audio import AudioError
from .checkpoint import load_model, resolve_device
from .config import DecodeConfig
from .decode import decode_settings, decoder_from_settings
from .transcribe import Pipeline, TorchModel, Transcript, default_model_path

AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor, tuple]  # a path, samples, or (samples, rate)
Result = Transcript  # what `Recognizer.transcribe` returns (text, words, duration, path)
# Float samples lie in [-1, 1]; resampling, filtering and added noise overshoot that (tests add noise
# peaking at 2.4), 16-bit integer values given as floats by far: even audio 40 dB below full scale
# peaks above 300 as int16. Above this peak an array is refused rather than transcribed as noise.
MAX_FLOAT_PEAK = 16.0

__all__ = ["AudioInput", "Recognizer", "Result", "Word", "load"]


class Recognizer:
    """A loaded model with its tokenizer, decoder and settings, as a `Pipeline`. Build it with `asr.load`.

    Settings resolve once, in one order: the checkpoint's config < `decode_file` (default: the
    decode.yaml next to the checkpoint) < the options given here (None: not given)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 decode_file: str | os.PathLike | None = None, nbest: int = 1, **options: Any):
        self.path = Path(path) if path is not None else default_model_path()
        self.device = resolve_device(str(device))
        self.model, self.tokenizer, config = load_model(self.path, self.device)
        unknown = sorted(set(options) - set(DecodeConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; decode options are "
                            f"{', '.join(DecodeConfig.__dataclass_fields__)}")
        self.settings: DecodeConfig = decode_settings(config.decode, self.path, decode_file, **options)
        self.decoder = decoder_from_settings(self.settings, self.tokenizer, self.device, nbest=nbest)
        self.pipeline = Pipeline(TorchModel(self.model, self.device), self.tokenizer, self.decoder,
                                 self.settings.batch_seconds, self.settings.chunk_seconds, self.settings.chunk_overlap)

    def ready(self) -> "Recognizer":
        """Wait until the decoder can search: beam-lm builds its LM and lexicon trie in a process of its
        own while the model loads (asr.decode.FlashlightDecoder); raises what building them raised
        (a bad lexicon line, an unreadable LM). `asr.load` returns a ready Recognizer."""
        ready = getattr(self.decoder, "ready", None)
        if ready is not None:
            ready()
        return self

    def close(self) -> None:
        """Stop the decoder's processes (beam-lm), if any; a later transcription searches in this process."""
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()

    @property
    def sample_rate(self) -> int:
        """The rate the model runs at; audio at any other rate is resampled to it."""
        return self.model.feature_config.sample_rate

    def transcribe(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None,
                   progress: bool = False) -> Transcript | list[Transcript]:
        """One input -> a Transcript; a list of inputs -> a list of Transcripts in the same order, batched.

        An input is an audio file path, float samples in [-1, 1] (numpy array or torch tensor,
        (samples,) or (samples, channels), at `sample_rate`, default the model's rate), or a
        (samples, rate) tuple. Each Transcript has its text, words (start, end, confidence) and duration.

        Errors: one input that cannot be transcribed raises: AudioError for audio that cannot be read
        (naming the file, or "input 0 (samples)"), ValueError for an input of the wrong kind (not a
        path or float samples, channels first, beyond [-1, 1] as int16 values are, a rate <= 0). In a
        list, a bad item raises nothing: its Transcript has `error` set (that message) and empty
        text, and every other item is transcribed. Silence gives an empty text."""
        if sample_rate is not None and not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
            raise ValueError(f"sample_rate must be a positive number of samples per second, not {sample_rate!r}")
        single = not isinstance(audio, (list, tuple)) or _is_samples_with_rate(audio)
        items = [audio] if single else list(audio)
        inputs: list[str | tuple[np.ndarray, int]] = []
        rejected: dict[int, str] = {}  # input index -> why it is not transcribed
        for i, item in enumerate(items):
            try:
                inputs.append(self._as_input(item, i, sample_rate))
            except ValueError as e:
                if single:
                    raise
                rejected[i] = str(e)
        transcribed = iter(self.pipeline.transcribe(inputs, timestamps=True, progress=progress))
        results = [Transcript(error=rejected[i]) if i in rejected else next(transcribed) for i in range(len(items))]
        for result in results:
            if result.error and single:
                raise AudioError(result.error)
            result.duration = round(result.duration, 3)
        return results[0] if single else results

    def _as_input(self, item: AudioInput, index: int, sample_rate: int | None) -> str | tuple[np.ndarray, int]:
        """A pipeline input for `item`: the path of a file, (float32 samples, rate) for samples.
        ValueError naming the input for anything the model cannot take as it is."""
        if isinstance(item, (str, os.PathLike)):
            if Path(item).is_dir():
                raise ValueError(f"{item}: is a folder; pass the audio files in it")
            return str(item)
        if _is_samples_with_rate(item):
            item, sample_rate = item
            if sample_rate <= 0:
                raise ValueError(f"input {index}: sample rate {sample_rate}: must be a positive number of samples per second")
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
        if item.ndim == 2 and item.shape[1] > item.shape[0]:
            raise ValueError(f"input {index}: samples of shape {item.shape} look channels-first: {item.shape[1]} "
                             f"channels of {item.shape[0]} samples; pass (samples, channels), e.g. samples.T")
        peak = float(np.abs(item).max(initial=0.0)) if np.isfinite(item).all() else 0.0  # NaN: the pipeline says so
        if peak > MAX_FLOAT_PEAK:
            raise ValueError(f"input {index}: samples reach {peak:g}, but float samples lie in [-1, 1] "
                             "(these look like 16-bit integer values: divide by 32768)")
        return np.ascontiguousarray(item, dtype=np.float32), int(sample_rate or self.sample_rate)


def _is_samples_with_rate(x: Any) -> bool:
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], (np.ndarray, torch.Tensor))
            and isinstance(x[1], (int, np.integer)))


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", **options: Any) -> Recognizer:
    """A Recognizer for the checkpoint at `path` (None: the default model, $ASR_MODEL or the
    repository's models/en-whisper-tiny-bilstm-ctc.pt; FileNotFoundError says how to get one) on `device`
    ("cpu", "cuda", "auto"). Options: decode_file, nbest, and any decode setting (asr.config.DecodeConfig:
    decoder, beam_size, lm, lexicon, lm_weight, word_score, beam_threshold, batch_seconds,
    chunk_seconds, chunk_overlap), as on `asr transcribe`."""
    return Recognizer(path, device, **options).ready()
