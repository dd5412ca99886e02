"""Transcription: audio in (files, folders, arrays), one `Transcript` per input out, by the same steps
for every caller: `asr transcribe`, `asr decode`, `asr.load().transcribe`, `asr serve`, the ONNX
runtime and scripts/peers.py all build a `Pipeline` and call `Pipeline.transcribe`.

Steps: read each input (a file's header once: a short file is read whole, a long one streamed) ->
mono at the model's rate -> the acoustic model on length-sorted batches (at most `batch_seconds` of
padded audio) -> the decoder -> word timings from a forced alignment -> `Transcript`. An input that
cannot be read is reported in its Transcript and does not stop the others.

Inputs longer than `chunk_seconds` are read in overlapping chunks, so memory for audio and
activations does not grow with their length (only the output log-probs do, ~14 MB per hour). The
chunks start on the encoder's frame grid; each chunk contributes its output frames up to the middle
of its overlap with the next one, so the joined frames are the whole input's (`FrameStitcher`). The
joined frames are then cut at pauses (`pause_segments`) into pieces of at most `chunk_seconds`, each
decoded and aligned on its own, so neither the search nor the alignment grows with the input.

This module imports no torch: the model step is an `AcousticModel`, either `TorchModel` (a CTCModel;
torch is imported there) or asr.serving.onnx_runtime.OnnxRecognizer (onnxruntime and numpy).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Protocol, Sequence, Union

import numpy as np
import soundfile
from tqdm import tqdm

from .align import Word, word_timings
from .audio import (BLOCK_FRAMES, RELATIVE_SILENCE_DB, SILENCE_DBFS, AudioError, MonoResampler, frame_levels, open_audio,
                    read_block, read_mono, to_mono_at_rate, unreadable)
from .decode import Decoder, GreedyDecoder, Hypothesis
from .text import Tokenizer

if TYPE_CHECKING:
    import torch

    from .model import CTCModel

AUDIO_EXTENSIONS = {".wav", ".flac", ".opus", ".ogg", ".mp3", ".sph", ".aiff", ".aif", ".au"}
# Audio shorter than this holds no word: the shortest recordings of FSDD (3000 single spoken digits,
# trimmed to the word) last 0.1435 s (measured, benchmarks/RESULTS.md); a 0.1 s file was transcribed
# as "si". Shorter files get an empty transcript and a warning (`min_audio_samples`).
MIN_SPEECH_SECONDS = 0.12

# A silence this long (quiet frames, Pipeline.quiet_frames) holds no word, but for its first and last
# SILENCE_MARGIN_SECONDS, where a CTC model may still emit the letters of the word beside it; shorter
# quiet stretches, such as a stop consonant's closure, are left to the model (Pipeline.blank_silences).
MIN_SILENCE_SECONDS = 1.0
SILENCE_MARGIN_SECONDS = 0.25
CERTAINLY_NOT = -80.0  # the log-prob of a letter inside a silence (e^-80: ~1e-35)

# An input: an audio file (or a folder of them), or float samples (samples,) or (samples, channels) with their rate.
AudioInput = Union[str, os.PathLike, "tuple[np.ndarray, int]"]


@dataclass
class Transcript:
    """What transcribing one input gives: the one result type of every caller."""

    path: str | None = None  # the file; None for samples
    text: str = ""
    duration: float = 0.0  # seconds of audio
    error: str = ""  # non-empty when the input could not be transcribed
    warning: str = ""  # non-empty when it was read but not transcribed (too short): text is ""
    words: list[Word] | None = None  # with timestamps: each word's start, end and confidence
    nbest: list[tuple[str, float]] | None = None  # (text, score), best first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AcousticModel(Protocol):
    """The model step of the pipeline: waveforms at its rate -> per-frame CTC log-probs."""

    sample_rate: int  # Hz of the waveforms it takes
    samples_per_frame: int  # input samples per output frame
    min_samples: int  # the shortest input that gives one output frame computed from audio alone

    def log_probs(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono waveforms (samples,) at sample_rate -> each one's (T, V) log-probs, run as one batch."""


