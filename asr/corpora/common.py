"""What every corpus importer shares: the result type, the validation of candidate utterances,
audio header checks, reading metadata files, transcript markers and NIST SPHERE headers, and the
`Corpus` entry a corpus module registers.

Every importer validates what it reads and never stops at a bad entry: each problem (missing
audio, a corrupt file, an empty transcript, ...) becomes a `skipped` entry with a reason, so one
broken file in a 100-hour corpus costs that file and not the run. `PrepareResult.summary` reports
what was kept and what was dropped and why.

Skip reasons are written "category: details"; the summary groups them by the category.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import soundfile
from tqdm import tqdm

from ..text import CharTokenizer

# asr.audio and asr.data import torch; they are imported where used so that building the `asr`
# parser, which reads the registry, stays light.
if TYPE_CHECKING:
    from ..audio import AudioInfo
    from ..data import Utterance

# Preference order when one utterance has audio in several formats (lossless first).
AUDIO_EXTENSIONS = ("flac", "wav", "sph", "opus", "ogg", "mp3")


@dataclass
class PrepareResult:
    """Utterances kept for the manifest and entries skipped, as (path or utterance id, reason)."""

    kept: list[Utterance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, name: str) -> str:
        """Multi-line report: size of what was kept, then every skipped entry grouped by reason."""
        from ..data import total_hours

        speakers = {u.speaker for u in self.kept if u.speaker}
        vocabulary = {w for u in self.kept for w in u.text.split()}
        lines = [
            f"{name}: {len(self.kept)} utterances kept, {total_hours(self.kept):.2f} hours, "
            f"{len(speakers)} speakers, vocabulary {len(vocabulary)} words",
            f"{len(self.kept)} kept, {len(self.skipped)} skipped",
        ]
        if self.skipped:
            lines.append("skipped by reason:")
            counts = Counter(reason_category(reason) for _, reason in self.skipped)
            for category, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {count:6d}  {category}")
            lines.append("skipped entries:")
            lines.extend(f"  {key}: {reason}" for key, reason in self.skipped)
        return "\n".join(lines)


def reason_category(reason: str) -> str:
    """'unreadable audio: /x.flac: ...' -> 'unreadable audio'."""
    return reason.split(":", 1)[0].strip()


# --------------------------------------------------------------------------- audio checks


def ctc_too_short(text: str, duration: float, frames_per_second: float) -> str | None:
    """The skip reason when CTC cannot align `text` to `duration` seconds of encoder frames
    (it needs at least one frame per label), else None. Labels are counted as characters."""
    frames = int(duration * frames_per_second)
    if len(text) <= frames:
        return None
    return (f"too short for CTC: {len(text)} labels > {frames} encoder frames "
            f"({duration:.3f} s at {frames_per_second:g} frames/s)")


def audio_infos(paths: Sequence[Path], num_threads: int, progress: bool, desc: str) -> list[AudioInfo | str]:
    """audio_info for each path, or the skip reason (a str) where the file cannot be used.
    Threads: libsndfile releases the GIL, and header reads are I/O-bound on network storage."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        return list(tqdm(pool.map(_checked_info, paths), total=len(paths), desc=desc, unit="file", leave=False,
                         disable=not progress))


def _checked_info(path: Path) -> AudioInfo | str:
    from ..audio import AudioError, audio_info

    try:
        info = audio_info(path)
    except AudioError as e:
        # audio_info decodes a file whose header states no length and raises on zero samples;
        # tell such empty files apart from corrupt ones, they call for different fixes.
        if _header_frames(path) == 0:
            return f"empty audio: 0 samples in {path}"
        if path.suffix.lower() == ".sph":
            problem = _sphere_problem(path)
            if problem:
                return problem
        return f"unreadable audio: {e}"
    if info.num_frames <= 0:
        return f"empty audio: 0 samples in {path}"
    if not _tail_readable(path, info.num_frames):
        return f"truncated audio: {path} ends before the {info.num_frames} samples its header states"
    return info


def _tail_readable(path: Path, frames: int, tail: int = 1024) -> bool:
    """A file cut short (an interrupted copy) keeps a header that promises all its samples; reading
    the last `tail` of them finds out cheaply, without decoding the whole file."""
    try:
        with soundfile.SoundFile(str(path)) as f:
            f.seek(max(0, frames - tail))
            return len(f.read(tail, dtype="float32")) == min(tail, frames)
    except Exception:  # any libsndfile failure on seek or read means the stated end is not there
        return False


def _header_frames(path: Path) -> int | None:
    try:
        return int(soundfile.info(str(path)).frames)
    except Exception:  # any libsndfile failure means "not readable", handled by the caller
        return None


