"""CMU AN4 (alphanumeric census utterances, SPHERE audio): the importer and its download."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, drop_markers, keep_valid, \
    no_download_options, read_lines
from .download import CorpusArchive, download_archive

# CMU publishes no checksum for AN4 (64 MB, 948 train + 130 test utterances, SPHERE audio).
ARCHIVE = CorpusArchive("http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz", None, None, "an4")

AN4_SPLITS = ("train", "test")
_AN4_WAV_DIRS = {"train": "an4_clstk", "test": "an4test_clstk"}
_AN4_LINE = re.compile(r"^(.*)\(([^()\s]+)\)\s*$")


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
    root = corpus_root(corpus_dir)
    if not (root / "etc").is_dir() and (root / "an4" / "etc").is_dir():
        root = root / "an4"
    result = PrepareResult()
    transcription = root / "etc" / f"an4_{split}.transcription"
    if not transcription.is_file():
        raise FileNotFoundError(f"{transcription}: AN4 transcription file not found (is {root} the an4 folder?)")
    lines = read_lines(transcription, result) or []

    # id -> path below wav/ (without extension), from the fileids list when it is there.
    listed: dict[str, str] = {}
    fileids = root / "etc" / f"an4_{split}.fileids"
    if fileids.is_file():
        for entry in read_lines(fileids, result) or []:
            entry = entry.strip()
            if entry:
                listed[entry.rsplit("/", 1)[-1]] = entry
    else:
        result.skipped.append((str(fileids), "no fileids list: audio paths derived from the utterance ids"))

    candidates: list[Candidate] = []
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
        candidates.append(Candidate(utt_id, raw, text, speaker, audio))
    for utt_id, relative in sorted(listed.items()):
        if utt_id not in named:
            result.skipped.append((utt_id, f"no transcription line: {relative} is in {fileids.name} only"))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, help="the an4 folder (holding etc/ and wav/)")
    parser.add_argument("--split", required=True, choices=["train", "test"])
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_an4(args.corpus_dir, args.split, max_duration=args.max_duration)


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    no_download_options("an4", subsets, archive)
    return download_archive(ARCHIVE, dest)


CORPUS = Corpus("an4", "CMU AN4: etc/an4_{train,test}.transcription + wav/*/<spk>/<id>.sph", _add_arguments, _prepare,
                _download)
