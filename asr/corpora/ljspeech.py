"""LJSpeech 1.1 (one speaker reading books): `metadata.csv` + `wavs/<id>.wav`, and its download."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, keep_valid, \
    no_download_options, read_lines
from .download import CorpusArchive, download_archive

# keithito.com (2.6 GB). sha256 as in torchaudio's torchaudio/datasets/ljspeech.py.
ARCHIVE = CorpusArchive("https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2",
                        "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5", None, "LJSpeech-1.1")

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
    root = corpus_root(corpus_dir)
    if not (root / "metadata.csv").is_file() and (root / "LJSpeech-1.1" / "metadata.csv").is_file():
        root = root / "LJSpeech-1.1"
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: LJSpeech metadata not found")
    result = PrepareResult()
    rows: list[tuple[str, str]] = []
    for number, line in enumerate(read_lines(metadata, result) or [], 1):
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
        candidates.append(Candidate(utt_id, raw, normalize(raw), "LJ", audio))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, help="the LJSpeech-1.1 folder")
    parser.add_argument("--split", default="all", choices=["train", "dev", "test", "all"],
                        help="dev/test: 250 utterances each from the end of the id order")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_ljspeech(args.corpus_dir, args.split, max_duration=args.max_duration)


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    no_download_options("ljspeech", subsets, archive)
    return download_archive(ARCHIVE, dest)


CORPUS = Corpus("ljspeech", "LJSpeech: metadata.csv (id|text|normalized text) + wavs/<id>.wav", _add_arguments,
                _prepare, _download)
