"""Starting `asr serve` as a subprocess on a free loopback port, and a small HTTP client for it
(tests/test_serve.py and tests/test_web_page.py). All traffic goes to 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def request(port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            timeout: float = 60.0) -> tuple[int, str, bytes]:
    """(status, content type, body). A server that answers before reading a large body may close the
    connection while it is being sent; its answer is still read."""
    status, headers, data = exchange(port, method, path, body, {"Content-Type": content_type} if content_type else {},
                                     timeout)
    return status, headers.get("content-type", ""), data


def exchange(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """(status, response headers with lower-case names, body) of a request with the given headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, log_path: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """`asr serve` as a subprocess on a free loopback port, once /health answers (at most 120 s)."""
    port = free_port()
    # No key from the environment: a test asks for one with --api-key.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ASR_API_KEY": ""}
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "asr.cli", "serve", "--model", str(checkpoint), "--host", "127.0.0.1",
         "--port", str(port), "--threads", "1", *options],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"asr serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"asr serve did not answer /health within 120 s:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
