"""Peak memory of transcribing one long file, chunked and in one piece.

Builds FLAC files of the asked lengths by repeating the LibriSpeech dev utterances in
../shared/data/libri-other/dev (written utterance by utterance, so building them takes little
memory), then transcribes each in a fresh process (peak RSS is a per-process high-water mark) and
prints a Markdown table: peak RSS of the process, its RSS with only the model loaded, wall time,
real-time factor and the number of words.

    python scripts/bench_long_audio.py --model recipes/librispeech/exp/librispeech_small/best.pt --minutes 10 60
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_long_file(path: Path, minutes: float, corpus: Path, rate: int) -> float:
    import soundfile

    from asr.audio import load_audio

    sources = sorted(p for p in corpus.rglob("*") if p.suffix in (".flac", ".opus", ".wav"))
    if not sources:
        raise SystemExit(f"no audio below {corpus}")
    written, target = 0, int(minutes * 60 * rate)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC") as out:
        while written < target:
            for source in sources:
                wave = load_audio(source, rate)[: target - written].numpy()
                out.write(wave)
                written += wave.shape[0]
                if written >= target:
                    break
    return written / rate


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args: argparse.Namespace) -> None:
    import torch

    from asr.checkpoint import load_model
    from asr.transcribe import transcribe_files

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model(args.model)
    model_only = peak_rss_mib()
    start = time.perf_counter()
    [result] = transcribe_files(model, tokenizer, [args.worker], torch.device("cpu"), batch_seconds=args.batch_seconds,
                                chunk_seconds=args.chunk_seconds, chunk_overlap=args.chunk_overlap)
    seconds = time.perf_counter() - start
    if result.error:
        raise SystemExit(result.error)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "model_only_rss_mib": model_only, "seconds": seconds,
                      "audio_seconds": result.duration, "words": len(result.text.split())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "recipes/librispeech/exp/librispeech_small/best.pt")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/libri-other/dev")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--chunk-overlap", type=float, default=4.0)
    parser.add_argument("--batch-seconds", type=float, default=300.0, help="audio per forward pass (chunks per batch)")
    parser.add_argument("--unchunked", action="store_true", help="also transcribe each file in one piece")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from asr.checkpoint import read_checkpoint

    rate = read_checkpoint(args.model)["config"]["features"]["sample_rate"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"long_{minutes:g}min.flac"
            build_long_file(path, minutes, args.corpus, rate)
            for chunk in [args.chunk_seconds] + ([0.0] if args.unchunked else []):
                command = [sys.executable, __file__, "--worker", str(path), "--model", str(args.model),
                           "--chunk-seconds", str(chunk), "--chunk-overlap", str(args.chunk_overlap),
                           "--batch-seconds", str(args.batch_seconds), "--threads", str(args.threads)]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                rows.append((minutes, f"{chunk:g} s chunks, {args.chunk_overlap:g} s overlap" if chunk else "one piece", r))
                print(f"{minutes:g} min, {rows[-1][1]}: {r}", file=sys.stderr)
    print(f"model {args.model}, {args.threads} CPU thread(s), batch {args.batch_seconds:g} s of audio per forward pass\n")
    print("| audio | decoding | peak RSS (MiB) | RSS with model loaded (MiB) | wall (s) | RTFx | words |")
    print("|---|---|---|---|---|---|---|")
    for minutes, mode, r in rows:
        print(f"| {minutes:g} min | {mode} | {r['peak_rss_mib']:.0f} | {r['model_only_rss_mib']:.0f} | "
              f"{r['seconds']:.1f} | {r['audio_seconds'] / r['seconds']:.0f} | {r['words']} |")


if __name__ == "__main__":
    main()
