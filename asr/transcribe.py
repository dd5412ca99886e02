"""Transcribing audio files with a trained checkpoint: files or folders in, one result per file out.

A file that cannot be read is reported with its error and does not stop the others.

Files longer than `chunk_seconds` are streamed from disk in overlapping chunks, so memory for audio
and activations does not grow with their length (only the output log-probs do, ~14 MB per hour).
The chunks start on the encoder's frame grid; each chunk contributes its output frames up to the
middle of its overlap with the next one, and greedy CTC runs once over the frames so joined, so no
word is doubled or lost at a seam by text-level merging. Beam search and word alignment
(asr.align) cut the joined frames at pauses instead (`pause_segments`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from .audio import AudioError, load_audio, to_mono_and_rate, unreadable
from .decode import greedy_decode, transcribe_waves
from .model import CTCModel
from .text import Tokenizer

AUDIO_EXTENSIONS = {".wav", ".flac", ".opus", ".ogg", ".mp3", ".sph", ".aiff", ".aif", ".au"}
# Audio shorter than this holds no word: the shortest recordings of FSDD (3000 single spoken digits,
# trimmed to the word) last 0.1435 s (measured, benchmarks/RESULTS.md); a 0.1 s file was transcribed
# as "si". Shorter files get an empty transcript and a warning (`min_audio_samples`).
MIN_SPEECH_SECONDS = 0.12


@dataclass
class Transcript:
    path: str
    text: str = ""
    duration: float = 0.0
    error: str = ""  # non-empty when the file could not be transcribed
    warning: str = ""  # non-empty when the file was read but not transcribed (too short): text is ""


def min_audio_samples(model: CTCModel) -> int:
    """The shortest audio (samples at the model's rate) that is transcribed: enough for one output
    frame computed from audio alone (`CTCModel.min_samples`) and at least MIN_SPEECH_SECONDS."""
    return max(model.min_samples(), math.ceil(MIN_SPEECH_SECONDS * model.feature_config.sample_rate))


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
    """Where the per-file outputs (subtitles) of `files` (as `expand_paths` gives them) go: each
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


def transcribe_files(
    model: CTCModel,
    tokenizer: Tokenizer,
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
    min_samples = min_audio_samples(model)
    results, readable, waves, long_files = load_files(
        paths, rate, Transcript, defer=long_file_test(model, chunk_seconds, chunk_overlap), min_samples=min_samples)
    for result in long_files:
        try:
            result.text, result.duration = transcribe_long(
                model, tokenizer, Path(result.path), device, chunk_seconds, chunk_overlap, batch_seconds, progress)
        except AudioError as e:
            result.error = str(e)
            continue
        result.warning = too_short_warning(result.path, round(result.duration * rate), min_samples, rate)
        if result.warning:  # only when chunk_seconds is shorter than that
            result.text = ""
    for result, text in zip(readable, transcribe_waves(model, tokenizer, waves, device, batch_seconds, progress)):
        result.text = text
    return results


def long_file_test(model: CTCModel, chunk_seconds: float, chunk_overlap: float) -> Callable[[Path], bool] | None:
    """Whether a file must be read in chunks (its header says it is longer than `chunk_seconds`);
    None when chunking is off (chunk_seconds 0). Bad chunk options fail here, not once per file."""
    if not chunk_seconds:
        return None
    chunk_layout(model, chunk_seconds, chunk_overlap)
    return lambda path: not shorter_than(path, chunk_seconds)


def load_files(
    paths: Sequence[str | os.PathLike],
    sample_rate: int,
    new_result: Callable[[str], Any] = Transcript,
    defer: Callable[[Path], bool] | None = None,
    min_samples: int = 0,
) -> tuple[list, list, list[torch.Tensor], list]:
    """Expand `paths` and read each audio file at `sample_rate`, one result object per path
    (`new_result(path)`, with .error/.duration set here). Returns (all results in order, the results of
    the files read, their waveforms, the results of files left unread because `defer(path)` was true).
    A file shorter than `min_samples` gets a .warning (`too_short_warning`) and is not among those read."""
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
            result.warning = too_short_warning(path, wave.shape[0], min_samples, sample_rate)
            if result.warning:
                continue
            readable.append(result)
            waves.append(wave)
    return results, readable, waves, deferred


def transcribe_long(
    model: CTCModel,
    tokenizer: Tokenizer,
    path: str | os.PathLike,
    device: torch.device,
    chunk_seconds: float = 30.0,
    chunk_overlap: float = 4.0,
    batch_seconds: float = 300.0,
    progress: bool = False,
) -> tuple[str, float]:
    """(greedy transcript, duration in seconds) of one audio file of any length, read and decoded in
    chunks (see `long_log_probs`). Raises AudioError for a file that cannot be read."""
    log_probs, duration = long_log_probs(model, path, device, chunk_seconds, chunk_overlap, batch_seconds, progress)
    ids = greedy_decode(log_probs.unsqueeze(0), torch.tensor([log_probs.shape[0]]), tokenizer.blank)[0]
    return tokenizer.decode(ids), duration


def long_log_probs(
    model: CTCModel,
    path: str | os.PathLike,
    device: torch.device,
    chunk_seconds: float = 30.0,
    chunk_overlap: float = 4.0,
    batch_seconds: float = 300.0,
    progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """((T, V) log-probs of the whole file on the CPU, its duration in seconds) for an audio file of
    any length, read in chunks of `chunk_seconds` overlapping by `chunk_overlap` and run through the
    model a batch of chunks (at most `batch_seconds` of audio) at a time. Only the log-probs grow
    with the file (about 14 MB per hour for 29 characters at 33 frames/s), never the audio or
    the activations. Raises AudioError for a file that cannot be read. With `progress`, a bar on
    stderr counts the seconds of audio done."""
    chunk, hop, frame = chunk_layout(model, chunk_seconds, chunk_overlap)
    stitcher = FrameStitcher(hop // frame, (chunk - hop) // frame)
    per_batch = max(1, int(batch_seconds // chunk_seconds))
    pending: list[torch.Tensor] = []
    pieces: list[torch.Tensor] = []
    samples = 0
    rate = model.feature_config.sample_rate
    bar = tqdm(total=round(_header_seconds(path)) or None, desc=Path(path).name, unit="s", disable=not progress,
               leave=False, mininterval=1.0)
    with torch.inference_mode(), bar:
        for k, (wave, last) in enumerate(read_chunks(path, rate, chunk, hop)):
            pending.append(wave)
            bar.update(round((k * hop + wave.shape[0]) / rate) - round(samples / rate))
            samples = k * hop + wave.shape[0]
            if len(pending) < per_batch and not last:
                continue
            lengths = torch.tensor([w.shape[0] for w in pending])
            padded = torch.nn.utils.rnn.pad_sequence(pending, batch_first=True).to(device)
            log_probs, out_lengths = model(padded, lengths.to(device))
            log_probs, out_lengths = log_probs.float().cpu(), out_lengths.cpu()
            for i in range(len(pending)):
                pieces.append(stitcher.take(log_probs[i, : out_lengths[i]], last=last and i == len(pending) - 1))
            pending = []
    return torch.cat(pieces), samples / model.feature_config.sample_rate


def chunk_layout(model: CTCModel, chunk_seconds: float, chunk_overlap: float) -> tuple[int, int, int]:
    """(chunk, hop, frame) in samples at the model's rate: chunks start every `hop` samples and
    overlap by chunk - hop; both are whole numbers of encoder output frames of `frame` samples, so
    every chunk's frames fall on the same grid as the whole file's."""
    if chunk_overlap < 0 or chunk_seconds <= chunk_overlap:
        raise ValueError(f"chunk length ({chunk_seconds} s) must exceed the chunk overlap ({chunk_overlap} s) >= 0")
    features = model.feature_config
    frame = model.samples_per_frame
    overlap = 2 * round(chunk_overlap * features.sample_rate / frame / 2) * frame  # even: the seam is its middle
    hop = max(1, round((chunk_seconds - chunk_overlap) * features.sample_rate / frame)) * frame
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

    def take(self, frames: torch.Tensor, last: bool = False) -> torch.Tensor:
        """frames: (T, ...) per-frame output of the next chunk -> the rows of it that the file keeps."""
        start = self.chunks * self.hop_frames
        end = frames.shape[0] if last else self.hop_frames + self.half_overlap
        taken = frames[max(self.next_frame - start, 0) : end]
        self.chunks += 1
        self.next_frame = start + end
        return taken


def pause_segments(
    log_probs: torch.Tensor,
    blank: int,
    max_frames: int,
    search_frames: int,
    separator: int | None = None,
    word_start_ids: Collection[int] = (),
) -> list[tuple[int, int]]:
    """Cut (T, V) log-probs into [start, end) frame segments of at most `max_frames`, so that a beam
    search or an alignment of each never sees half a word.

    A pause is a run of frames whose best label is the blank or the word `separator`. Each cut falls
    in the middle of the longest pause among the last `search_frames` frames before the limit,
    preferring pauses between words (holding a separator, or followed by a label of
    `word_start_ids`): a CTC model also emits blanks between the letters of a word. With no pause
    there, the cut falls at the limit."""
    best = log_probs.argmax(dim=-1).tolist()
    total = len(best)
    silent = {blank} if separator is None else {blank, separator}
    # Each maximal pause as (first frame, end frame, between words?).
    pauses, t = [], 0
    while t < total:
        if best[t] not in silent:
            t += 1
            continue
        first = t
        while t < total and best[t] in silent:
            t += 1
        between_words = (separator is not None and separator in best[first:t]) or (t < total and best[t] in word_start_ids)
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


def _header_seconds(path: str | os.PathLike) -> float:
    """The length the file's header states, in seconds (0 when it states none or cannot be read)."""
    try:
        info = soundfile.info(str(path))
    except Exception:
        return 0.0
    return info.frames / info.samplerate if 0 < info.frames < 2**62 else 0.0


def shorter_than(path: Path, seconds: float) -> bool:
    """Whether the header says the file is at most `seconds` long (False when it cannot say)."""
    try:
        info = soundfile.info(str(path))
    except Exception:  # unreadable: load_audio reports it
        return True
    return 0 < info.frames < 2**62 and info.frames <= seconds * info.samplerate


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