class TorchModel:
    """A CTCModel on a device as the pipeline's AcousticModel: one padded batch per call, log-probs
    back on the CPU as float32."""

    def __init__(self, model: CTCModel, device: torch.device | str = "cpu"):
        import torch

        self.model, self.device = model, torch.device(device)
        self.sample_rate = model.feature_config.sample_rate
        self.samples_per_frame = model.samples_per_frame
        self.min_samples = model.min_samples()

    def log_probs(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            lengths = torch.tensor([w.shape[0] for w in waves])
            padded = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(w) for w in waves], batch_first=True)
            log_probs, out_lengths = self.model(padded.to(self.device, non_blocking=True), lengths.to(self.device))
            log_probs = log_probs.float().cpu().numpy()
        return [log_probs[i, :n] for i, n in enumerate(out_lengths.cpu().tolist())]


def min_audio_samples(acoustic: AcousticModel) -> int:
    """The shortest audio (samples at the model's rate) that is transcribed: enough for one output
    frame computed from audio alone and at least MIN_SPEECH_SECONDS."""
    return max(acoustic.min_samples, math.ceil(MIN_SPEECH_SECONDS * acoustic.sample_rate))


def too_short_warning(path: str | os.PathLike, samples: int, min_samples: int, sample_rate: int) -> str:
    """'' when `samples` suffice, else the warning naming the file (its transcript is left empty)."""
    if samples >= min_samples:
        return ""
    return (f"{path}: {samples} sample{'' if samples == 1 else 's'} ({samples / sample_rate:.3f} s) of audio, too short "
            f"to transcribe (this model needs at least {min_samples / sample_rate:.3f} s); transcript left empty")


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


def output_paths(files: Sequence[str | os.PathLike], out_dir: str | os.PathLike, suffix: str) -> dict[str, Path]:
    """Where the per-file outputs (`asr transcribe --out-dir`) of `files` (as `expand_paths` gives them) go: each
    file's path relative to the deepest folder holding them all, below `out_dir`, with `suffix` for
    its extension. So 'a/x.wav' and 'b/x.wav' give OUT/a/x.srt and OUT/b/x.srt, and the files of one
    folder keep their sub-folders. Keyed by str(file). Two files that would still share an output (x.wav
    and x.flac side by side) are a ValueError naming both, raised before anything is transcribed."""
    files = [Path(f) for f in files]
    if not files:
        return {}
    absolute = [Path(os.path.abspath(f)) for f in files]
    root = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    outputs: dict[str, Path] = {}
    taken: dict[Path, tuple[Path, Path]] = {}  # output -> (input as given, its absolute path)
    for given, full in zip(files, absolute):
        out = Path(out_dir) / full.relative_to(root).with_suffix(suffix)
        if out in taken and taken[out][1] != full:
            raise ValueError(f"{taken[out][0]} and {given} would both be written to {out}; rename one, or "
                             "transcribe them in separate runs")
        taken[out] = (given, full)
        outputs[str(given)] = out
    return outputs


