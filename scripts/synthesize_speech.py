#!/usr/bin/env python3
"""Synthetic read speech from LM text with flite, as an extra training set (a manifest like any corpus's).

    apt-get install flite     # Debian's package: voices awb, rms, slt, kal16 built in
    python scripts/synthesize_speech.py ../shared/data/lm/gutenberg-100M.txt.gz --out data/synth_flite --hours 5

Sentences of 8-30 words are drawn (seeded) from a one-sentence-per-line text (the Gutenberg LM text
is normalized the LibriSpeech way: upper case, A-Z, apostrophe, space), each read by one voice drawn
from --voices at a speaking rate drawn from --stretch. flite is an external program run per sentence,
never imported by `asr`: the point is text the real corpora lack (the spelling of words a character
model has not heard), not natural voices. Writes <out>/wav/<id>.wav (16 kHz) and <out>/manifest.jsonl.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile
from tqdm import tqdm

FLITE_VOICES = ("awb", "rms", "slt", "kal16")  # the 16 kHz voices Debian's flite has built in


def read_sentences(path: str | Path, min_words: int, max_words: int) -> list[str]:
    """The lines of a (gzipped) text with min_words..max_words words, lower-cased, in file order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip().lower() for line in f if min_words <= len(line.split()) <= max_words]


def draw_plan(sentences: list[str], count: int, voices: list[str], stretch: tuple[float, float],
              seed: int) -> list[dict]:
    """`count` distinct sentences, each with a voice and a speaking rate (flite's duration_stretch)."""
    rng = random.Random(seed)
    picked = rng.sample(range(len(sentences)), min(count, len(sentences)))
    return [{"id": f"synth-{seed}-{n:06d}", "text": sentences[i], "voice": rng.choice(voices),
             "stretch": round(rng.uniform(*stretch), 3)} for n, i in enumerate(picked)]


def synthesize(item: dict, wav_dir: Path, flite: str) -> dict:
    """Run flite for one planned sentence; returns its manifest row."""
    path = wav_dir / f"{item['id']}.wav"
    command = [flite, "-voice", item["voice"], "--setf", f"duration_stretch={item['stretch']}",
               "-t", item["text"], "-o", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"{path}: flite failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    info = soundfile.info(str(path))
    if info.samplerate != 16000:
        raise RuntimeError(f"{path}: flite voice {item['voice']} wrote {info.samplerate} Hz audio; use a 16 kHz voice")
    return {"id": item["id"], "audio": str(path.resolve()), "duration": round(info.duration, 3),
            "text": item["text"], "speaker": f"flite-{item['voice']}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="one sentence per line (.txt or .txt.gz)")
    parser.add_argument("--out", required=True, help="folder for wav/ and manifest.jsonl")
    parser.add_argument("--hours", type=float, default=5.0, help="stop once this much audio is written")
    parser.add_argument("--voices", nargs="+", default=list(FLITE_VOICES))
    parser.add_argument("--stretch", type=float, nargs=2, default=(0.85, 1.2), metavar=("LOW", "HIGH"),
                        help="range of flite's duration_stretch (> 1: slower)")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="flite processes at once")
    args = parser.parse_args(argv)
    flite = shutil.which("flite")
    if flite is None:
        parser.error("flite not found: install it (Debian/Ubuntu: apt-get install flite)")
    sentences = read_sentences(args.text, args.min_words, args.max_words)
    if not sentences:
        parser.error(f"{args.text}: no line has {args.min_words}-{args.max_words} words")
    # About 0.4 s per word at flite's default rate: plan enough sentences, stop at --hours.
    mean_words = sum(len(s.split()) for s in sentences[:10000]) / min(len(sentences), 10000)
    plan = draw_plan(sentences, int(args.hours * 3600 / (0.4 * mean_words) * 1.5) + 10, args.voices,
                     tuple(args.stretch), args.seed)
    out = Path(args.out)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    pool = ThreadPoolExecutor(args.jobs)
    with tqdm(total=round(args.hours * 3600), unit="s", file=sys.stderr) as bar:
        for row in pool.map(lambda item: synthesize(item, wav_dir, flite), plan):  # in plan order: reproducible
            rows.append(row)
            seconds += row["duration"]
            bar.update(round(row["duration"]))
            if seconds >= args.hours * 3600:
                break
    pool.shutdown(wait=True, cancel_futures=True)
    kept = {f"{row['id']}.wav" for row in rows}
    for path in wav_dir.glob("*.wav"):  # synthesized ahead by the pool, not needed
        if path.name not in kept:
            path.unlink()
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} sentences, {seconds / 3600:.2f} h, voices {', '.join(args.voices)} -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