# --------------------------------------------------------------------------- candidate utterances and their validation


@dataclass
class Candidate:
    """One utterance as a corpus describes it, before validation. `raw` is the transcript as the
    corpus writes it (for skip reasons); `text` is it after the corpus's normalization. `start`
    and `end` (seconds) select a segment of `audio`; `end` None means the end of the file."""

    id: str
    raw: str
    text: str
    speaker: str
    audio: Path
    start: float | None = None
    end: float | None = None


_DIGITS = re.compile(r"\d+")
# Seconds a segment may reach past the end of its file (STM/segments times are rounded to 10 ms).
_SEGMENT_SLACK = 0.05


def keep_valid(
    result: PrepareResult,
    candidates: Sequence[Candidate],
    tokenizer: CharTokenizer | None,
    max_duration: float | None,
    frames_per_second: float | None,
    num_threads: int,
    progress: bool,
) -> PrepareResult:
    """Validate candidates and move the good ones into `result.kept` (sorted by id).

    Skipped, with a reason: duplicate ids, digits in the transcript (the normalizer would drop
    them, leaving a transcript that no longer matches the audio), transcripts empty after
    normalization, characters `tokenizer` has no label for, unreadable or empty audio, segments
    that are empty or reach past the end of their file, utterances longer than `max_duration`,
    and, with `frames_per_second`, utterances too short for CTC to align their characters.
    Each audio file's header is read once, however many segments it holds.
    """
    seen: set[str] = set()
    checked: list[Candidate] = []
    for c in candidates:
        if c.id in seen:
            result.skipped.append((c.id, f"duplicate utterance id: {c.audio}"))
            continue
        seen.add(c.id)
        digits = _DIGITS.findall(drop_markers(c.raw))  # not the '2' of a 'word(2)' variant
        if digits:
            result.skipped.append((c.id, f"digits in transcript: {' '.join(digits)!r} in {c.raw!r} "
                                         f"(numbers must be spelled out; the normalizer drops digits)"))
            continue
        if not c.text:
            result.skipped.append((c.id, f"empty transcript: nothing left after normalizing {c.raw!r}"))
            continue
        if tokenizer is not None:
            unknown = tokenizer.unknown_chars(c.text)
            if unknown:
                result.skipped.append((c.id, f"characters outside the tokenizer: {''.join(sorted(unknown))!r} in {c.text!r}"))
                continue
        checked.append(c)

    from ..data import Utterance

    paths = sorted({c.audio for c in checked})
    infos = dict(zip(paths, audio_infos(paths, num_threads, progress, desc="reading audio headers")))
    for c in checked:
        info = infos[c.audio]
        if isinstance(info, str):
            result.skipped.append((c.id, info))
            continue
        start, end = c.start, c.end
        if start is None and end is None:
            duration = info.duration
        else:
            first = start or 0.0
            last = info.duration if end is None else end
            if first < 0 or last <= first:
                result.skipped.append((c.id, f"bad segment: start {first:.3f} s, end {last:.3f} s ({c.audio})"))
                continue
            if last > info.duration + _SEGMENT_SLACK:
                result.skipped.append((c.id, f"segment past the end of the audio: ends at {last:.3f} s, "
                                             f"{c.audio} is {info.duration:.3f} s long"))
                continue
            last = min(last, info.duration)
            start, end, duration = first, last, last - first
        if max_duration is not None and duration > max_duration:
            result.skipped.append((c.id, f"too long: {duration:.3f} s > max_duration {max_duration:g} s ({c.audio})"))
            continue
        too_short = ctc_too_short(c.text, duration, frames_per_second) if frames_per_second else None
        if too_short:
            result.skipped.append((c.id, f"{too_short} ({c.audio})"))
            continue
        result.kept.append(Utterance(
            id=c.id, audio=str(c.audio), duration=round(duration, 3), text=c.text, speaker=c.speaker,
            start=None if start is None else round(start, 3), end=None if end is None else round(end, 3)))
    result.kept.sort(key=lambda u: u.id)
    return result


