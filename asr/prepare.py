"""Corpus importers: turn a corpus folder into a list of manifest utterances.

Every importer validates what it reads and never stops at a bad entry: each problem (missing
audio, a corrupt file, an empty transcript, ...) becomes a `skipped` entry with a reason, so one
broken file in a 100-hour corpus costs that file and not the run. `PrepareResult.summary` reports
what was kept and what was dropped and why.

Skip reasons are written "category: details"; the summary groups them by the category.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import soundfile
from tqdm import tqdm

from .audio import AudioError, AudioInfo, audio_info
from .data import Utterance, total_hours
from .text import CharTokenizer, normalize

# Preference order when one utterance has audio in several formats (lossless first).
AUDIO_EXTENSIONS = ("flac", "wav", "sph", "opus", "ogg", "mp3")

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_SPLITS = ("train", "test", "all")
_FSDD_NAME = re.compile(r"^(\d)_(.+)_(\d+)$")


@dataclass
class PrepareResult:
    """Utterances kept for the manifest and entries skipped, as (path or utterance id, reason)."""

    kept: list[Utterance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, name: str) -> str:
        """Multi-line report: size of what was kept, then every skipped entry grouped by reason."""
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


# --------------------------------------------------------------------------- LibriSpeech


def prepare_librispeech(
    corpus_dir: str | os.PathLike,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float = 25.0,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import every `<spk>/<chapter>/<spk>-<chapter>.trans.txt` found below `corpus_dir` (a split
    such as `LibriSpeech/dev-clean`, or a folder holding several splits), with the audio
    `<UTT-ID>.<ext>` beside each transcript (flac, wav, opus, ogg, mp3 or sph).

    Skipped, with a reason: transcript lines without audio, audio without a transcript line,
    unreadable or empty audio, transcripts empty after normalization, characters `tokenizer` has
    no label for, utterances longer than `max_duration` seconds, and utterances with more labels
    (characters) than encoder frames at `frames_per_second`, which CTC cannot align.
    Kept utterances are sorted by id.
    """
    root = Path(corpus_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    result = PrepareResult()

    # One walk collects both transcripts and audio, so that orphan audio files are found too.
    # followlinks: corpora are often assembled from symlinked split folders.
    transcripts: list[Path] = []
    audio_by_dir: dict[Path, dict[str, list[Path]]] = {}
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        folder_path = Path(folder)
        for filename in sorted(filenames):
            if filename.endswith(".trans.txt"):
                transcripts.append(folder_path / filename)
                continue
            stem, _, ext = filename.rpartition(".")
            if stem and ext.lower() in AUDIO_EXTENSIONS:
                audio_by_dir.setdefault(folder_path, {}).setdefault(stem, []).append(folder_path / filename)
    if not transcripts:
        result.skipped.append((str(root), "no transcripts: no *.trans.txt file below this folder"))

    # Transcript lines -> (id, raw text, audio path); audio files named by no line are orphans.
    candidates: list[tuple[str, str, Path]] = []
    seen: dict[str, Path] = {}
    claimed: set[Path] = set()
    for trans in transcripts:
        folder_audio = audio_by_dir.get(trans.parent, {})
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            result.skipped.append((str(trans), f"unreadable transcript file: {e}"))
            continue
        for number, line in enumerate(lines, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            utt_id, raw = parts[0], (parts[1] if len(parts) > 1 else "")
            if utt_id in seen:
                result.skipped.append((utt_id, f"duplicate utterance id: {trans}:{number}, first in {seen[utt_id]}"))
                continue
            seen[utt_id] = trans
            files = folder_audio.get(utt_id)
            if not files:
                exts = ",".join(AUDIO_EXTENSIONS)
                result.skipped.append((utt_id, f"no audio file: no {utt_id}.{{{exts}}} in {trans.parent}"))
                continue
            files = sorted(files, key=lambda p: AUDIO_EXTENSIONS.index(p.suffix[1:].lower()))
            claimed.update(files)  # other formats of the same utterance are not orphans
            candidates.append((utt_id, raw, files[0]))
    transcript_dirs = {t.parent: t for t in transcripts}
    for folder, by_stem in sorted(audio_by_dir.items()):
        for paths in by_stem.values():
            for path in paths:
                if path in claimed:
                    continue
                if folder in transcript_dirs:
                    reason = f"no transcript line: {path.stem} is not in {transcript_dirs[folder].name}"
                else:
                    reason = "no transcript line: no *.trans.txt in this folder"
                result.skipped.append((str(path), reason))

    # Cheap text checks before any audio I/O.
    checked: list[tuple[str, str, Path]] = []
    for utt_id, raw, path in candidates:
        text = normalize(raw)
        if not text:
            result.skipped.append((utt_id, f"empty transcript: nothing left after normalizing {raw!r}"))
            continue
        if tokenizer is not None:
            unknown = tokenizer.unknown_chars(text)
            if unknown:
                result.skipped.append((utt_id, f"characters outside the tokenizer: {''.join(sorted(unknown))!r} in {text!r}"))
                continue
        checked.append((utt_id, text, path))

    infos = _audio_infos([path for _, _, path in checked], num_threads, progress, desc="reading audio headers")
    for (utt_id, text, path), info in zip(checked, infos):
        if isinstance(info, str):
            result.skipped.append((utt_id, info))
            continue
        duration = info.duration
        if max_duration is not None and duration > max_duration:
            result.skipped.append((utt_id, f"too long: {duration:.3f} s > max_duration {max_duration:g} s ({path})"))
            continue
        too_short = _ctc_too_short(text, duration, frames_per_second)
        if too_short:
            result.skipped.append((utt_id, f"{too_short} ({path})"))
            continue
        result.kept.append(Utterance(id=utt_id, audio=str(path), duration=round(duration, 3), text=text,
                                     speaker=utt_id.split("-", 1)[0]))

    result.kept.sort(key=lambda u: u.id)
    return result


# --------------------------------------------------------------------------- Free Spoken Digit Dataset


def prepare_fsdd(
    corpus_dir: str | os.PathLike,
    split: str,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import the Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{index}.wav`.

    `corpus_dir` is the folder holding `recordings/` or `recordings/` itself. Official split:
    index 0-4 is 'test', 5-49 'train'; `split` is 'train', 'test' or 'all'. The text is the
    digit's English word, the speaker the name in the file name, the id the file stem.
    Unreadable or empty files are skipped; with `frames_per_second`, so are clips with fewer
    encoder frames than characters (a handful of FSDD clips are under 0.2 s).
    """
    if split not in FSDD_SPLITS:
        raise ValueError(f"unknown FSDD split {split!r}; choose one of {', '.join(FSDD_SPLITS)}")
    root = Path(corpus_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    recordings = root / "recordings" if (root / "recordings").is_dir() else root
    result = PrepareResult()

    candidates: list[tuple[str, str, str, Path]] = []
    for path in sorted(recordings.iterdir()):
        if not path.is_file() or path.suffix.lower() != ".wav":
            continue
        match = _FSDD_NAME.match(path.stem)
        if not match:
            result.skipped.append((str(path), "unexpected file name: not {digit}_{speaker}_{index}.wav"))
            continue
        digit, speaker, index = int(match.group(1)), match.group(2), int(match.group(3))
        if split != "all" and ("test" if index < 5 else "train") != split:
            continue
        candidates.append((path.stem, DIGIT_WORDS[digit], speaker, path))
    if not candidates and not result.skipped:
        result.skipped.append((str(recordings), "no recordings: no {digit}_{speaker}_{index}.wav files in this folder"))

    infos = _audio_infos([c[3] for c in candidates], num_threads, progress, desc="reading audio headers")
    for (utt_id, text, speaker, path), info in zip(candidates, infos):
        if isinstance(info, str):
            result.skipped.append((utt_id, info))
            continue
        too_short = _ctc_too_short(text, info.duration, frames_per_second) if frames_per_second else None
        if too_short:
            result.skipped.append((utt_id, f"{too_short} ({path})"))
            continue
        result.kept.append(Utterance(id=utt_id, audio=str(path), duration=round(info.duration, 3), text=text, speaker=speaker))
    result.kept.sort(key=lambda u: u.id)
    return result


# --------------------------------------------------------------------------- helpers


def _ctc_too_short(text: str, duration: float, frames_per_second: float) -> str | None:
    """The skip reason when CTC cannot align `text` to `duration` seconds of encoder frames
    (it needs at least one frame per label), else None. Labels are counted as characters."""
    frames = int(duration * frames_per_second)
    if len(text) <= frames:
        return None
    return (f"too short for CTC: {len(text)} labels > {frames} encoder frames "
            f"({duration:.3f} s at {frames_per_second:g} frames/s)")


def _audio_infos(paths: Sequence[Path], num_threads: int, progress: bool, desc: str) -> list[AudioInfo | str]:
    """audio_info for each path, or the skip reason (a str) where the file cannot be used.
    Threads: libsndfile releases the GIL, and header reads are I/O-bound on network storage."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        return list(tqdm(pool.map(_checked_info, paths), total=len(paths), desc=desc, unit="file", leave=False,
                         disable=not progress))


def _checked_info(path: Path) -> AudioInfo | str:
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


# --------------------------------------------------------------------------- shared by the corpus importers below


@dataclass
class _Candidate:
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


def _keep_valid(
    result: PrepareResult,
    candidates: Sequence[_Candidate],
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
    checked: list[_Candidate] = []
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

    paths = sorted({c.audio for c in checked})
    infos = dict(zip(paths, _audio_infos(paths, num_threads, progress, desc="reading audio headers")))
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
        too_short = _ctc_too_short(c.text, duration, frames_per_second) if frames_per_second else None
        if too_short:
            result.skipped.append((c.id, f"{too_short} ({c.audio})"))
            continue
        result.kept.append(Utterance(
            id=c.id, audio=str(c.audio), duration=round(duration, 3), text=c.text, speaker=c.speaker,
            start=None if start is None else round(start, 3), end=None if end is None else round(end, 3)))
    result.kept.sort(key=lambda u: u.id)
    return result


def _corpus_root(corpus_dir: str | os.PathLike) -> Path:
    root = Path(corpus_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    return root


def _read_lines(path: Path, result: PrepareResult, encoding: str = "utf-8") -> list[str] | None:
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


# --------------------------------------------------------------------------- CMU AN4

AN4_SPLITS = ("train", "test")
_AN4_WAV_DIRS = {"train": "an4_clstk", "test": "an4test_clstk"}
_AN4_LINE = re.compile(r"^(.*)\(([^()\s]+)\)\s*$")


def prepare_an4(
    corpus_dir: str | os.PathLike,
    split: str,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import CMU AN4 as unpacked from an4_sphere.tar.gz: `corpus_dir` is the `an4` folder (or
    the folder holding it) with `etc/an4_{split}.transcription`, `etc/an4_{split}.fileids` and
    `wav/an4_clstk/<spk>/<id>.sph` (train) or `wav/an4test_clstk/<spk>/<id>.sph` (test).

    A transcription line is `<s> TEXT </s> (an251-fash-b)`: the id in parentheses, <s>/</s>/<sil>
    dropped. The audio path comes from the fileids line with that id (`an4_clstk/fash/an251-fash-b`),
    the speaker from its folder. The raw archive's headerless `.raw` files are reported, not read.
    """
    if split not in AN4_SPLITS:
        raise ValueError(f"unknown AN4 split {split!r}; choose one of {', '.join(AN4_SPLITS)}")
    root = _corpus_root(corpus_dir)
    if not (root / "etc").is_dir() and (root / "an4" / "etc").is_dir():
        root = root / "an4"
    result = PrepareResult()
    transcription = root / "etc" / f"an4_{split}.transcription"
    if not transcription.is_file():
        raise FileNotFoundError(f"{transcription}: AN4 transcription file not found (is {root} the an4 folder?)")
    lines = _read_lines(transcription, result) or []

    # id -> path below wav/ (without extension), from the fileids list when it is there.
    listed: dict[str, str] = {}
    fileids = root / "etc" / f"an4_{split}.fileids"
    if fileids.is_file():
        for entry in _read_lines(fileids, result) or []:
            entry = entry.strip()
            if entry:
                listed[entry.rsplit("/", 1)[-1]] = entry
    else:
        result.skipped.append((str(fileids), "no fileids list: audio paths derived from the utterance ids"))

    candidates: list[_Candidate] = []
    named: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _AN4_LINE.match(line.strip())
        if not match:
            result.skipped.append((f"{transcription.name}:{number}", f"malformed transcription line: {line.strip()!r}"))
            continue
        raw, utt_id = match.group(1).strip(), match.group(2)
        named.add(utt_id)
        parts = utt_id.split("-")
        relative = listed.get(utt_id)
        if relative is None:
            if listed:
                result.skipped.append((utt_id, f"not in the fileids list: {fileids.name} names no {utt_id}"))
                continue
            if len(parts) < 3:
                result.skipped.append((utt_id, f"malformed utterance id: expected like an251-fash-b, got {utt_id!r}"))
                continue
            relative = f"{_AN4_WAV_DIRS[split]}/{parts[1]}/{utt_id}"
        base = root / "wav" / relative
        audio = base.with_name(base.name + ".sph")
        if not audio.is_file():
            raw_file = base.with_name(base.name + ".raw")
            if raw_file.is_file():
                result.skipped.append((utt_id, f"headerless raw audio: {raw_file} has no header to read; "
                                               f"use the SPHERE archive an4_sphere.tar.gz"))
            else:
                result.skipped.append((utt_id, f"no audio file: {audio}"))
            continue
        speaker = relative.split("/")[-2] if relative.count("/") >= 1 else parts[1]
        text = normalize(drop_markers(raw))
        candidates.append(_Candidate(utt_id, raw, text, speaker, audio))
    for utt_id, relative in sorted(listed.items()):
        if utt_id not in named:
            result.skipped.append((utt_id, f"no transcription line: {relative} is in {fileids.name} only"))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


# --------------------------------------------------------------------------- Mozilla Common Voice

COMMONVOICE_SPLITS = ("train", "dev", "test", "validated", "invalidated", "other")


def normalize_commonvoice(sentence: str, keep_script: bool = False) -> str:
    """Common Voice sentences are written as prose: mixed case, punctuation, typographic quotes
    ("’", "«»", "¿"). By default they get the English alphabet of `normalize` (lower-case a-z and
    apostrophes; accented Latin letters lose their accents, so 'Très' -> 'tres'); other scripts
    vanish. With `keep_script`, letters of every script are kept (lower-cased, NFC), and only
    punctuation and symbols become spaces: for a tokenizer built for the language."""
    if not keep_script:
        return normalize(sentence)
    text = unicodedata.normalize("NFC", sentence.translate(_CV_APOSTROPHES)).lower()
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" and c != "'" else c for c in text)
    text = _CV_STRAY_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


_CV_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_CV_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def prepare_commonvoice(
    corpus_dir: str | os.PathLike,
    split: str,
    keep_script: bool = False,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import one Common Voice split: `corpus_dir` is a language folder of an unpacked release
    (`cv-corpus-<version>/<locale>/`, holding `train.tsv`, `dev.tsv`, `test.tsv`, `validated.tsv`,
    ... and `clips/*.mp3`), or the release folder when it holds a single language.

    The TSV is read by its header, so every release's column set works (from `client_id path
    sentence up_votes down_votes age gender accent locale segment` to the current `client_id path
    sentence_id sentence sentence_domain up_votes down_votes age gender accents variant locale
    segment`). Quotes in sentences are text, not TSV quoting. The id is the clip name without
    `.mp3`, the speaker the client_id; text goes through `normalize_commonvoice`.
    """
    root = _corpus_root(corpus_dir)
    tsv = root / f"{split}.tsv"
    if not tsv.is_file():
        found = sorted(p.parent for p in root.glob(f"*/{split}.tsv"))
        if len(found) == 1:
            root, tsv = found[0], found[0] / f"{split}.tsv"
        elif found:
            raise ValueError(f"{root} holds several languages ({', '.join(p.name for p in found)}); "
                             f"point --corpus-dir at one of them")
        else:
            raise FileNotFoundError(f"{tsv}: Common Voice split not found (splits: {', '.join(COMMONVOICE_SPLITS)})")
    result = PrepareResult()
    rows = _read_table(tsv, "\t", result)
    if rows is None:
        return result
    header, body = rows
    missing = [c for c in ("path", "sentence") if c not in header]
    if missing:
        raise ValueError(f"{tsv}: no {' or '.join(missing)} column in the header {header}")
    column = {name: i for i, name in enumerate(header)}
    clips = root / "clips"
    candidates: list[_Candidate] = []
    for number, row in body:
        if len(row) < len(header):
            result.skipped.append((f"{tsv.name}:{number}", f"malformed row: {len(row)} fields, the header has {len(header)}"))
            continue
        clip = row[column["path"]]
        audio = clips / clip
        if not audio.suffix and not audio.is_file():  # early releases named clips without '.mp3'
            audio = audio.with_name(clip + ".mp3")
        raw = row[column["sentence"]]
        speaker = row[column["client_id"]] if "client_id" in column else ""
        utt_id = Path(clip).stem if Path(clip).suffix else clip
        if not audio.is_file():
            result.skipped.append((utt_id, f"no audio file: {audio}"))
            continue
        candidates.append(_Candidate(utt_id, raw, normalize_commonvoice(raw, keep_script), speaker, audio))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


def _read_table(path: Path, delimiter: str, result: PrepareResult) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """(header, [(line number, fields)]) of a delimited text file read without any quoting rules
    (a '"' in a transcript is text). None, with the reason recorded, when it cannot be read."""
    lines = _read_lines(path, result, encoding="utf-8-sig")
    if lines is None:
        return None
    if not lines:
        result.skipped.append((str(path), "empty metadata file: no header line"))
        return None
    header = [h.strip() for h in lines[0].split(delimiter)]
    body = [(n, line.split(delimiter)) for n, line in enumerate(lines[1:], 2) if line.strip()]
    return header, body


# --------------------------------------------------------------------------- TED-LIUM release 3

TEDLIUM_SPLITS = ("train", "dev", "test")
TEDLIUM_LAYOUTS = ("default", "legacy", "speaker-adaptation")
_STM_LABEL = re.compile(r"^<[^<>]*,[^<>]*>$")  # <o,f0,male>; <unk> has no comma


def normalize_tedlium(text: str) -> str:
    """TED-LIUM transcripts are lower-case words with contractions split off ("it 's", "we 're"),
    <unk> for unintelligible words and, in older releases, {NOISE}-style markers and '(2)'
    pronunciation variants. Markers and variants go, split-off suffixes are joined back
    ("it 's" -> "it's"), then `normalize`."""
    words: list[str] = []
    for word in drop_markers(text).split():
        if word.startswith("'") and words:
            words[-1] += word
        else:
            words.append(word)
    return normalize(" ".join(words))


def prepare_tedlium(
    corpus_dir: str | os.PathLike,
    split: str,
    layout: str = "default",
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import TED-LIUM release 3 (`TEDLIUM_release-3/`): each talk is one `sph/<talk>.sph` with an
    `stm/<talk>.stm` whose lines `talk channel speaker start end <o,f0,gender> text` are the
    utterances: segments of the talk, kept as `start`/`end` in the manifest.

    Layouts: 'default' takes train from `data/` (the 452 h release-3 training set) and dev/test from
    `legacy/`; 'legacy' and 'speaker-adaptation' take all three from that folder. A folder that
    holds `stm/` and `sph/` itself is used as it is. Segments whose text is
    'ignore_time_segment_in_scoring' are skipped (not transcribed). Ids are
    `<talk>-<start cs>-<end cs>` (centiseconds, 7 digits), as in Kaldi's TED-LIUM recipe.
    """
    if split not in TEDLIUM_SPLITS:
        raise ValueError(f"unknown TED-LIUM split {split!r}; choose one of {', '.join(TEDLIUM_SPLITS)}")
    if layout not in TEDLIUM_LAYOUTS:
        raise ValueError(f"unknown TED-LIUM layout {layout!r}; choose one of {', '.join(TEDLIUM_LAYOUTS)}")
    root = _corpus_root(corpus_dir)
    if not (root / "stm").is_dir() and (root / "TEDLIUM_release-3").is_dir():
        root = root / "TEDLIUM_release-3"
    if (root / "stm").is_dir():
        folder = root
    elif layout == "default":
        folder = root / "data" if split == "train" else root / "legacy" / split
    else:
        folder = root / layout / split
    if not (folder / "stm").is_dir():
        raise FileNotFoundError(f"{folder / 'stm'}: TED-LIUM stm folder not found (is {root} TEDLIUM_release-3?)")
    result = PrepareResult()
    candidates: list[_Candidate] = []
    for stm in sorted((folder / "stm").glob("*.stm")):
        lines = _read_lines(stm, result)
        if lines is None:
            continue
        audio = folder / "sph" / f"{stm.stem}.sph"
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(";;"):
                continue
            fields = line.split()
            key = f"{stm.name}:{number}"
            try:
                talk, speaker, start, end = fields[0], fields[2], float(fields[3]), float(fields[4])
            except (IndexError, ValueError):
                result.skipped.append((key, f"malformed stm line: {line.strip()!r}"))
                continue
            words = fields[5:]
            if words and _STM_LABEL.match(words[0]):
                words = words[1:]
            raw = " ".join(words)
            utt_id = f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}"
            if raw == "ignore_time_segment_in_scoring":
                result.skipped.append((utt_id, "not transcribed: ignore_time_segment_in_scoring"))
                continue
            if not audio.is_file():
                result.skipped.append((utt_id, f"no audio file: {audio}"))
                continue
            candidates.append(_Candidate(utt_id, raw, normalize_tedlium(raw), speaker, audio, start, end))
    if not candidates and not result.skipped:
        result.skipped.append((str(folder / "stm"), "no transcripts: no *.stm file in this folder"))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


# --------------------------------------------------------------------------- LJSpeech

LJSPEECH_SPLITS = ("train", "dev", "test", "all")
LJSPEECH_HELD_OUT = 250  # dev and test sizes: the last 500 ids, as in ESPnet's LJSpeech recipe


def prepare_ljspeech(
    corpus_dir: str | os.PathLike,
    split: str = "all",
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import LJSpeech (`LJSpeech-1.1/`: `metadata.csv` and `wavs/<id>.wav`, one speaker).

    metadata.csv is UTF-8, '|'-separated, no header, three fields: id, the text as read from the
    book, and its normalized form (numbers, abbreviations and symbols spelled out); the normalized
    one is used. Quotes are part of the text, not CSV quoting. LJSpeech has no official split:
    sorted by id, the last 500 utterances are held out, the first 250 of them as 'dev', the last
    250 as 'test' (ESPnet's convention); 'train' is the rest, 'all' everything.
    """
    if split not in LJSPEECH_SPLITS:
        raise ValueError(f"unknown LJSpeech split {split!r}; choose one of {', '.join(LJSPEECH_SPLITS)}")
    root = _corpus_root(corpus_dir)
    if not (root / "metadata.csv").is_file() and (root / "LJSpeech-1.1" / "metadata.csv").is_file():
        root = root / "LJSpeech-1.1"
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: LJSpeech metadata not found")
    result = PrepareResult()
    rows: list[tuple[str, str]] = []
    for number, line in enumerate(_read_lines(metadata, result) or [], 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 3 or not fields[0].strip():
            result.skipped.append((f"{metadata.name}:{number}", f"malformed line: {len(fields)} '|'-separated fields, expected 3"))
            continue
        rows.append((fields[0].strip(), fields[2]))
    rows.sort()
    cut = max(0, len(rows) - 2 * LJSPEECH_HELD_OUT)
    parts = {"train": rows[:cut], "dev": rows[cut:cut + LJSPEECH_HELD_OUT], "test": rows[cut + LJSPEECH_HELD_OUT:], "all": rows}
    candidates = []
    for utt_id, raw in parts[split]:
        audio = root / "wavs" / f"{utt_id}.wav"
        if not audio.is_file():
            result.skipped.append((utt_id, f"no audio file: {audio}"))
            continue
        candidates.append(_Candidate(utt_id, raw, normalize(raw), "LJ", audio))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


# --------------------------------------------------------------------------- a folder of audio plus a CSV/TSV

_PATH_COLUMNS = ("path", "audio", "audio_filepath", "file", "filename", "file_name", "wav", "audio_path")
_TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")
_SPEAKER_COLUMNS = ("speaker", "speaker_id", "spk", "client_id")


def prepare_folder(
    table: str | os.PathLike,
    audio_dir: str | os.PathLike,
    path_column: str | None = None,
    text_column: str | None = None,
    speaker_column: str | None = None,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import your own data: audio files below `audio_dir` and a CSV or TSV `table` with a header
    row naming, per file, its path (relative to `audio_dir`, or absolute) and its transcript.

    The delimiter is a tab for .tsv/.tab files and otherwise sniffed (comma, semicolon, tab, '|');
    standard CSV quoting applies (a quoted field may hold the delimiter). Columns default to the
    first header name found among path/audio/file/filename/wav..., text/transcript/sentence..., and
    speaker/speaker_id/client_id (optional). The id is the path below `audio_dir` without its
    extension, folders joined by '-'. Text goes through `normalize`.
    """
    table, audio_root = Path(table).expanduser().resolve(), _corpus_root(audio_dir)
    if not table.is_file():
        raise FileNotFoundError(f"{table}: transcript table not found")
    result = PrepareResult()
    lines = _read_lines(table, result, encoding="utf-8-sig")
    if not lines:
        raise ValueError(f"{table}: empty or unreadable transcript table")
    if table.suffix.lower() in (".tsv", ".tab"):
        delimiter = "\t"
    else:
        try:
            delimiter = csv.Sniffer().sniff(lines[0], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    lowered = [h.lower() for h in header]

    def pick(given: str | None, defaults: tuple[str, ...], what: str, required: bool = True) -> int | None:
        if given is not None:
            if given not in header:
                raise ValueError(f"{table}: no column {given!r} for the {what}; the header is {header}")
            return header.index(given)
        for name in defaults:
            if name in lowered:
                return lowered.index(name)
        if required:
            raise ValueError(f"{table}: no {what} column found in the header {header}; "
                             f"name it with --{what}-column")
        return None

    path_i = pick(path_column, _PATH_COLUMNS, "path")
    text_i = pick(text_column, _TEXT_COLUMNS, "text")
    speaker_i = pick(speaker_column, _SPEAKER_COLUMNS, "speaker", required=False)
    candidates = []
    for number, row in enumerate(reader, 2):
        if not any(field.strip() for field in row):
            continue
        if len(row) <= max(i for i in (path_i, text_i, speaker_i) if i is not None):
            result.skipped.append((f"{table.name}:{number}", f"malformed row: {len(row)} fields, the header has {len(header)}"))
            continue
        name = row[path_i].strip()
        audio = Path(name) if os.path.isabs(name) else audio_root / name
        if not audio.is_file():
            result.skipped.append((f"{table.name}:{number}", f"no audio file: {audio}"))
            continue
        try:
            relative = audio.resolve().relative_to(audio_root)
        except ValueError:
            relative = Path(audio.name)
        utt_id = "-".join(relative.with_suffix("").parts)
        raw = row[text_i]
        speaker = row[speaker_i].strip() if speaker_i is not None else ""
        candidates.append(_Candidate(utt_id, raw, normalize(raw), speaker, audio))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


# --------------------------------------------------------------------------- Kaldi data directories


def _kaldi_table(path: Path, result: PrepareResult) -> dict[str, str]:
    """A Kaldi 'key value...' file as {key: rest of the line}; later duplicates are reported."""
    table: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path, result) or [], 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in table:
            result.skipped.append((parts[0], f"duplicate key: {path.name}:{number}"))
            continue
        table[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return table


def prepare_kaldi(
    data_dir: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import a Kaldi data directory: `wav.scp` and `text` (required), `utt2spk`, `segments` and
    `reco2dur` (optional).

    Without `segments`, wav.scp maps utterance ids to audio; with it, wav.scp maps recording ids
    and each `utt reco start end` line is a segment (end -1: to the end of the recording). Only
    plain file paths are read: pipe entries (`sox x.wav -t wav - |`) and archive offsets
    (`feats.ark:12`) are skipped with the reason, since no shell command is run. Relative paths
    are resolved against `audio_root` (default: the current folder, then the data directory's
    grandparent, where Kaldi recipes run). Text: markers such as <UNK> or [noise] are dropped,
    then `normalize`.
    """
    data = _corpus_root(data_dir)
    for required in ("wav.scp", "text"):
        if not (data / required).is_file():
            raise FileNotFoundError(f"{data / required}: not a Kaldi data directory (it needs wav.scp and text)")
    result = PrepareResult()
    wav_scp = _kaldi_table(data / "wav.scp", result)
    texts = _kaldi_table(data / "text", result)
    utt2spk = _kaldi_table(data / "utt2spk", result) if (data / "utt2spk").is_file() else {}
    reco2dur = _kaldi_table(data / "reco2dur", result) if (data / "reco2dur").is_file() else {}
    bases = [Path(audio_root).expanduser().resolve()] if audio_root is not None else [Path.cwd(), data.parent.parent]

    audio: dict[str, Path | str] = {}  # recording -> path, or the skip reason
    for reco, value in wav_scp.items():
        if value.endswith("|"):
            audio[reco] = f"pipe command in wav.scp: {value!r} (shell commands are not run; write the audio to files first)"
        elif re.search(r"\.ark:\d+$", value):
            audio[reco] = f"archive offset in wav.scp: {value!r} (only plain audio files are read)"
        else:
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = next((b / path for b in bases if (b / path).is_file()), bases[0] / path).resolve()
            audio[reco] = path

    segments: dict[str, tuple[str, float, float | None]] = {}
    if (data / "segments").is_file():
        for utt, value in _kaldi_table(data / "segments", result).items():
            fields = value.split()
            try:
                reco, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                result.skipped.append((utt, f"malformed segments line: {value!r}"))
                continue
            if end < 0:  # -1: to the end of the recording
                end = float(reco2dur[reco]) if _is_number(reco2dur.get(reco, "")) else None
            segments[utt] = (reco, start, end)
        utterances = segments
    else:
        utterances = {utt: (utt, None, None) for utt in wav_scp}

    candidates = []
    for utt, (reco, start, end) in utterances.items():
        if utt not in texts:
            result.skipped.append((utt, "no transcript: not in text"))
            continue
        source = audio.get(reco)
        if source is None:
            result.skipped.append((utt, f"no audio: recording {reco} is not in wav.scp"))
            continue
        if isinstance(source, str):
            result.skipped.append((utt, source))
            continue
        if not source.is_file():
            result.skipped.append((utt, f"no audio file: {source}"))
            continue
        raw = texts[utt]
        candidates.append(_Candidate(utt, raw, normalize(drop_markers(raw)), utt2spk.get(utt, ""), source, start, end))
    for utt in sorted(set(texts) - set(utterances)):
        result.skipped.append((utt, "no audio: in text, but not in " + ("segments" if segments else "wav.scp")))
    return _keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def prepare_speechocean762(
    corpus_dir: str | os.PathLike,
    split: str,
    max_duration: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import speechocean762 (OpenSLR 101, CC BY 4.0: read English from Mandarin-L1 speakers, about
    40% children): `<corpus>/{train,test}/` are Kaldi data directories (`text`, `wav.scp`, `utt2spk`,
    ...) whose wav.scp paths (`WAVE/SPEAKERnnnn/<utt>.wav`, or .opus in re-encoded copies) are
    relative to the corpus folder. Transcripts are the prompts that were read, upper case."""
    if split not in ("train", "test"):
        raise ValueError(f"speechocean762 has the splits train and test, not {split!r}")
    root = _corpus_root(corpus_dir)
    if not (root / split / "wav.scp").is_file():
        raise FileNotFoundError(f"{root / split}: not a speechocean762 split (no wav.scp); --corpus-dir is the "
                                "folder holding train/, test/ and WAVE/")
    return prepare_kaldi(root / split, audio_root=root, max_duration=max_duration, num_threads=num_threads,
                         progress=progress)


def export_kaldi(utts: Sequence[Utterance], data_dir: str | os.PathLike) -> Path:
    """Write manifest utterances as a Kaldi data directory: `wav.scp`, `text`, `utt2spk`,
    `spk2utt`, `utt2dur`, and `segments` plus `reco2dur` when any utterance is a segment of a
    longer file (then every utterance gets a segment line, whole files from 0 to their duration).

    Lines are sorted by id in byte order (Kaldi's `LC_ALL=C sort`). Utterances without a speaker
    are their own speaker, as Kaldi expects. Recording ids are the audio file names without
    extension, made unique with a numeric suffix. Raises ValueError for ids or speakers with
    whitespace, which Kaldi tables cannot hold, and for repeated ids.
    """
    data = Path(data_dir)
    utts = sorted(utts, key=lambda u: u.id.encode("utf-8"))
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        raise ValueError("the manifest repeats utterance ids; a Kaldi data directory cannot hold them")
    for u in utts:
        if not u.id or any(c.isspace() for c in u.id) or any(c.isspace() for c in u.speaker):
            raise ValueError(f"utterance {u.id!r} (speaker {u.speaker!r}): Kaldi ids cannot be empty or hold whitespace")
    segmented = any(u.start is not None or u.end is not None for u in utts)

    recordings: dict[str, str] = {}  # audio path -> recording id
    taken: set[str] = set()
    for u in utts:
        if u.audio in recordings:
            continue
        stem = Path(u.audio).stem.replace(" ", "_") or "rec"
        reco, n = stem, 1
        while reco in taken:
            n += 1
            reco = f"{stem}-{n}"
        taken.add(reco)
        recordings[u.audio] = reco

    files: dict[str, list[str]] = {"text": [], "utt2spk": [], "utt2dur": []}
    spk2utt: dict[str, list[str]] = {}
    if segmented:
        files["segments"] = []
        reco2dur: dict[str, float] = {}
        for u in utts:
            start = u.start or 0.0
            end = u.end if u.end is not None else start + u.duration
            reco = recordings[u.audio]
            files["segments"].append(f"{u.id} {reco} {start:.3f} {end:.3f}")
            if u.start is None and u.end is None:
                reco2dur[reco] = max(reco2dur.get(reco, 0.0), u.duration)
        files["wav.scp"] = [f"{reco} {path}" for path, reco in sorted(recordings.items(), key=lambda kv: kv[1].encode())]
        if reco2dur and len(reco2dur) == len(recordings):
            files["reco2dur"] = [f"{reco} {d:.3f}" for reco, d in sorted(reco2dur.items(), key=lambda kv: kv[0].encode())]
    else:
        files["wav.scp"] = [f"{u.id} {u.audio}" for u in utts]
    for u in utts:
        speaker = u.speaker or u.id
        files["text"].append(f"{u.id} {u.text}".rstrip())
        files["utt2spk"].append(f"{u.id} {speaker}")
        files["utt2dur"].append(f"{u.id} {u.duration:.3f}")
        spk2utt.setdefault(speaker, []).append(u.id)
    files["spk2utt"] = [f"{s} {' '.join(us)}" for s, us in sorted(spk2utt.items(), key=lambda kv: kv[0].encode())]

    data.mkdir(parents=True, exist_ok=True)
    for name in ("segments", "reco2dur"):  # stale ones from an earlier export would contradict wav.scp
        if name not in files and (data / name).exists():
            (data / name).unlink()
    for name, lines in files.items():
        tmp = data / f".{name}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, data / name)
    return data
