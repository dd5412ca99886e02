"""TED-LIUM release 3: `stm/<talk>.stm` segments of `sph/<talk>.sph`, and its download."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, drop_markers, keep_valid, \
    no_download_options, read_lines
from .download import CorpusArchive, download_archive

# openslr resource 51 (~51 GB). sha256 as in torchaudio's torchaudio/datasets/tedlium.py.
ARCHIVE = CorpusArchive("https://www.openslr.org/resources/51/TEDLIUM_release-3.tgz",
                        "ad1e454d14d1ad550bc2564c462d87c7a7ec83d4dc2b9210f22ab4973b9eccdb", None, "TEDLIUM_release-3")

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
    root = corpus_root(corpus_dir)
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
    candidates: list[Candidate] = []
    for stm in sorted((folder / "stm").glob("*.stm")):
        lines = read_lines(stm, result)
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
            candidates.append(Candidate(utt_id, raw, normalize_tedlium(raw), speaker, audio, start, end))
    if not candidates and not result.skipped:
        result.skipped.append((str(folder / "stm"), "no transcripts: no *.stm file in this folder"))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, help="TEDLIUM_release-3 (or a folder with stm/ and sph/)")
    parser.add_argument("--split", required=True, choices=["train", "dev", "test"])
    parser.add_argument("--layout", default="default", choices=["default", "legacy", "speaker-adaptation"],
                        help="default: train from data/, dev and test from legacy/")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_tedlium(args.corpus_dir, args.split, layout=args.layout, max_duration=args.max_duration)


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    no_download_options("tedlium", subsets, archive)
    return download_archive(ARCHIVE, dest)


CORPUS = Corpus("tedlium", "TED-LIUM release 3: stm/<talk>.stm segments of sph/<talk>.sph", _add_arguments, _prepare,
                _download)
