"""Load benchmark of `asr serve`: N concurrent clients send transcription requests for a fixed time
on a loopback port; reports requests/s, audio seconds per second, p50/p95 latency and errors, for
each --max-batch setting (batching on and off), as a Markdown table.

    python scripts/bench_serve.py --model exp/fsdd/best.pt --audio data/test.jsonl --clients 8 --seconds 30 \\
        --max-batch 8 1 --threads 1

--audio takes audio files, folders, or a JSON Lines manifest; clients cycle through them in a fixed
order. Each setting starts its own server process (asr serve) and waits for /health before the clock
starts; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def audio_files(sources: list[str]) -> list[Path]:
    from asr.data import read_manifest
    from asr.transcribe import expand_paths

    files: list[Path] = []
    for source in sources:
        if source.endswith(".jsonl"):
            files += [Path(u.audio) for u in read_manifest(source)]
        else:
            files += expand_paths([source])
    if not files:
        raise SystemExit("no audio files given")
    return files


def multipart(path: Path, response_format: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\n{response_format}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "asr.cli", "serve", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), "--device", args.device, "--max-batch", str(max_batch),
               "--queue-size", str(max(64, 4 * args.clients))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"asr serve exited with {process.returncode}: {' '.join(command)}")
        try:
            get(port, "/health")
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("asr serve did not answer /health within 120 s")


def run_clients(port: int, bodies: list[tuple[bytes, str, float]], clients: int, seconds: float) -> dict:
    """`clients` threads, each sending requests back to back until `seconds` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    audio = [0.0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            body, content_type, duration = bodies[i % len(bodies)]
            i += clients
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/audio/transcriptions", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200
            except OSError as e:
                ok, data = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                    audio[0] += duration
                else:
                    errors.append(data[:200].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else "",
            "wall": wall, "rps": len(latencies) / wall, "audio_per_s": audio[0] / wall,
            "p50": pick(0.50), "p95": pick(0.95), "mean": statistics.fmean(latencies) if latencies else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="checkpoint to serve")
    parser.add_argument("--audio", required=True, nargs="+", help="audio files, folders or a .jsonl manifest")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time per setting")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8, 1], help="settings to compare (1: no batching)")
    parser.add_argument("--threads", type=int, default=None, help="server CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--response-format", default="json")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before measuring")
    args = parser.parse_args()

    import soundfile

    files = audio_files(args.audio)
    bodies = [(*multipart(f, args.response_format), soundfile.info(str(f)).duration) for f in files]
    mean_audio = statistics.fmean(b[2] for b in bodies)
    print(f"{len(files)} files (mean {mean_audio:.2f} s), {args.clients} clients, {args.seconds:g} s per setting",
          file=sys.stderr)
    rows = []
    for max_batch in args.max_batch:
        process, port = start_server(args, max_batch)
        try:
            if args.warmup:
                run_clients(port, bodies, args.clients, args.warmup)
            before = get(port, "/health")
            result = run_clients(port, bodies, args.clients, args.seconds)
            after = get(port, "/health")
        finally:
            process.terminate()
            process.wait(timeout=30)
        batches = after["batches"] - before["batches"]
        result["mean_batch"] = (after["requests"] - before["requests"]) / max(batches, 1)
        rows.append((max_batch, result))
        print(f"max-batch {max_batch}: {result}", file=sys.stderr)
    print("| --max-batch | clients | requests | requests/s | audio s/s | p50 latency (s) | p95 latency (s) | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for max_batch, r in rows:
        print(f"| {max_batch} | {args.clients} | {r['requests']} | {r['rps']:.1f} | {r['audio_per_s']:.1f} | "
              f"{r['p50']:.3f} | {r['p95']:.3f} | {r['mean_batch']:.1f} | {r['errors']} |")
    if any(r["errors"] for _, r in rows):
        print(f"errors, first: {next(r['first_error'] for _, r in rows if r['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
