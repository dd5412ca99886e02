"""Sharded decoding against one process on the same CPU cores: `asr decode` of the same hour of audio
as 1 process x T threads and as R ranks x T/R threads under torchrun, greedy and with the model's
own decode settings (the shipped model: beam-lm with its 3-gram), one Markdown row per run.

    python scripts/bench_shards.py models/en-whisper-tiny-bilstm-ctc.pt data/speechocean762/test.jsonl \
        --hours 1 --cores 2 --out /tmp/bench_shards

The first utterances of the manifest (in its order) up to --hours of audio make the test set. Each
run writes to a fresh folder (nothing resumed) and is timed twice: `wall` is the whole command as a
user waits for it (interpreter and torch start, model and LM load in every rank, the merge), and
`decode RTFx` is what the command's summary reports (audio / seconds from the split to the merged
output, so without start-up); `CPU s` is the user + system time of all its processes (start-up
included), which other jobs on the machine change less than wall time. `same output` says whether the hypothesis file is byte for byte the
one-process run's. The 1-minute load average before and after each run is printed: on a machine
shared with other jobs the figures are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subset(manifest: Path, hours: float, out: Path) -> tuple[Path, int, float]:
    """The first utterances of `manifest` up to `hours` of audio, written to `out`: (path, count, seconds)."""
    kept, seconds = [], 0.0
    for line in manifest.read_text(encoding="utf-8").splitlines():
        duration = json.loads(line)["duration"]
        if seconds + duration > hours * 3600:
            break
        kept.append(line)
        seconds += duration
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out, len(kept), seconds


def run(ranks: int, threads: int, model: Path, manifest: Path, out: Path, decoder: list[str]) -> dict:
    """One `asr decode` (under torchrun when ranks > 1): wall seconds, the summary's RTFx, its command."""
    decode = ["decode", str(model), str(manifest), "--out", str(out), "--device", "cpu", "--threads", str(threads),
              *decoder]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                   "-m", "asr.cli", *decode]
    else:
        command = [sys.executable, "-m", "asr.cli", *decode]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rtfx = re.search(r"RTFx ([0-9.]+)", done.stderr)
    return {"wall": wall, "cpu": cpu, "rtfx": float(rtfx.group(1)) if rtfx else float("nan"), "load": (load_before, os.getloadavg()[0]),
            "command": " ".join(["torchrun --standalone --nproc-per-node", str(ranks), "-m asr.cli"] if ranks > 1
                                else ["asr"]) + " " + " ".join(decode)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--hours", type=float, default=1.0, help="audio taken from the start of the manifest")
    parser.add_argument("--cores", type=int, default=2, help="threads of the one process = ranks x threads per rank")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="folder for the test set and the hypotheses")
    parser.add_argument("--decoders", nargs="+", default=["greedy", "model"],
                        help="greedy, and/or model: the checkpoint's decode settings (decode.yaml next to it)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    manifest, count, seconds = subset(args.manifest, args.hours, args.out / "test.jsonl")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{count} utterances, {seconds / 3600:.3f} h of {args.manifest}")
    print("| decoder | processes x threads | wall s | wall RTFx | decode RTFx | CPU s | same output | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.decoders:
        decoder = ["--decoder", "greedy"] if name == "greedy" else []
        outputs = []
        for ranks, threads in ((1, args.cores), (args.ranks, max(1, args.cores // args.ranks))):
            out = args.out / f"{name}-{ranks}x{threads}-{time.strftime('%H%M%S')}" / "hyp.txt"
            result = run(ranks, threads, args.model, manifest, out, decoder)
            outputs.append(out.read_bytes())
            print(f"| {name} | {ranks} x {threads} | {result['wall']:.1f} | {seconds / result['wall']:.1f} | "
                  f"{result['rtfx']:.1f} | {result['cpu']:.0f} | {'yes' if outputs[-1] == outputs[0] else 'NO'} | "
                  f"{result['load'][0]:.2f} / {result['load'][1]:.2f} |", flush=True)
            print(f"  command: {result['command']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
