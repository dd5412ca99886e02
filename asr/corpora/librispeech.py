"""LibriSpeech (openslr 12), Mini LibriSpeech (openslr 31) and LibriSpeech's LM resources (openslr 11):
the importer of the `<spk>/<chapter>/<spk>-<chapter>.trans.txt` layout and the downloads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..text import CharTokenizer, normalize
from .common import (
    AUDIO_EXTENSIONS,
    Corpus,
    PrepareResult,
    add_output_options,
    audio_infos,
    ctc_too_short,
)
from .download import download, extract

LIBRISPEECH_URL = "https://www.openslr.org/resources/12"
# subset -> (archive name, md5) as published in https://www.openslr.org/resources/12/md5sum.txt
LIBRISPEECH_SUBSETS: dict[str, tuple[str, str | None]] = {
    "dev-clean": ("dev-clean.tar.gz", "42e2234ba48799c1f50f24a7926300a1"),
    "dev-other": ("dev-other.tar.gz", "c8d0bcc9cca99d4f8b62fcc847357931"),
    "test-clean": ("test-clean.tar.gz", "32fa31d27d2e1cad72775fee3f4849a9"),
    "test-other": ("test-other.tar.gz", "fb5a50374b501bb3bac4815ee91d3135"),
    "train-clean-100": ("train-clean-100.tar.gz", "2a93770f6d5c6c964bc36631d331a522"),
    "train-clean-360": ("train-clean-360.tar.gz", "c0e676e450a7ff2f54aeade5171606fa"),
    "train-other-500": ("train-other-500.tar.gz", "d1a0fd59409feb2c614ce4d30c387708"),
}

# Mini LibriSpeech (a small LibriSpeech subset for quick experiments); md5sum.txt of resource 31.
MINI_LIBRISPEECH_URL = "https://www.openslr.org/resources/31"
MINI_LIBRISPEECH_SUBSETS: dict[str, tuple[str, str | None]] = {
    "dev-clean-2": ("dev-clean-2.tar.gz", "6d7ab67ac6a1d2c993d050e16d61080d"),
    "train-clean-5": ("train-clean-5.tar.gz", "5df7d4e78065366204ca6845bb08f490"),
}

# LibriSpeech's official language-model resources (openslr resource 11), for beam search with a
# lexicon and an n-gram LM. openslr publishes no checksums for them; the sizes (bytes) are those
# Kaldi's egs/librispeech/s5/local/download_lm.sh checks, and download() verifies them.
LIBRISPEECH_LM_URL = "https://www.openslr.org/resources/11"
LIBRISPEECH_LM_FILES: dict[str, int | None] = {
    "librispeech-vocab.txt": 1737588,
    "librispeech-lexicon.txt": 5627653,
    "3-gram.arpa.gz": 759636181,
    "3-gram.pruned.1e-7.arpa.gz": 34094057,
    "3-gram.pruned.3e-7.arpa.gz": 13654242,
    "4-gram.arpa.gz": 1355172078,
}
# Fetched when no file is named: what a lexicon-constrained beam search with an LM needs (~41 MB).
LIBRISPEECH_LM_DEFAULT = ("librispeech-vocab.txt", "librispeech-lexicon.txt", "3-gram.pruned.1e-7.arpa.gz")


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
    transcripts, audio_by_dir = _find_transcripts_and_audio(root)
    if not transcripts:
        result.skipped.append((str(root), "no transcripts: no *.trans.txt file below this folder"))
    candidates, claimed = _read_transcript_lines(transcripts, audio_by_dir, result.skipped)
    result.skipped += _orphan_audio(transcripts, audio_by_dir, claimed)
    checked = _check_transcripts(candidates, tokenizer, result.skipped)
    result.kept = _check_audio(checked, max_duration, frames_per_second, num_threads, progress, result.skipped)
    result.kept.sort(key=lambda u: u.id)
    return result


def _find_transcripts_and_audio(root: Path) -> tuple[list[Path], dict[Path, dict[str, list[Path]]]]:
    """Every *.trans.txt below root, and the audio files by folder and stem. One walk collects both,
    so that orphan audio files are found too; it follows links, as corpora are often assembled from
    symlinked split folders."""
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
    return transcripts, audio_by_dir


def _read_transcript_lines(
    transcripts: list[Path], audio_by_dir: dict[Path, dict[str, list[Path]]], skipped: list[tuple[str, str]],
) -> tuple[list[tuple[str, str, Path]], set[Path]]:
    """Transcript lines -> [(id, raw text, audio path)], and the audio files the lines claim;
    unreadable files, duplicate ids and lines without audio go to `skipped`."""
    candidates: list[tuple[str, str, Path]] = []
    seen: dict[str, Path] = {}
    claimed: set[Path] = set()
    for trans in transcripts:
        folder_audio = audio_by_dir.get(trans.parent, {})
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            skipped.append((str(trans), f"unreadable transcript file: {e}"))
            continue
        for number, line in enumerate(lines, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            utt_id, raw = parts[0], (parts[1] if len(parts) > 1 else "")
            if utt_id in seen:
                skipped.append((utt_id, f"duplicate utterance id: {trans}:{number}, first in {seen[utt_id]}"))
                continue
            seen[utt_id] = trans
            files = folder_audio.get(utt_id)
            if not files:
                exts = ",".join(AUDIO_EXTENSIONS)
                skipped.append((utt_id, f"no audio file: no {utt_id}.{{{exts}}} in {trans.parent}"))
                continue
            files = sorted(files, key=lambda p: AUDIO_EXTENSIONS.index(p.suffix[1:].lower()))
            claimed.update(files)  # other formats of the same utterance are not orphans
            candidates.append((utt_id, raw, files[0]))
    return candidates, claimed


def _orphan_audio(transcripts: list[Path], audio_by_dir: dict[Path, dict[str, list[Path]]],
                  claimed: set[Path]) -> list[tuple[str, str]]:
    """(path, reason) for every audio file no transcript line names."""
    transcript_dirs = {t.parent: t for t in transcripts}
    orphans = []
    for folder, by_stem in sorted(audio_by_dir.items()):
        for paths in by_stem.values():
            for path in paths:
                if path in claimed:
                    continue
                if folder in transcript_dirs:
                    reason = f"no transcript line: {path.stem} is not in {transcript_dirs[folder].name}"
                else:
                    reason = "no transcript line: no *.trans.txt in this folder"
                orphans.append((str(path), reason))
    return orphans


def _check_transcripts(candidates: list[tuple[str, str, Path]], tokenizer: CharTokenizer | None,
                       skipped: list[tuple[str, str]]) -> list[tuple[str, str, Path]]:
    """The cheap text checks, before any audio I/O: [(id, normalized text, audio path)] of the
    candidates whose text is not empty after normalizing and has only characters `tokenizer` knows."""
    checked: list[tuple[str, str, Path]] = []
    for utt_id, raw, path in candidates:
        text = normalize(raw)
        if not text:
            skipped.append((utt_id, f"empty transcript: nothing left after normalizing {raw!r}"))
            continue
        if tokenizer is not None:
            unknown = tokenizer.unknown_chars(text)
            if unknown:
                skipped.append((utt_id, f"characters outside the tokenizer: {''.join(sorted(unknown))!r} in {text!r}"))
                continue
        checked.append((utt_id, text, path))
    return checked


def _check_audio(checked: list[tuple[str, str, Path]], max_duration: float | None, frames_per_second: float,
                 num_threads: int, progress: bool, skipped: list[tuple[str, str]]) -> list:
    """Utterances of the checked candidates whose audio reads, is not longer than `max_duration` and
    has enough encoder frames at `frames_per_second` for CTC to align its text."""
    from ..data import Utterance  # imports torch: see asr.corpora.common

    kept = []
    infos = audio_infos([path for _, _, path in checked], num_threads, progress, desc="reading audio headers")
    for (utt_id, text, path), info in zip(checked, infos):
        if isinstance(info, str):
            skipped.append((utt_id, info))
            continue
        duration = info.duration
        if max_duration is not None and duration > max_duration:
            skipped.append((utt_id, f"too long: {duration:.3f} s > max_duration {max_duration:g} s ({path})"))
            continue
        too_short = ctc_too_short(text, duration, frames_per_second)
        if too_short:
            skipped.append((utt_id, f"{too_short} ({path})"))
            continue
        kept.append(Utterance(id=utt_id, audio=str(path), duration=round(duration, 3), text=text,
                              speaker=utt_id.split("-", 1)[0]))
    return kept


def download_librispeech(
    subsets: list[str],
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    keep_archives: bool = True,
    progress: bool = True,
) -> Path:
    """Download and extract LibriSpeech subsets (resource 12, or Mini LibriSpeech's dev-clean-2 and
    train-clean-5 from resource 31) into `dest_dir`; returns `dest_dir/LibriSpeech`, which then
    holds one folder per subset. `base_url` replaces the openslr address (a mirror such as
    https://us.openslr.org/resources/12). A subset already extracted is neither downloaded nor
    extracted again, even when its archive was deleted (`keep_archives=False`).
    """
    dest_dir = Path(dest_dir)
    for subset in subsets:
        if subset in LIBRISPEECH_SUBSETS:
            url, (archive_name, md5) = LIBRISPEECH_URL, LIBRISPEECH_SUBSETS[subset]
        elif subset in MINI_LIBRISPEECH_SUBSETS:
            url, (archive_name, md5) = MINI_LIBRISPEECH_URL, MINI_LIBRISPEECH_SUBSETS[subset]
        else:
            known = ", ".join([*LIBRISPEECH_SUBSETS, *MINI_LIBRISPEECH_SUBSETS])
            raise ValueError(f"unknown LibriSpeech subset {subset!r}; choose from {known}")
        if (dest_dir / f".extracted-{archive_name}").exists():
            continue
        archive = download(f"{(base_url or url).rstrip('/')}/{archive_name}", dest_dir / archive_name,
                           md5=md5, progress=progress)
        extract(archive, dest_dir)
        if not keep_archives:
            archive.unlink()
    return dest_dir / "LibriSpeech"


def download_librispeech_lm(
    files: list[str] | None,
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download LibriSpeech's LM resources (resource 11) into `dest_dir` and return it: the files
    named (default LIBRISPEECH_LM_DEFAULT), each checked against its published size. They are
    not archives; the ARPA files stay gzip-compressed. Files already complete are not fetched."""
    dest_dir = Path(dest_dir)
    for name in files or LIBRISPEECH_LM_DEFAULT:
        if name not in LIBRISPEECH_LM_FILES:
            raise ValueError(f"unknown LibriSpeech LM file {name!r}; choose from {', '.join(LIBRISPEECH_LM_FILES)}")
        download(f"{(base_url or LIBRISPEECH_LM_URL).rstrip('/')}/{name}", dest_dir / name,
                 size=LIBRISPEECH_LM_FILES[name], progress=progress)
    return dest_dir


# --------------------------------------------------------------------------- registry entries


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, type=Path, nargs="+",
                        help="folder with the split (searched recursively); several are combined into one manifest")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    result = PrepareResult()
    for folder in args.corpus_dir:  # several subsets (train-clean-100 + 360 + other-500) make one set
        part = prepare_librispeech(folder, max_duration=args.max_duration)
        result.kept.extend(part.kept)
        result.skipped.extend(part.skipped)
    result.kept.sort(key=lambda u: u.id)
    return result


def _download(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    if not subsets:
        raise ValueError(f"name the LibriSpeech subsets to download with --subsets "
                         f"(choose from {', '.join(LIBRISPEECH_SUBSETS)})")
    return download_librispeech(subsets, dest)


def _download_mini(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    return download_librispeech(subsets or list(MINI_LIBRISPEECH_SUBSETS), dest)


def _download_lm(dest: Path, subsets: list[str] | None, archive: str | None) -> Path:
    return download_librispeech_lm(subsets, dest)


LIBRISPEECH = Corpus("librispeech", "LibriSpeech layout: <spk>/<chapter>/<spk>-<chapter>.trans.txt + audio",
                     _add_arguments, _prepare, _download)
MINI_LIBRISPEECH = Corpus("mini-librispeech", download=_download_mini)
LIBRISPEECH_LM = Corpus("librispeech-lm", download=_download_lm)
