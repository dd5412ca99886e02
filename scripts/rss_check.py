"""Peak memory of `asr transcribe` by input format (issue 29): the first 2 s of examples/ speech at
16 kHz, resampled to 44101 Hz, 22051 Hz and 8 channels x 96 kHz, and 590 s of 8-channel 96 kHz silence as FLAC,
each transcribed in its own process under `/usr/bin/time -v` (peak RSS, wall time). Odd rates
(44101 = 44100 + 1) are the worst case of a resampler that builds a filter per gcd of the rates.

    python scripts/rss_check.py --work /tmp/rss [--model models/en-whisper-tiny-bilstm-ctc.pt]

Prints one Markdown row per file: peak RSS, its ratio to the 16 kHz file's, wall seconds, transcript.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "4959-28865-0017.flac"
sys.path.insert(0, str(ROOT))


def speech(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """(frames, channels) float32: the first `seconds` of the example recording at `rate`, the same on
    every channel."""
    from asr.audio import to_mono_at_rate

    samples, native = soundfile.read(EXAMPLE, dtype="float32")
    wave = to_mono_at_rate(samples[: int(seconds * native)], native, rate)
    return np.repeat(wave[:, None], channels, axis=1)


def inputs(work: Path) -> list[Path]:
    """Write the test files into `work`; the 16 kHz one first (the reference)."""
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for name, rate, channels in [("16000", 16000, 1), ("44101", 44101, 1), ("22051", 22051, 1), ("96000x8", 96000, 8)]:
        path = work / f"speech_2s_{name}.wav"
        soundfile.write(path, speech(2.0, rate, channels), rate, subtype="PCM_16")
        files.append(path)
    silence = work / "silence_590s_96000x8.flac"
    with soundfile.SoundFile(silence, "w", 96000, 8, subtype="PCM_16") as f:
        for _ in range(59):
            f.write(np.zeros((960000, 8), np.int16))
    files.append(silence)
    return files


def measure(path: Path, model: str) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, transcript) of one `asr transcribe --decoder greedy` process."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "asr.cli", "transcribe", "--decoder", "greedy", str(path)]
    if model:
        cmd[5:5] = ["--model", model]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", out.stderr).group(1)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    return rss_kb / 1024, seconds, out.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the generated audio")
    p.add_argument("--model", default="", help="checkpoint (default: asr's default model)")
    args = p.parse_args()
    print("| file | peak RSS (MB) | / 16 kHz | wall (s) | transcript |")
    print("|---|---:|---:|---:|---|")
    reference = None
    for path in inputs(args.work):
        rss, seconds, text = measure(path, args.model)
        reference = reference or rss
        print(f"| {path.name} ({path.stat().st_size / 1e6:.2f} MB) | {rss:.0f} | {rss / reference:.2f} | {seconds:.1f} | "
              f"{text.partition(chr(9))[2]!r} |", flush=True)


if __name__ == "__main__":
    main()
