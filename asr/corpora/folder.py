"""Your own data: a folder of audio files plus a CSV/TSV table of path and transcript."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, keep_valid, read_lines

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
    table, audio_root = Path(table).expanduser().resolve(), corpus_root(audio_dir)
    if not table.is_file():
        raise FileNotFoundError(f"{table}: transcript table not found")
    result = PrepareResult()
    lines = read_lines(table, result, encoding="utf-8-sig")
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
        candidates.append(Candidate(utt_id, raw, normalize(raw), speaker, audio))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, type=Path, help="CSV or TSV with a header row")
    parser.add_argument("--audio-dir", required=True, type=Path, help="folder the paths in the table are relative to")
    parser.add_argument("--path-column", default=None, help="default: path, audio, file, filename, wav, ...")
    parser.add_argument("--text-column", default=None, help="default: text, transcript, transcription, sentence, ...")
    parser.add_argument("--speaker-column", default=None, help="default: speaker, speaker_id or client_id if present")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_folder(args.csv, args.audio_dir, path_column=args.path_column, text_column=args.text_column,
                          speaker_column=args.speaker_column, max_duration=args.max_duration)


CORPUS = Corpus("folder", "your own data: a folder of audio files plus a CSV/TSV of path and transcript",
                _add_arguments, _prepare)
