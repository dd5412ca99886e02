"""Transcription throughput, end to end from audio files to text: RTFx = seconds of audio / seconds of wall time.

    python scripts/bench_infer.py MODEL.pt MANIFEST_OR_FOLDER --device cpu --threads 2
    python scripts/bench_infer.py MODEL.pt MANIFEST_OR_FOLDER --device cuda --batch-seconds 1200
    python scripts/bench_infer.py conf/librispeech.yaml MANIFEST_OR_FOLDER --device cuda   # untrained model of a config

Speed does not depend on what the weights learned (greedy decoding's cost barely depends on its
output), so a config instead of a checkpoint measures a model of that shape with random weights
before one is trained; its transcripts are nonsense and are not printed.

The timed region covers reading and decoding the files, resampling, features, the model and greedy
decoding, exactly what `asr transcribe` does. One untimed warm-up pass over a few files comes first
(CUDA context, cuDNN plans, allocator). Prints one table row; paste it with the command into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from asr.checkpoint import load_model, resolve_device
from asr.config import load_config
from asr.model import CTCModel
from asr.text import CharTokenizer
from asr.data import read_manifest
from asr.transcribe import expand_paths, transcribe_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="checkpoint (.pt), or a config (.yaml) for an untrained model of its shape")
    parser.add_argument("audio", type=Path, help="manifest (.jsonl) or folder of audio files")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--batch-seconds", type=float, default=None, help="padded audio seconds per batch")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0: all)")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes; the best is reported")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.model.suffix in (".yaml", ".yml"):
        config = load_config(args.model)
        tokenizer = CharTokenizer()
        torch.manual_seed(0)
        model = CTCModel(config.features, config.model, len(tokenizer)).to(device).eval()
    else:
        model, tokenizer, config = load_model(args.model, device)
    if args.audio.suffix == ".jsonl":
        paths = [Path(u.audio) for u in read_manifest(args.audio)]
    else:
        paths = expand_paths([args.audio])
    paths = paths[: args.limit or None]
    batch_seconds = args.batch_seconds or config.decode.batch_seconds

    transcribe_files(model, tokenizer, paths[:8], device, batch_seconds)  # warm-up, untimed
    best = float("inf")
    for _ in range(args.repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = transcribe_files(model, tokenizer, paths, device, batch_seconds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    failed = [r for r in results if r.error]
    audio_seconds = sum(r.duration for r in results)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print("| device | files | audio (h) | wall (s) | RTFx | batch s | torch |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {name} | {len(results) - len(failed)} | {audio_seconds / 3600:.3f} | {best:.2f} | "
          f"{audio_seconds / best:.1f} | {batch_seconds:g} | {torch.__version__} |")
    if failed:
        print(f"{len(failed)} files failed, e.g. {failed[0].error}")


if __name__ == "__main__":
    main()
