"""Corpus importers: turn a corpus folder into a list of manifest utterances.

Every importer validates what it reads and never stops at a bad entry: each problem (missing
audio, a corrupt file, an empty transcript, ...) becomes a `skipped` entry with a reason, so one
broken file in a 100-hour corpus costs that file and not the run. `PrepareResult.summary` reports
what was kept and what was dropped and why.

Skip reasons are written "category: details"; the summary groups them by the category.
"""

from __future__ import annotations

import os
import re
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
        return f"unreadable audio: {e}"
    if info.num_frames <= 0:
        return f"empty audio: 0 samples in {path}"
    return info


def _header_frames(path: Path) -> int | None:
    try:
        return int(soundfile.info(str(path)).frames)
    except Exception:  # any libsndfile failure means "not readable", handled by the caller
        return None
