#!/usr/bin/env python3
"""The room noise of real recordings, as a noise manifest for training (train.noise_manifest).

    python scripts/noise_segments.py data/libri_train.jsonl data/so762_train90.jsonl --out data/room_noise.jsonl

Each utterance of a read-speech corpus starts and ends with a few tenths of a second of the room it
was recorded in (libri-other train: a median 0.3 s at each end, speechocean762: 0.5 s). This writes
those stretches as segments (audio, start, end; no new audio files) of a manifest that
`train.noise_manifest` mixes into training utterances (asr.data.SpeechDataset: a random stretch of a
random segment, repeated when shorter than the utterance, at an SNR drawn from train.noise_snr_db).
Synthetic speech is digitally clean; this gives it the rooms and microphones of the real sets
(issue 23, lever 3).

A frame (20 ms) is speech when its RMS level is within --below-peak-db of the utterance's loudest
frame. The noise before the first speech frame and after the last, less --margin seconds next to the
speech (onsets and breaths), is kept when it lasts --min-seconds or more and is not digital silence
(mean level above --min-dbfs). Use training manifests only: dev and test audio must stay unseen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asr.audio import frame_levels, read_mono
from asr.data import Utterance, read_manifest, write_manifest

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms at 16 kHz


def edge_noise(levels: np.ndarray, below_peak_db: float, margin_frames: int) -> list[tuple[str, int, int]]:
    """(T,) frame levels in dBFS -> ("head" or "tail", start, end): the [start, end) frames of the leading
    and trailing non-speech stretches (each shortened by `margin_frames` next to the speech), empty ones left out."""
    finite = levels[np.isfinite(levels)]
    if finite.size == 0:
        return []  # digital silence throughout
    speech = np.flatnonzero(levels > finite.max() - below_peak_db)
    head = ("head", 0, max(0, int(speech[0]) - margin_frames))
    tail = ("tail", min(len(levels), int(speech[-1]) + 1 + margin_frames), len(levels))
    return [(part, a, b) for part, a, b in (head, tail) if b > a]


def noise_segments(manifests: list[str], folder: Path, below_peak_db: float, margin: float, min_seconds: float,
                   min_dbfs: float) -> tuple[list[Utterance], int]:
    """The room-noise segments of every utterance of `manifests`, their audio paths relative to `folder`
    (where their manifest goes); returns (segments, utterances read)."""
    utts = [u for m in manifests for u in read_manifest(m)]
    margin_frames = round(margin * SAMPLE_RATE / FRAME)
    segments = []
    for utt in tqdm(utts, desc="noise", unit="utt"):
        if utt.start is not None or utt.end is not None:
            raise ValueError(f"{utt.id} ({utt.audio}): segments of long recordings are not supported; "
                             "give manifests of whole-file utterances")
        wave = read_mono(utt.audio, SAMPLE_RATE)
        levels = frame_levels(wave, FRAME)
        for part, a, b in edge_noise(levels, below_peak_db, margin_frames):
            stretch = wave[a * FRAME : b * FRAME]
            length = len(stretch) / SAMPLE_RATE
            if length < min_seconds or frame_levels(stretch, len(stretch))[0] < min_dbfs:
                continue
            start = a * FRAME / SAMPLE_RATE
            audio = os.path.relpath(Path(utt.audio).resolve(), folder.resolve())
            segments.append(Utterance(f"{utt.id}-{part}", audio, round(length, 3), "", utt.speaker,
                                      round(start, 3), round(start + length, 3)))
    return segments, len(utts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="+", help="training manifests (JSON Lines) of real recordings")
    parser.add_argument("--out", required=True, type=Path, help="the noise manifest to write")
    parser.add_argument("--below-peak-db", type=float, default=30.0, help="speech: frames within this of the loudest")
    parser.add_argument("--margin", type=float, default=0.1, help="seconds left out next to the speech")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="shorter stretches are left out")
    parser.add_argument("--min-dbfs", type=float, default=-85.0, help="quieter stretches (digital silence) are left out")
    args = parser.parse_args(argv)
    segments, utts = noise_segments(args.manifests, args.out.parent, args.below_peak_db, args.margin, args.min_seconds,
                                    args.min_dbfs)
    if not segments:
        print(f"no stretch of room noise found in {utts} utterances: nothing written to {args.out}", file=sys.stderr)
        return 1
    write_manifest(args.out, segments)  # atomic: a stopped run leaves no half manifest
    seconds = sum(s.duration for s in segments)
    print(f"{len(segments)} segments, {seconds / 60:.1f} min of room noise from {utts} utterances -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
