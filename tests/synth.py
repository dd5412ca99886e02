"""Generated 'speech' for tests that must run without any corpus: each letter is a short tone with a
harmonic at its own pitch, words are separated by silence. A model can learn it in seconds, and the
transcript of every file is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from asr.data import Utterance, write_manifest

LETTERS = "abcdef"
TRANSCRIPTS = ["a bad cab", "dead beef", "fed a dab", "bead fade", "ace cafe", "add a bee", "deaf babe", "face a deed"]


def synth_utterance(text: str, sample_rate: int = 16000, letter_seconds: float = 0.12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(letter_seconds * sample_rate)) / sample_rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks between letters
    pieces = [np.zeros(int(0.1 * sample_rate))]
    for char in text:
        if char == " ":
            pieces.append(np.zeros(int(0.1 * sample_rate)))
            continue
        f = 300.0 * 1.35 ** LETTERS.index(char)
        tone = 0.4 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.5 * f * t)
        pieces += [tone * ramp, np.zeros(int(0.02 * sample_rate))]
    pieces.append(np.zeros(int(0.1 * sample_rate)))
    wave = np.concatenate(pieces)
    return (wave + 0.005 * rng.standard_normal(len(wave))).astype(np.float32)


def write_synth_corpus(folder: Path, transcripts: list[str] = TRANSCRIPTS, sample_rate: int = 16000) -> Path:
    """WAV files and a manifest in `folder`; returns the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    utts = []
    for i, text in enumerate(transcripts):
        path = folder / f"utt{i:02d}.wav"
        wave = synth_utterance(text, sample_rate, seed=i)
        soundfile.write(path, wave, sample_rate)
        utts.append(Utterance(f"utt{i:02d}", str(path), len(wave) / sample_rate, text, "synth"))
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, utts)
    return manifest
