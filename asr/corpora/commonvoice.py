"""Mozilla Common Voice: one language's `<split>.tsv` + `clips/*.mp3`, and unpacking the archive
downloaded by hand."""

from __future__ import annotations

import argparse
import os
import re
import unicodedata
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, keep_valid, read_table
from .download import DownloadError, checksum_problems, download, extract

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
    root = corpus_root(corpus_dir)
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
    rows = read_table(tsv, "\t", result)
    if rows is None:
        return result
    header, body = rows
    missing = [c for c in ("path", "sentence") if c not in header]
    if missing:
        raise ValueError(f"{tsv}: no {' or '.join(missing)} column in the header {header}")
    column = {name: i for i, name in enumerate(header)}
    clips = root / "clips"
    candidates: list[Candidate] = []
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
        candidates.append(Candidate(utt_id, raw, normalize_commonvoice(raw, keep_script), speaker, audio))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


def unpack_commonvoice(archive: str, dest_dir: str | os.PathLike, sha256: str | None = None,
                       progress: bool = True) -> Path:
    """Common Voice is downloaded by hand (its site asks for an e-mail address and agreement to
    its terms): `archive` is that .tar.gz, or the download link it gave (fetched with resume).
    Extracts it into `dest_dir` once and returns the language folder inside (the one holding
    validated.tsv), or `dest_dir` when the archive holds several languages."""
    dest_dir = Path(dest_dir)
    if "://" in archive:
        name = archive.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "commonvoice.tar.gz"
        path = dest_dir / name
        if not (dest_dir / f".extracted-{name}").exists():
            download(archive, path, sha256=sha256, progress=progress)
    else:
        path = Path(archive).expanduser()
        if not (dest_dir / f".extracted-{path.name}").exists():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: Common Voice archive not found")
            problems = checksum_problems(path, sha256, None)
            if problems:
                raise DownloadError(f"{path} is not the expected archive: {'; '.join(problems)}")
    extract(path, dest_dir)
    found = sorted({p.parent for p in dest_dir.glob("*/*/validated.tsv")} | {p.parent for p in dest_dir.glob("*/validated.tsv")})
    return found[0] if len(found) == 1 else dest_dir


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, help="the language folder, e.g. cv-corpus-17.0-2024-03-15/en")
    parser.add_argument("--split", required=True, choices=["train", "dev", "test", "validated", "invalidated", "other"])
    parser.add_argument("--keep-script", action="store_true",
                        help="keep letters of any script (default: map text to the English a-z alphabet)")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_commonvoice(args.corpus_dir, args.split, keep_script=args.keep_script, max_duration=args.max_duration)


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    if subsets:
        raise ValueError("commonvoice has no subsets to choose; drop --subsets")
    if not archive:
        raise ValueError("Common Voice is downloaded by hand from https://commonvoice.mozilla.org/datasets "
                         "(it asks for agreement to its terms): pass the .tar.gz or its download link with --archive")
    return unpack_commonvoice(archive, dest)


CORPUS = Corpus("commonvoice", "Mozilla Common Voice: <split>.tsv + clips/*.mp3 of one language", _add_arguments,
                _prepare, _download)