def corpus_root(corpus_dir: str | os.PathLike) -> Path:
    """The corpus folder as an absolute path; FileNotFoundError naming it when it is not a folder."""
    root = Path(corpus_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    return root


def read_lines(path: Path, result: PrepareResult, encoding: str = "utf-8") -> list[str] | None:
    """The file's lines, or None after recording why it cannot be read."""
    try:
        return path.read_text(encoding=encoding).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        result.skipped.append((str(path), f"unreadable metadata file: {e}"))
        return None


# Non-speech markers in transcripts: <unk>, <s>, </s>, <sil> (AN4, TED-LIUM, Kaldi <UNK>),
# [noise] / [laughter] (Kaldi data dirs), {NOISE} / {BREATH} (TED-LIUM 1/2).
_MARKER = re.compile(r"^(<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\})$")
# A pronunciation variant suffix on a word, as in CMU-dictionary style transcripts: "read(2)".
_VARIANT = re.compile(r"\(\d+\)$")


def drop_markers(text: str) -> str:
    """Remove non-speech marker tokens (<unk>, [noise], {BREATH}, ...) and '(2)' variant suffixes."""
    words = []
    for word in text.split():
        if _MARKER.match(word):
            continue
        word = _VARIANT.sub("", word)
        if word:
            words.append(word)
    return " ".join(words)


# --------------------------------------------------------------------------- NIST SPHERE


def read_sphere_header(path: str | os.PathLike) -> dict[str, str]:
    """The fields of a NIST SPHERE header ('NIST_1A', header size, 'key -type value' lines up to
    'end_head'), e.g. {'sample_rate': '16000', 'sample_coding': 'pcm', ...}. Raises ValueError
    when the file does not start with a SPHERE header."""
    with open(path, "rb") as f:
        head = f.read(1024)
        lines = head.split(b"\n")
        if len(lines) < 2 or lines[0].strip() != b"NIST_1A":
            raise ValueError(f"{path}: not a NIST SPHERE file (no NIST_1A magic)")
        try:
            size = int(lines[1].strip())
        except ValueError:
            raise ValueError(f"{path}: bad SPHERE header size {lines[1][:20]!r}") from None
        if size > len(head):
            head += f.read(size - len(head))
    fields: dict[str, str] = {}
    for raw in head[:size].split(b"\n")[2:]:
        line = raw.decode("latin-1").strip()
        if line == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1].startswith("-"):
            fields[parts[0]] = parts[2]
    return fields


def _sphere_problem(path: Path) -> str | None:
    """Why libsndfile cannot decode this SPHERE file, from its header (compressed audio), or None."""
    try:
        coding = read_sphere_header(path).get("sample_coding", "pcm")
    except (OSError, ValueError):
        return None
    if any(kind in coding for kind in ("shorten", "wavpack", "shortpack")):
        return (f"unsupported SPHERE coding: {path} has sample_coding {coding!r}; convert it to plain PCM "
                f"(e.g. sph2pipe -f wav) first")
    return None


def read_table(path: Path, delimiter: str, result: PrepareResult) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """(header, [(line number, fields)]) of a delimited text file read without any quoting rules
    (a '"' in a transcript is text). None, with the reason recorded, when it cannot be read."""
    lines = read_lines(path, result, encoding="utf-8-sig")
    if lines is None:
        return None
    if not lines:
        result.skipped.append((str(path), "empty metadata file: no header line"))
        return None
    header = [h.strip() for h in lines[0].split(delimiter)]
    body = [(n, line.split(delimiter)) for n, line in enumerate(lines[1:], 2) if line.strip()]
    return header, body


# --------------------------------------------------------------------------- the registry entry


@dataclass(frozen=True)
class Corpus:
    """One entry of `asr.corpora.CORPORA`: what `asr prepare NAME` and `asr download NAME` run.

    `add_arguments(parser)` adds the corpus's options to its `asr prepare` subparser (ending with
    `add_output_options`); `prepare(args)` imports it from the parsed arguments. `download(dest,
    subsets, archive)` fetches it into `dest` and returns the folder to give `asr prepare`; it
    rejects the options it does not take. A corpus has a prepare, a download, or both.
    """

    name: str
    help: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    prepare: Callable[[argparse.Namespace], PrepareResult] | None = None
    download: Callable[[Path, list[str] | None, str | None], Path] | None = None


def add_output_options(parser: argparse.ArgumentParser, max_duration: bool = True) -> None:
    """The options every `asr prepare CORPUS` takes: --out, --max-duration (where the importer has
    it), --strict."""
    parser.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    if max_duration:
        parser.add_argument("--max-duration", type=float, default=None, help="skip utterances longer than this (s)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero if any entry was skipped")


def no_download_options(corpus: str, subsets: list[str] | None, archive: str | None) -> None:
    """Raise ValueError for `asr download` options a corpus published as one archive does not take."""
    if subsets:
        raise ValueError(f"{corpus} has no subsets to choose; drop --subsets")
    if archive:
        raise ValueError(f"--archive is for commonvoice; {corpus} is downloaded from its official address")
