"""The loudness of speech against silence: for each manifest, the level of each file's loudest frame
(asr.audio.frame_levels, dBFS of one output frame of the model), and the same for generated silence
(digital zeros, +-1 LSB dither of 16-bit audio, 1e-4 RMS noise). asr.audio.SILENCE_DBFS sits between
the two; its comment cites what this prints. Also the gate's cost: CPU seconds of frame_levels per
hour of audio (the files are decoded before the clock starts).

    python scripts/silence_levels.py --manifests /tmp/libri_dev.jsonl /tmp/so762_test.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import frame_levels, read_mono  # noqa: E402
from asr.data import read_manifest  # noqa: E402


def silences(rate: int, seconds: float) -> dict[str, np.ndarray]:
    """Generated non-speech of `seconds` at `rate`, as float32 in [-1, 1]."""
    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    return {
        "digital silence": np.zeros(n, np.float32),
        "+-1 LSB dither (16-bit)": (rng.integers(-1, 2, n) / 32768).astype(np.float32),
        "1e-4 RMS noise": (1e-4 * rng.standard_normal(n)).astype(np.float32),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", type=Path, nargs="+", required=True)
    p.add_argument("--rate", type=int, default=16000, help="the model's sample rate")
    p.add_argument("--frame", type=int, default=320, help="samples per output frame of the model (whisper: 320)")
    args = p.parse_args()
    print("| audio | files | loudest frame: min | 1st percentile | median | max |")
    print("|---|---:|---:|---:|---:|---:|")
    costs = []
    for manifest in args.manifests:
        waves = [read_mono(u.audio, args.rate) for u in read_manifest(manifest)]
        start = time.process_time()
        loudest = np.array([frame_levels(wave, args.frame).max() for wave in waves])
        costs.append((manifest.stem, time.process_time() - start, sum(w.shape[0] for w in waves) / args.rate / 3600))
        q = np.percentile(loudest, [0, 1, 50, 100])
        print(f"| {manifest.stem} | {len(loudest)} | {q[0]:.1f} | {q[1]:.1f} | {q[2]:.1f} | {q[3]:.1f} |")
    for name, wave in silences(args.rate, 10.0).items():
        level = frame_levels(wave, args.frame).max()
        print(f"| {name}, 10 s | 1 | {level:.1f} | | | |")
    for name, seconds, hours in costs:
        print(f"\nframe_levels on {name}: {seconds:.3f} CPU s for {hours:.2f} h of audio "
              f"({seconds / hours:.2f} s per hour, RTFx {hours * 3600 / max(seconds, 1e-9):.0f})")


if __name__ == "__main__":
    main()
