"""Do the four ways to transcribe give the same words? `asr transcribe` (a subprocess), the Python API
(`asr.load().transcribe`), `asr serve` (HTTP, verbose_json) and the ONNX runtime (greedy only), on the
audio files of a manifest, with one model and its decode settings.

    OMP_NUM_THREADS=1 python scripts/compare_paths.py --model models/en-whisper-tiny-bilstm-ctc.pt \
        --manifest data/libri_dev.jsonl --work exp/compare_paths

Prints one Markdown row per comparison: files, same text, same text and word times, same text, word
times and confidences, the largest confidence difference. Each side runs with one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import asr  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from server_process import request, start_server, stop_server  # noqa: E402

Words = list[tuple[str, float, float, float]]  # (word, start, end, confidence)


def _words(objects: list[dict]) -> list[tuple[str, Words]]:
    return [(o["text"], [(w["word"], w["start"], w["end"], w["confidence"]) for w in o.get("words") or []])
            for o in objects]


def cli(model: Path, paths: list[str], decoder: str | None) -> list[tuple[str, Words]]:
    command = [sys.executable, "-m", "asr.cli", "transcribe", "-m", str(model), "--format", "json", "--timestamps",
               "--threads", "1", "--quiet", *(["--decoder", decoder] if decoder else []), *paths]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return _words([json.loads(line) for line in done.stdout.splitlines()])


def api(model: Path, paths: list[str], decoder: str | None) -> list[tuple[str, Words]]:
    results = asr.load(model, decoder=decoder).transcribe(paths)
    return _words([r.to_dict() for r in results])


def serve(model: Path, paths: list[str], work: Path) -> list[tuple[str, Words]]:
    process, port = start_server(model, work / "serve.log")
    answers = []
    try:
        for path in paths:
            boundary = "compare-paths"
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\nverbose_json\r\n"
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{Path(path).name}\"\r\n\r\n"
                    ).encode() + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
            status, _, answer = request(port, "POST", "/v1/audio/transcriptions", body,
                                        f"multipart/form-data; boundary={boundary}", timeout=600)
            if status != 200:
                raise RuntimeError(f"{path}: asr serve answered {status}: {answer[:300]!r}")
            answers.append(json.loads(answer))
    finally:
        stop_server(process)
    return _words(answers)


def onnx(model: Path, paths: list[str], work: Path) -> list[tuple[str, Words]]:
    from asr.cli import main
    from asr.serving.onnx_runtime import OnnxRecognizer

    graph = work / f"{model.stem}.onnx"
    if main(["export", "onnx", str(model), "--out", str(graph)]) != 0:
        raise RuntimeError(f"asr export onnx {model} failed")
    return _words([r.to_dict() for r in OnnxRecognizer(graph, threads=1).transcribe_files(paths, timestamps=True)])


def row(name: str, a: list[tuple[str, Words]], b: list[tuple[str, Words]]) -> str:
    same_text = sum(x[0] == y[0] for x, y in zip(a, b))
    same_times = sum(x[0] == y[0] and [w[:3] for w in x[1]] == [w[:3] for w in y[1]] for x, y in zip(a, b))
    same_all = sum(x == y for x, y in zip(a, b))
    gaps = [abs(u[3] - v[3]) for x, y in zip(a, b) if len(x[1]) == len(y[1]) for u, v in zip(x[1], y[1])]
    return f"| {name} | {len(a)} | {same_text} | {same_times} | {same_all} | {max(gaps, default=0.0):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="its audio files are transcribed")
    parser.add_argument("--work", type=Path, required=True, help="folder for the server log and the ONNX file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = [u.audio for u in read_manifest(args.manifest)]
    cli_greedy, cli_default = cli(args.model, paths, "greedy"), cli(args.model, paths, None)
    print("| comparison | files | same text | + same word times | + same confidences | max confidence difference |")
    print("|---|---|---|---|---|---|")
    print(row("API greedy vs CLI greedy", api(args.model, paths, "greedy"), cli_greedy), flush=True)
    print(row("API default vs CLI default", api(args.model, paths, None), cli_default), flush=True)
    print(row("serve default vs CLI default", serve(args.model, paths, args.work), cli_default), flush=True)
    print(row("ONNX greedy vs CLI greedy", onnx(args.model, paths, args.work), cli_greedy), flush=True)


if __name__ == "__main__":
    main()