def existing_outputs(outputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The `outputs` (from `output_paths`) that already exist: what a run would replace."""
    return [Path(p) for p in outputs if os.path.lexists(p)]


@dataclass
class Pipeline:
    """The one way from audio to transcripts: an acoustic model, its tokenizer, a decoder and the
    batching and chunking settings (asr.api.Recognizer resolves them: checkpoint < decode.yaml <
    explicit arguments)."""

    acoustic: AcousticModel
    tokenizer: Tokenizer
    decoder: Decoder
    batch_seconds: float = 300.0  # padded audio seconds per model batch
    chunk_seconds: float = 30.0  # longer inputs are read in chunks of this length (0: never)
    chunk_overlap: float = 4.0  # seconds shared by consecutive chunks
    # Inputs (and, in long inputs, stretches between pauses) whose loudest frame is below silence_dbfs,
    # or in a long input relative_silence_db below its loudest frame, are silence: no words, and a
    # short one skips the model (asr.audio.SILENCE_DBFS says why these levels; -inf turns it off).
    silence_dbfs: float = SILENCE_DBFS
    relative_silence_db: float = RELATIVE_SILENCE_DB

    @classmethod
    def for_model(cls, model: CTCModel, tokenizer: Tokenizer, device: torch.device | str = "cpu",
                  decoder: Decoder | None = None, **settings: float) -> Pipeline:
        """The pipeline of a CTCModel held in memory (greedy unless `decoder` is given); settings:
        batch_seconds, chunk_seconds, chunk_overlap. asr.api.load builds one from a checkpoint path."""
        return cls(TorchModel(model, device), tokenizer, decoder or GreedyDecoder(tokenizer), **settings)

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive output frames."""
        return self.acoustic.samples_per_frame / self.acoustic.sample_rate

    def transcribe(self, inputs: Sequence[AudioInput], timestamps: bool = False, progress: bool = False,
                   on_done: Callable[[list[tuple[int, Transcript]]], None] | None = None) -> list[Transcript]:
        """One Transcript per input, in order, folders replaced by the audio files below them
        (`expand_paths`). `timestamps`: words with start, end and confidence. `progress`: bars on
        stderr. `on_done`: called with (position in the result list, Transcript) of the results that
        are final, after each model batch (and once for those that failed, were too short or silent),
        so a caller can save them before the rest are done (asr.shards). Bad chunk settings raise
        ValueError before anything is read."""
        if self.chunk_seconds:
            chunk_layout(self.acoustic, self.chunk_seconds, self.chunk_overlap)
        done = on_done or (lambda finished: None)
        results, short, long = self._read(inputs)
        queued = {id(result) for result, _, _ in short} | {id(result) for result, _, _ in long}
        for result in results:
            if id(result) not in queued:
                self._empty_unless_failed(result, timestamps)
        position = {id(result): i for i, result in enumerate(results)}
        done([(i, r) for i, r in enumerate(results) if id(r) not in queued])
        self._run_short(short, timestamps, progress, lambda batch: done([(position[id(r)], r) for r in batch]))
        for result, item, seconds in long:
            self._run_long(result, item, seconds, timestamps, progress)
            self._empty_unless_failed(result, timestamps)
            done([(position[id(result)], result)])
        return results

    @staticmethod
    def _empty_unless_failed(result: Transcript, timestamps: bool) -> None:
        """Silence, or audio too short for the model: an empty transcript (an error stays an error)."""
        if not result.error and result.nbest is None:
            result.nbest, result.words = [("", 0.0)], [] if timestamps else None

    def is_silent(self, levels: np.ndarray) -> bool:
        """Whether a mono wave's frame levels (frame_levels at the model's samples_per_frame) hold no
        frame at or above silence_dbfs."""
        return not (levels >= self.silence_dbfs).any()

    def _read(self, inputs: Sequence[AudioInput]):
        """(all results, [(result, wave at the model's rate, its frame levels)] for inputs read whole,
        [(result, input, header seconds)] for those to be read in chunks)."""
        results: list[Transcript] = []
        short: list[tuple[Transcript, np.ndarray, np.ndarray]] = []
        long: list[tuple[Transcript, Path | tuple[np.ndarray, int], float]] = []
        rate = self.acoustic.sample_rate
        for index, item in enumerate(_expand(inputs)):
            result = Transcript(str(item) if isinstance(item, Path) else None)
            results.append(result)
            try:
                seconds = _stated_seconds(item, index)
                if self.chunk_seconds and not 0 < seconds <= self.chunk_seconds:  # unknown length: streamed
                    long.append((result, item, seconds))
                    continue
                wave = read_mono(item, rate) if isinstance(item, Path) else to_mono_at_rate(*item, rate)
            except AudioError as e:
                result.error = str(e)
                continue
            result.duration = wave.shape[0] / rate
            result.warning = too_short_warning(_name(item, index), wave.shape[0], min_audio_samples(self.acoustic), rate)
            if result.warning:
                continue
            levels = frame_levels(wave, self.acoustic.samples_per_frame)  # for the silence gate, then quiet_frames
            if not self.is_silent(levels):
                short.append((result, wave, levels))
        return results, short, long

    def _run_short(self, short: list[tuple[Transcript, np.ndarray, np.ndarray]], timestamps: bool, progress: bool,
                   batch_done: Callable[[list[Transcript]], None]) -> None:
        """Inputs read whole: length-sorted batches through the model and the decoder; `batch_done`
        gets each batch's finished results. The decoder searches a batch in a second thread while the
        model runs the next one: the model's work (torch, CTranslate2) and a decoder that waits on its
        worker processes (beam-lm with workers) leave the GIL free, so the two overlap; the results are
        the same as one after the other."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-decode") as decoding:
            previous = None
            for batch, log_probs in self._model_batches([wave for _, wave, _ in short], progress):
                log_probs = [self.blank_silences(lp, self.quiet_frames(short[i][2], lp.shape[0]))
                             for i, lp in zip(batch, log_probs)]
                searching = decoding.submit(self.decode, log_probs)
                if previous is not None:
                    self._store(short, *previous, timestamps, batch_done)
                previous = batch, log_probs, searching
            if previous is not None:
                self._store(short, *previous, timestamps, batch_done)

    def _store(self, short: list[tuple[Transcript, np.ndarray, np.ndarray]], batch: list[int], log_probs: list[np.ndarray],
               searching: Future, timestamps: bool, batch_done: Callable[[list[Transcript]], None]) -> None:
        """A batch's decoded hypotheses (once `searching` is done) and word times into its Transcripts,
        then handed to `batch_done`."""
        for i, frames, nbest in zip(batch, log_probs, searching.result()):
            result = short[i][0]
            result.text = nbest[0].text if nbest else ""
            result.nbest = [(h.text, h.score) for h in nbest]
            if timestamps:
                result.words = _clip(word_timings(frames, result.text, self.tokenizer, self.frame_shift), result.duration)
        batch_done([short[i][0] for i in batch])

    def _model_batches(self, waves: Sequence[np.ndarray], progress: bool) -> Iterator[tuple[list[int], list[np.ndarray]]]:
        """The batched inference loop: (indices into `waves`, their (T, V) log-probs) per batch of
        similar length (`length_batches`, at most `batch_seconds` of padded audio)."""
        rate = self.acoustic.sample_rate
        batches = length_batches([max(w.shape[0], 1) / rate for w in waves], self.batch_seconds)
        for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress, leave=False):
            yield batch, self.acoustic.log_probs([waves[i] for i in batch])

    def _run_long(self, result: Transcript, item, seconds: float, timestamps: bool, progress: bool) -> None:
        """An input read in chunks: its joined frames decoded and aligned piece by piece, cut at pauses."""
        rate = self.acoustic.sample_rate
        try:
            frames, levels, result.duration = self._long_frames(item, progress, seconds)
        except AudioError as e:
            result.error = str(e)
            return
        result.warning = too_short_warning(result.path, round(result.duration * rate), min_audio_samples(self.acoustic), rate)
        if result.warning:  # only when chunk_seconds is shorter than that
            return
        quiet = self.quiet_frames(levels, frames.shape[0])
        if quiet.all():
            return
        frames = self.blank_silences(frames, quiet)
        max_frames = max(1, int(self.chunk_seconds / self.frame_shift))
        texts, score, words = [], 0.0, []
        segments = [(start, end) for start, end in pause_segments(
            frames, self.tokenizer.blank, max_frames, max_frames // 3, self.tokenizer.word_separator,
            self.tokenizer.word_start_ids, quiet) if not quiet[start:end].all()]  # silence between pauses: no words
        # All segments in one call: a decoder with workers searches them at once.
        found = self.decode([frames[start:end] for start, end in segments]) if segments else []
        for (start, end), nbest in zip(segments, found):
            best = nbest[0]
            if best.text:
                texts.append(best.text)
            score += best.score
            if timestamps:
                words += word_timings(frames[start:end], best.text, self.tokenizer, self.frame_shift,
                                      offset=start * self.frame_shift)
        result.text = " ".join(texts)
        result.nbest = [(result.text, score)]
        if timestamps:
            result.words = _clip(words, result.duration)

    def quiet_frames(self, levels: np.ndarray, num_frames: int) -> np.ndarray:
        """(num_frames,) bool: the output frames whose audio frame (`levels`, dBFS per frame of
        samples_per_frame) is below silence_dbfs or relative_silence_db below the loudest frame."""
        levels = np.resize(levels, num_frames) if levels.shape[0] < num_frames else levels[:num_frames]
        loudest = levels.max(initial=-np.inf)
        return levels < max(self.silence_dbfs, loudest - self.relative_silence_db)

    def blank_silences(self, log_probs: np.ndarray, quiet: np.ndarray) -> np.ndarray:
        """(T, V) log-probs in which no unit of a word can be decoded or aligned inside a silence: in
        every run of at least MIN_SILENCE_SECONDS of `quiet` frames ((T,) bool, `quiet_frames`), less
        SILENCE_MARGIN_SECONDS at each end, every label but the blank and the word separator gets
        CERTAINLY_NOT. A copy where anything changes. A CTC model emits the separator between words
        in the pause, and a word's first or last letter up to a few frames outside its sound (on
        libri-other dev, blanking whole quiet runs of 0.5 s joined words and cut first letters: greedy
        WER 32.73 -> 35.73%), hence the two exceptions."""
        margin = round(SILENCE_MARGIN_SECONDS / self.frame_shift)
        runs = _long_runs(quiet, max(1, round(MIN_SILENCE_SECONDS / self.frame_shift)), margin)
        if not runs.any():
            return log_probs
        kept = [self.tokenizer.blank] + ([] if self.tokenizer.word_separator is None else [self.tokenizer.word_separator])
        letters = np.setdiff1d(np.arange(log_probs.shape[1]), kept)
        log_probs = log_probs.copy()
        log_probs[np.ix_(np.flatnonzero(runs), letters)] = CERTAINLY_NOT
        return log_probs

    def decode(self, log_probs: Sequence[np.ndarray]) -> list[list[Hypothesis]]:
        """Per-utterance (T, V) log-probs -> their n-best lists, by the decoder on one padded batch."""
        lengths = np.array([lp.shape[0] for lp in log_probs], dtype=np.int64)
        padded = np.zeros((len(log_probs), int(lengths.max(initial=0)), log_probs[0].shape[-1]) if log_probs else (0, 0, 0),
                          dtype=np.float32)
        for i, lp in enumerate(log_probs):
            padded[i, : lp.shape[0]] = lp
        return self.decoder(padded, lengths)

    def log_probs(self, waves: Sequence[np.ndarray], progress: bool = False) -> list[np.ndarray]:
        """Each waveform's (T, V) log-probs (at the model's rate, not chunked), run in length-sorted
        batches, for callers that keep the log-probs (decoder tuning)."""
        out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(waves)
        for batch, log_probs in self._model_batches(waves, progress):
            for i, frames in zip(batch, log_probs):
                out[i] = frames
        return out

    def long_log_probs(self, item: str | os.PathLike | tuple[np.ndarray, int], progress: bool = False,
                       seconds: float | None = None) -> tuple[np.ndarray, float]:
        """((T, V) log-probs of the whole input, its duration in seconds) for audio of any length
        (a file, or (samples, rate)), read in chunks of `chunk_seconds` overlapping by `chunk_overlap`
        and run through the model a batch of chunks (at most `batch_seconds` of audio) at a time.
        Only the log-probs grow with the input, never the audio or the activations. Raises AudioError
        for a file that cannot be read. With `progress`, a bar on stderr counts the seconds done
        (of `seconds`, the length the header states; None: read here)."""
        frames, _, duration = self._long_frames(item, progress, seconds)
        return frames, duration

    def _long_frames(self, item: str | os.PathLike | tuple[np.ndarray, int], progress: bool = False,
                     seconds: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """`long_log_probs` with the level of each frame of samples_per_frame input samples (dBFS,
        `asr.audio.frame_levels`): ((T, V) log-probs, (about T,) levels, seconds)."""
        if seconds is None:
            seconds = _stated_seconds(item if isinstance(item, tuple) else Path(item), 0)
        rate = self.acoustic.sample_rate
        chunk, hop, frame = chunk_layout(self.acoustic, self.chunk_seconds, self.chunk_overlap)
        stitcher = FrameStitcher(hop // frame, (chunk - hop) // frame)
        per_batch = max(1, int(self.batch_seconds // self.chunk_seconds))
        pending: list[np.ndarray] = []
        pieces: list[np.ndarray] = []
        levels: list[np.ndarray] = []  # of the samples after those of earlier chunks (on the frame grid)
        samples = 0
        name = Path(item).name if not isinstance(item, tuple) else "samples"
        bar = tqdm(total=round(seconds) or None, desc=name, unit="s", disable=not progress, leave=False, mininterval=1.0)
        with bar:
            for k, (wave, last) in enumerate(read_chunks(item, rate, chunk, hop)):
                pending.append(wave)
                levels.append(frame_levels(wave[samples - k * hop :], frame))
                bar.update(round((k * hop + wave.shape[0]) / rate) - round(samples / rate))
                samples = k * hop + wave.shape[0]
                if len(pending) < per_batch and not last:
                    continue
                log_probs = self.acoustic.log_probs(pending)
                for i, frames in enumerate(log_probs):
                    pieces.append(stitcher.take(frames, last=last and i == len(pending) - 1))
                pending = []
        return np.concatenate(pieces), np.concatenate(levels), samples / rate


def _long_runs(mask: np.ndarray, min_length: int, margin: int = 0) -> np.ndarray:
    """(T,) bool: the frames of `mask` in runs of at least `min_length` consecutive True frames,
    less `margin` frames at each end of a run."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    out = np.zeros_like(mask, dtype=bool)
    for start, end in zip(edges[0::2], edges[1::2]):
        if end - start >= min_length:
            out[start + margin : end - margin] = True
    return out


