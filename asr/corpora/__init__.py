"""Corpora: one module per corpus (its importer, its download where it has one, and its
`asr prepare` options), the shared machinery in `common` and `download` (resumable, checksummed
downloads and safe one-time extraction), and the registry `CORPORA` that the CLI
(`asr prepare NAME`, `asr download NAME`) and the recipes use.

Adding a corpus is adding one module that defines a `Corpus` entry and one line below (plus its
test file). Importers return a `PrepareResult` (kept utterances and skipped entries with reasons).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import an4, commonvoice, folder, fsdd, kaldi, librispeech, ljspeech, speechocean762, tedlium
from .common import Corpus, PrepareResult, reason_category

# Name -> entry, in the order `asr prepare --help` and `asr download --help` list them.
CORPORA: dict[str, Corpus] = {c.name: c for c in (
    librispeech.LIBRISPEECH,
    librispeech.MINI_LIBRISPEECH,
    librispeech.LIBRISPEECH_LM,
    fsdd.CORPUS,
    an4.CORPUS,
    commonvoice.CORPUS,
    tedlium.CORPUS,
    ljspeech.CORPUS,
    speechocean762.CORPUS,
    kaldi.CORPUS,
    folder.CORPUS,
)}


def preparable() -> list[str]:
    """Names `asr prepare` takes."""
    return [name for name, c in CORPORA.items() if c.prepare is not None]


def downloadable() -> list[str]:
    """Names `asr download` takes."""
    return [name for name, c in CORPORA.items() if c.download is not None]


def download_corpus(corpus: str, dest: str | os.PathLike, subsets: list[str] | None = None,
                    archive: str | None = None) -> Path:
    """`asr download`: fetch a corpus into `dest` and return the folder to give `asr prepare`.

    'librispeech' needs the subsets named (all of them are ~60 GB); 'mini-librispeech' defaults to
    both of its subsets; 'librispeech-lm' takes LM file names (default: vocabulary, lexicon and
    the pruned 3-gram); 'commonvoice' needs `archive` (the downloaded .tar.gz or its link); the
    others take none.
    """
    entry = CORPORA.get(corpus)
    if entry is None or entry.download is None:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {', '.join(downloadable())}")
    return entry.download(Path(dest), subsets, archive)


__all__ = ["CORPORA", "Corpus", "PrepareResult", "download_corpus", "downloadable", "preparable", "reason_category"]
