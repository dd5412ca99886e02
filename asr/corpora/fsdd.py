"""The Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{index}.wav`, and its download."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from .common import Corpus, PrepareResult, add_output_options, audio_infos, ctc_too_short, no_download_options
from .download import DownloadError, download, extract

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_SPLITS = ("train", "test", "all")
_FSDD_NAME = re.compile(r"^(\d)_(.+)_(\d+)$")

# A GitHub tag archive: GitHub publishes no checksum for it (and may regenerate it).
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_ARCHIVE = "free-spoken-digit-dataset-1.0.10.tar.gz"


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

    from ..data import Utterance  # imports torch: see asr.corpora.common

    infos = audio_infos([c[3] for c in candidates], num_threads, progress, desc="reading audio headers")
    for (utt_id, text, speaker, path), info in zip(candidates, infos):
        if isinstance(info, str):
            result.skipped.append((utt_id, info))
            continue
        too_short = ctc_too_short(text, info.duration, frames_per_second) if frames_per_second else None
        if too_short:
            result.skipped.append((utt_id, f"{too_short} ({path})"))
            continue
        result.kept.append(Utterance(id=utt_id, audio=str(path), duration=round(info.duration, 3), text=text, speaker=speaker))
    result.kept.sort(key=lambda u: u.id)
    return result

def download_fsdd(dest_dir: str | os.PathLike, url: str = FSDD_URL, progress: bool = True) -> Path:
    """Download and extract the Free Spoken Digit Dataset into `dest_dir`; returns the folder that
    holds `recordings/` (what prepare_fsdd takes)."""
    dest_dir = Path(dest_dir)
    archive = dest_dir / FSDD_ARCHIVE
    if not (dest_dir / f".extracted-{FSDD_ARCHIVE}").exists():
        extract(download(url, archive, progress=progress), dest_dir)
    # The archive's top folder is named by GitHub (repository-tag), so look for it.
    found = sorted(p.parent for p in dest_dir.glob("*/recordings") if p.is_dir())
    if not found:
        raise DownloadError(f"{archive} did not contain a recordings/ folder")
    return found[0]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path)
    parser.add_argument("--split", required=True, choices=["train", "test", "all"], help="official split: index 0-4 is test")
    add_output_options(parser, max_duration=False)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_fsdd(args.corpus_dir, args.split)


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    no_download_options("fsdd", subsets, archive)
    return download_fsdd(dest)


CORPUS = Corpus("fsdd", "Free Spoken Digit Dataset: recordings/{digit}_{speaker}_{index}.wav", _add_arguments, _prepare,
                _download)