def length_batches(durations: Sequence[float], max_seconds: float) -> list[list[int]]:
    """Indices in batches of similar length, shortest first: sorted by duration (ties in input
    order) and cut where the padded size (longest x count) would pass `max_seconds`, as
    asr.data.BucketBatchSampler cuts them without shuffling."""
    batches: list[list[int]] = []
    longest = 0.0
    for i in sorted(range(len(durations)), key=lambda i: (durations[i], i)):
        if batches and max(longest, durations[i]) * (len(batches[-1]) + 1) <= max_seconds:
            batches[-1].append(i)
            longest = max(longest, durations[i])
        else:
            batches.append([i])
            longest = durations[i]
    return batches


def _expand(inputs: Sequence[AudioInput]) -> list[Path | tuple[np.ndarray, int]]:
    """Paths through `expand_paths`, samples as they are, in order."""
    items: list[Path | tuple[np.ndarray, int]] = []
    for item in inputs:
        items += [item] if isinstance(item, tuple) else expand_paths([item])
    return items


def _name(item: Path | tuple, index: int) -> str:
    """How messages name an input: its path, or its position for samples."""
    return str(item) if isinstance(item, Path) else f"input {index} (samples)"


def _stated_seconds(item: Path | tuple[np.ndarray, int], index: int) -> float:
    """The input's length in seconds, from a file's header (read once here; 0 when it states none);
    AudioError for a folder or a file that cannot be opened, or samples with NaN or infinities."""
    if isinstance(item, tuple):
        samples, rate = item
        if samples.size == 0:
            raise AudioError(f"{_name(item, index)}: the file holds no audio samples")
        if not np.isfinite(samples).all():
            raise AudioError(f"{_name(item, index)}: the audio holds NaN or infinite samples")
        return samples.shape[0] / rate
    if item.is_dir():
        raise AudioError(f"{item}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    if not item.is_file():
        raise AudioError(f"{item}: no such file")
    try:
        info = soundfile.info(str(item))
    except Exception as e:  # libsndfile raises several types for unreadable files
        raise unreadable(item, e) from None
    return info.frames / info.samplerate if 0 < info.frames < 2**62 else 0.0


def header_seconds(path: str | os.PathLike) -> float:
    """A file's duration from its header; 0.0 when it states none or cannot be read (transcribing
    it reports why)."""
    try:
        return _stated_seconds(Path(path), 0)
    except AudioError:
        return 0.0


def _clip(words: list[Word], duration: float) -> list[Word]:
    """The last frame may reach past the end of the audio: keep timings inside it."""
    return [Word(w.word, min(w.start, duration), min(w.end, duration), w.confidence) for w in words]


def chunk_layout(acoustic: AcousticModel, chunk_seconds: float, chunk_overlap: float) -> tuple[int, int, int]:
    """(chunk, hop, frame) in samples at the model's rate: chunks start every `hop` samples and
    overlap by chunk - hop; both are whole numbers of encoder output frames of `frame` samples, so
    every chunk's frames fall on the same grid as the whole file's."""
    if chunk_overlap < 0 or chunk_seconds <= chunk_overlap:
        raise ValueError(f"chunk length ({chunk_seconds} s) must exceed the chunk overlap ({chunk_overlap} s) >= 0")
    rate, frame = acoustic.sample_rate, acoustic.samples_per_frame
    overlap = 2 * round(chunk_overlap * rate / frame / 2) * frame  # even: the seam is its middle
    hop = max(1, round((chunk_seconds - chunk_overlap) * rate / frame)) * frame
    return hop + overlap, hop, frame


class FrameStitcher:
    """Joins the output frames of consecutive overlapping chunks into the whole file's frames: chunk
    k starts at frame k * hop_frames; each chunk contributes its frames from the middle of its
    overlap with the previous chunk to the middle of its overlap with the next, where it has the
    most context on both sides."""

    def __init__(self, hop_frames: int, overlap_frames: int):
        self.hop_frames, self.half_overlap = hop_frames, overlap_frames // 2
        self.chunks = 0  # chunks added so far
        self.next_frame = 0  # first frame (of the whole file) not yet taken

    def take(self, frames: np.ndarray, last: bool = False) -> np.ndarray:
        """frames: (T, ...) per-frame output of the next chunk -> the rows of it that the file keeps."""
        start = self.chunks * self.hop_frames
        end = frames.shape[0] if last else self.hop_frames + self.half_overlap
        taken = frames[max(self.next_frame - start, 0) : end]
        self.chunks += 1
        self.next_frame = start + end
        return taken


def pause_segments(
    log_probs: np.ndarray,
    blank: int,
    max_frames: int,
    search_frames: int,
    separator: int | None = None,
    word_start_ids: Collection[int] = (),
    quiet: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Cut (T, V) log-probs into [start, end) frame segments of at most `max_frames`, so that a beam
    search or an alignment of each never sees half a word.

    A pause is a run of frames whose best label is the blank or the word `separator`. Each cut falls
    in the middle of the longest pause among the last `search_frames` frames before the limit,
    preferring pauses between words (holding a separator, or followed by a label of
    `word_start_ids`): a CTC model also emits blanks between the letters of a word. With no pause
    there, the cut falls at the limit. `quiet`: (T,) bool, frames of silent audio (Pipeline.quiet_frames),
    are pauses whatever the model's best label, and between words (a word's own gaps, stop closures,
    keep the room's noise, far above the silence levels)."""
    best = np.asarray(log_probs).argmax(axis=-1).tolist()
    total = len(best)
    silent = {blank} if separator is None else {blank, separator}
    pause = [b in silent for b in best] if quiet is None else [b in silent or q for b, q in zip(best, quiet.tolist())]
    # Each maximal pause as (first frame, end frame, between words?).
    pauses, t = [], 0
    while t < total:
        if not pause[t]:
            t += 1
            continue
        first = t
        while t < total and pause[t]:
            t += 1
        between_words = ((separator is not None and separator in best[first:t]) or (t < total and best[t] in word_start_ids)
                         or (quiet is not None and bool(quiet[first:t].any())))
        pauses.append((first, t, between_words))
    segments, start = [], 0
    while total - start > max_frames:
        lo, hi = start + max(max_frames - search_frames, 1), start + max_frames
        cut, best_key = hi, (False, 0)
        for first, end, between_words in pauses:
            a, b = max(first, lo), min(end, hi)
            if b > a and (between_words, b - a) > best_key:
                best_key, cut = (between_words, b - a), a + (b - a) // 2
        segments.append((start, cut))
        start = cut
    segments.append((start, total))
    return segments


def read_chunks(
    item: str | os.PathLike | tuple[np.ndarray, int],
    sample_rate: int,
    chunk: int,
    hop: int,
) -> Iterator[tuple[np.ndarray, bool]]:
    """Stream a file (or (samples, rate)) as mono chunks at `sample_rate`: (samples [k * hop, k * hop
    + chunk) of it, is_last) for k = 0, 1, ... until the chunk that reaches the end. The input is
    decoded block by block, each block mixed down and resampled as it comes (asr.audio.MonoResampler,
    which gives the whole input's samples however it is cut), so only about one chunk of mono audio
    at the model's rate is held, whatever the input's channels and rate."""
    name = "samples" if isinstance(item, tuple) else str(item)
    with _blocks(item) as (read, native):
        resampler = MonoResampler(native, sample_rate)
        buffer = np.zeros(0, dtype=np.float32)  # model-rate samples from buffer_start on
        buffer_start, eof, k = 0, False, 0
        while True:
            a, b = k * hop, k * hop + chunk
            pending, have = [buffer], buffer_start + buffer.shape[0]
            while not eof and have <= b:  # one sample past b: is there more?
                block = read(BLOCK_FRAMES)
                eof = block.shape[0] == 0
                pending.append(resampler(block, last=eof))
                have += pending[-1].shape[0]
            buffer = np.concatenate(pending) if len(pending) > 1 else buffer
            if resampler.frames_in == 0:
                raise AudioError(f"{name}: the file holds no audio samples")
            total = buffer_start + buffer.shape[0]  # the whole input's length at the model rate, once eof
            last = eof and total <= b
            yield np.ascontiguousarray(buffer[a - buffer_start : min(b, total) - buffer_start]), last
            if last:
                return
            k += 1
            drop = k * hop - buffer_start
            buffer, buffer_start = buffer[drop:], buffer_start + drop


@contextmanager
def _blocks(item: str | os.PathLike | tuple[np.ndarray, int]) -> Iterator[tuple[Callable[[int], np.ndarray], int]]:
    """(read(n) -> the next (<= n, channels) float32 samples, native rate) of a file or of samples."""
    if isinstance(item, tuple):
        samples, rate = item
        samples = np.asarray(samples, dtype=np.float32).reshape(samples.shape[0], -1)
        position = 0

        def read_samples(frames: int) -> np.ndarray:
            nonlocal position
            block = samples[position : position + frames]
            position += block.shape[0]
            return block

        yield read_samples, int(rate)
        return
    path = Path(item)
    with open_audio(path) as f:
        yield (lambda frames: read_block(f, path, frames)), f.samplerate


def transcribe_files(
    model: CTCModel,
    tokenizer: Tokenizer,
    paths: Sequence[str | os.PathLike],
    device: torch.device | str = "cpu",
    batch_seconds: float = 300.0,
    progress: bool = False,
    chunk_seconds: float = 30.0,
    chunk_overlap: float = 4.0,
    decoder: Decoder | None = None,
    timestamps: bool = False,
) -> list[Transcript]:
    """`Pipeline.transcribe` of files with a CTCModel (greedy unless `decoder` is given), for scripts
    and tests that hold a model rather than a checkpoint path (asr.api.load takes a path)."""
    pipeline = Pipeline.for_model(model, tokenizer, device, decoder, batch_seconds=batch_seconds,
                                  chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap)
    return pipeline.transcribe(paths, timestamps, progress)


def transcribe_waves(model: CTCModel, tokenizer: Tokenizer, waves: Sequence[Any], device: torch.device | str = "cpu",
                     batch_seconds: float = 300.0, progress: bool = False) -> list[str]:
    """Greedy transcripts of mono waveforms ((samples,) arrays or tensors at the model's rate, not
    chunked), in input order, through `Pipeline.transcribe`."""
    rate = model.feature_config.sample_rate
    items = [(np.asarray(w.detach().cpu() if hasattr(w, "detach") else w, dtype=np.float32), rate) for w in waves]
    pipeline = Pipeline.for_model(model, tokenizer, device, batch_seconds=batch_seconds, chunk_seconds=0)
    return [r.text for r in pipeline.transcribe(items, progress=progress)]


DEFAULT_MODEL = "en-whisper-tiny-bilstm-ctc.pt"  # the pretrained English model, in models/ of the repository


def default_model_path() -> Path:
    """The model `asr transcribe` uses when given none: $ASR_MODEL if set, else
    <repository>/models/en-whisper-tiny-bilstm-ctc.pt next to this package (a clone installed with
    `pip install -e .`). Raises FileNotFoundError saying where it looked and how to get a model."""
    env = os.environ.get("ASR_MODEL", "")
    if env:
        if not Path(env).expanduser().is_file():
            raise FileNotFoundError(f"ASR_MODEL={env}: no such model file (unset ASR_MODEL or point it at a .pt)")
        return Path(env).expanduser()
    shipped = Path(__file__).resolve().parent.parent / "models" / DEFAULT_MODEL
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"no model given and no default model found: $ASR_MODEL is not set and {shipped} does not exist. "
        f"Pass one with --model PATH, set ASR_MODEL=PATH, or put {DEFAULT_MODEL} in {shipped.parent} "
        "(it comes with a clone of the repository installed with pip install -e .); or train one with "
        "recipes/librispeech/run.sh and use exp/<name>/best.pt (asr export model makes a compact copy)")
