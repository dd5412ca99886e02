"""Kaldi data directories in both directions: `prepare_kaldi` imports one (wav.scp, text, utt2spk,
optional segments and reco2dur), `export_kaldi` writes a manifest as one."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..files import write_text_atomic
from ..text import CharTokenizer, normalize
from .common import Candidate, Corpus, PrepareResult, add_output_options, corpus_root, drop_markers, keep_valid, \
    read_lines

if TYPE_CHECKING:  # asr.data imports torch: see asr.corpora.common
    from ..data import Utterance


def _kaldi_table(path: Path, result: PrepareResult) -> dict[str, str]:
    """A Kaldi 'key value...' file as {key: rest of the line}; later duplicates are reported."""
    table: dict[str, str] = {}
    for number, line in enumerate(read_lines(path, result) or [], 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in table:
            result.skipped.append((parts[0], f"duplicate key: {path.name}:{number}"))
            continue
        table[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return table


def prepare_kaldi(
    data_dir: str | os.PathLike,
    audio_root: str | os.PathLike | None = None,
    tokenizer: CharTokenizer | None = None,
    max_duration: float | None = None,
    frames_per_second: float | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PrepareResult:
    """Import a Kaldi data directory: `wav.scp` and `text` (required), `utt2spk`, `segments` and
    `reco2dur` (optional).

    Without `segments`, wav.scp maps utterance ids to audio; with it, wav.scp maps recording ids
    and each `utt reco start end` line is a segment (end -1: to the end of the recording). Only
    plain file paths are read: pipe entries (`sox x.wav -t wav - |`) and archive offsets
    (`feats.ark:12`) are skipped with the reason, since no shell command is run. Relative paths
    are resolved against `audio_root` (default: the current folder, then the data directory's
    grandparent, where Kaldi recipes run). Text: markers such as <UNK> or [noise] are dropped,
    then `normalize`.
    """
    data = corpus_root(data_dir)
    for required in ("wav.scp", "text"):
        if not (data / required).is_file():
            raise FileNotFoundError(f"{data / required}: not a Kaldi data directory (it needs wav.scp and text)")
    result = PrepareResult()
    wav_scp = _kaldi_table(data / "wav.scp", result)
    texts = _kaldi_table(data / "text", result)
    utt2spk = _kaldi_table(data / "utt2spk", result) if (data / "utt2spk").is_file() else {}
    reco2dur = _kaldi_table(data / "reco2dur", result) if (data / "reco2dur").is_file() else {}
    bases = [Path(audio_root).expanduser().resolve()] if audio_root is not None else [Path.cwd(), data.parent.parent]

    audio: dict[str, Path | str] = {}  # recording -> path, or the skip reason
    for reco, value in wav_scp.items():
        if value.endswith("|"):
            audio[reco] = f"pipe command in wav.scp: {value!r} (shell commands are not run; write the audio to files first)"
        elif re.search(r"\.ark:\d+$", value):
            audio[reco] = f"archive offset in wav.scp: {value!r} (only plain audio files are read)"
        else:
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = next((b / path for b in bases if (b / path).is_file()), bases[0] / path).resolve()
            audio[reco] = path

    segments: dict[str, tuple[str, float, float | None]] = {}
    if (data / "segments").is_file():
        for utt, value in _kaldi_table(data / "segments", result).items():
            fields = value.split()
            try:
                reco, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                result.skipped.append((utt, f"malformed segments line: {value!r}"))
                continue
            if end < 0:  # -1: to the end of the recording
                end = float(reco2dur[reco]) if _is_number(reco2dur.get(reco, "")) else None
            segments[utt] = (reco, start, end)
        utterances = segments
    else:
        utterances = {utt: (utt, None, None) for utt in wav_scp}

    candidates = []
    for utt, (reco, start, end) in utterances.items():
        if utt not in texts:
            result.skipped.append((utt, "no transcript: not in text"))
            continue
        source = audio.get(reco)
        if source is None:
            result.skipped.append((utt, f"no audio: recording {reco} is not in wav.scp"))
            continue
        if isinstance(source, str):
            result.skipped.append((utt, source))
            continue
        if not source.is_file():
            result.skipped.append((utt, f"no audio file: {source}"))
            continue
        raw = texts[utt]
        candidates.append(Candidate(utt, raw, normalize(drop_markers(raw)), utt2spk.get(utt, ""), source, start, end))
    for utt in sorted(set(texts) - set(utterances)):
        result.skipped.append((utt, "no audio: in text, but not in " + ("segments" if segments else "wav.scp")))
    return keep_valid(result, candidates, tokenizer, max_duration, frames_per_second, num_threads, progress)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def export_kaldi(utts: Sequence[Utterance], data_dir: str | os.PathLike) -> Path:
    """Write manifest utterances as a Kaldi data directory: `wav.scp`, `text`, `utt2spk`,
    `spk2utt`, `utt2dur`, and `segments` plus `reco2dur` when any utterance is a segment of a
    longer file (then every utterance gets a segment line, whole files from 0 to their duration).

    Lines are sorted by id in byte order (Kaldi's `LC_ALL=C sort`). Utterances without a speaker
    are their own speaker, as Kaldi expects. Recording ids are the audio file names without
    extension, made unique with a numeric suffix. Raises ValueError for ids or speakers with
    whitespace, which Kaldi tables cannot hold, and for repeated ids.
    """
    data = Path(data_dir)
    utts = sorted(utts, key=lambda u: u.id.encode("utf-8"))
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        raise ValueError("the manifest repeats utterance ids; a Kaldi data directory cannot hold them")
    for u in utts:
        if not u.id or any(c.isspace() for c in u.id) or any(c.isspace() for c in u.speaker):
            raise ValueError(f"utterance {u.id!r} (speaker {u.speaker!r}): Kaldi ids cannot be empty or hold whitespace")
    segmented = any(u.start is not None or u.end is not None for u in utts)

    recordings: dict[str, str] = {}  # audio path -> recording id
    taken: set[str] = set()
    for u in utts:
        if u.audio in recordings:
            continue
        stem = Path(u.audio).stem.replace(" ", "_") or "rec"
        reco, n = stem, 1
        while reco in taken:
            n += 1
            reco = f"{stem}-{n}"
        taken.add(reco)
        recordings[u.audio] = reco

    files: dict[str, list[str]] = {"text": [], "utt2spk": [], "utt2dur": []}
    spk2utt: dict[str, list[str]] = {}
    if segmented:
        files["segments"] = []
        reco2dur: dict[str, float] = {}
        for u in utts:
            start = u.start or 0.0
            end = u.end if u.end is not None else start + u.duration
            reco = recordings[u.audio]
            files["segments"].append(f"{u.id} {reco} {start:.3f} {end:.3f}")
            if u.start is None and u.end is None:
                reco2dur[reco] = max(reco2dur.get(reco, 0.0), u.duration)
        files["wav.scp"] = [f"{reco} {path}" for path, reco in sorted(recordings.items(), key=lambda kv: kv[1].encode())]
        if reco2dur and len(reco2dur) == len(recordings):
            files["reco2dur"] = [f"{reco} {d:.3f}" for reco, d in sorted(reco2dur.items(), key=lambda kv: kv[0].encode())]
    else:
        files["wav.scp"] = [f"{u.id} {u.audio}" for u in utts]
    for u in utts:
        speaker = u.speaker or u.id
        files["text"].append(f"{u.id} {u.text}".rstrip())
        files["utt2spk"].append(f"{u.id} {speaker}")
        files["utt2dur"].append(f"{u.id} {u.duration:.3f}")
        spk2utt.setdefault(speaker, []).append(u.id)
    files["spk2utt"] = [f"{s} {' '.join(us)}" for s, us in sorted(spk2utt.items(), key=lambda kv: kv[0].encode())]

    data.mkdir(parents=True, exist_ok=True)
    for name in ("segments", "reco2dur"):  # stale ones from an earlier export would contradict wav.scp
        if name not in files and (data / name).exists():
            (data / name).unlink()
    for name, lines in files.items():
        write_text_atomic(data / name, "".join(line + "\n" for line in lines))
    return data

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--audio-root", type=Path, default=None,
                        help="folder relative wav.scp paths start from (default: here, then the data dir's grandparent)")
    add_output_options(parser)


def _prepare(args: argparse.Namespace) -> PrepareResult:
    return prepare_kaldi(args.data_dir, audio_root=args.audio_root, max_duration=args.max_duration)


CORPUS = Corpus("kaldi", "a Kaldi data directory: wav.scp, text, utt2spk, optional segments", _add_arguments, _prepare)
