"""speechocean762 (OpenSLR 101): Kaldi data directories `train/`, `test/` whose audio is in `WAVE/`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import Corpus, PrepareResult, add_output_options, corpus_root
from .kaldi import prepare_kaldi


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
    root = corpus_root(corpus_dir)
    if not (root / split / "wav.scp").is_file():
        raise FileNotFoundError(f"{root / split}: not a speechocean762 split (no wav.scp); --corpus-dir is the "
                                "folder holding train/, test/ and WAVE/")
    return prepare_kaldi(root / split, audio_root=root, max_duration=max_duration, num_threads=num_threads,
                         progress=progress)

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, help="the folder holding train/, test/ and WAVE/")
    parser.add_argument("--split", required=True, choices=["train", "test"])
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_speechocean762(args.corpus_dir, args.split, max_duration=args.max_duration)


CORPUS = Corpus("speechocean762", "speechocean762 (OpenSLR 101): Kaldi dirs train/, test/ + WAVE/", _add_arguments,
                _prepare)
